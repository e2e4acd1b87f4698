//! The client: the calls berth makes (range, lease grant and keepalive,
//! create-if-absent, put, delete, watch), each sent to the endpoint that
//! answered last and on to the others when it cannot answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use crate::options::Secret;
use crate::tls::{self, Stamps};
use crate::{Error, Options, Result};

/// How long etcd may take to answer a call once connected.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// One key of a range answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    /// The lease it is held under (0: none).
    pub lease: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub kvs: Vec<Kv>,
    /// The store's revision the answer is from.
    pub revision: i64,
}

/// A connection setup that can change under a running client: the TLS
/// files are read again when they change, the token when etcd says it
/// expired, the preferred endpoint when another answers.
struct Live {
    agent: ureq::Agent,
    stamps: Stamps,
    /// The client certificate's end of validity (see `transport`).
    not_after: Option<(i64, String)>,
    preferred: usize,
    token: Option<String>,
}

pub struct Client {
    opts: Options,
    tls: bool,
    password: Option<Secret>,
    live: Mutex<Live>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.opts.endpoints)
            .finish_non_exhaustive()
    }
}

/// What one endpoint made of a call.
enum Answer {
    Ok(Value),
    /// etcd's refusal: its message.
    Refused(String),
}

/// An int64 of the gateway's JSON: a string, or a number.
fn int64(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
}

fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

fn unb64(v: &Value) -> String {
    let bytes = v
        .as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The smallest key after every key starting with `prefix`.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// A transport error of a connection the server closed under the
/// request (or its TLS alert).
fn closed(text: &str) -> bool {
    ["Broken pipe", "Connection reset", "fatal alert"]
        .iter()
        .any(|m| text.contains(m))
}

/// What etcd answers on its JSON gateway, with client-cert-auth and auth
/// both on, to a client certificate with a CommonName: the gateway cannot
/// pass the name on as the user, so it refuses rather than act as another
/// (etcd's embed/serve.go).
const COMMON_NAME_REFUSED: &str = "CommonName of client sending a request against gateway";

fn common_name_refused() -> Error {
    Error::config(
        "certFile",
        "etcd has auth on and refuses client certificates with a CommonName on its JSON \
         gateway (which berth speaks): use a certificate without a CommonName, and username \
         with password or passwordFile for the user",
    )
}

/// etcd's message in an error answer (`{"error": .., "message": ..}`).
fn message_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["message"]
        .as_str()
        .or_else(|| v["error"].as_str())
        .map_or_else(|| body.trim().to_string(), str::to_string)
}

/// A member that cannot serve now, where another may.
fn member_unavailable(msg: &str) -> bool {
    [
        "no leader",
        "leader changed",
        "timed out",
        "too many requests",
        "not capable",
        "unhealthy",
        "stopped",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

fn agent(opts: &Options, tls: Option<ureq::tls::TlsConfig>) -> ureq::Agent {
    let mut b = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // etcd is the cluster's own: never through a proxy of the
        // environment.
        .proxy(None)
        .timeout_connect(Some(opts.dial_timeout))
        .timeout_send_request(Some(IO_TIMEOUT))
        .timeout_recv_response(Some(IO_TIMEOUT))
        .timeout_recv_body(Some(IO_TIMEOUT))
        .user_agent("berth");
    if let Some(t) = tls {
        b = b.tls_config(t);
    }
    b.build().new_agent()
}

impl Client {
    /// A client for `opts`: checks every setting and reads the files (the
    /// CA, the client certificate and key, the password), so that a fault
    /// in any is found before etcd is asked anything. Connects to nothing.
    pub fn new(opts: &Options) -> Result<Client> {
        let tls = opts.check()?;
        let password = opts.resolve_password()?;
        let config = tls.then(|| tls::config(opts)).transpose()?;
        let token = match (&opts.token_file, &opts.username, &password) {
            (Some(f), Some(user), Some(pw)) => cached_token(f, user, pw),
            _ => None,
        };
        Ok(Client {
            opts: opts.clone(),
            tls,
            password,
            live: Mutex::new(Live {
                agent: agent(opts, config),
                stamps: Stamps::of(opts),
                not_after: tls::client_not_after(opts),
                preferred: 0,
                token,
            }),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The agent to call with, its TLS files read again if they changed
    /// on disk. Should the new files not do (a certificate renewed but
    /// its key not yet), the old setup stays, and the next call looks
    /// again.
    fn current(&self) -> (ureq::Agent, Option<String>, usize) {
        let mut live = self.live();
        if self.tls {
            let now = Stamps::of(&self.opts);
            if now != live.stamps {
                match tls::config(&self.opts) {
                    Ok(config) => {
                        live.agent = agent(&self.opts, Some(config));
                        live.stamps = now;
                        live.not_after = tls::client_not_after(&self.opts);
                        tracing::info!("etcd: TLS files changed on disk, read again");
                    }
                    Err(e) => {
                        // Said once per change: the next change (the
                        // certificate's half of a renewal) is tried again.
                        live.stamps = now;
                        tracing::warn!("etcd: TLS files changed, but {e}; keeping the old ones")
                    }
                }
            }
        }
        (live.agent.clone(), live.token.clone(), live.preferred)
    }

    fn url(&self, endpoint: &str, path: &str) -> String {
        format!("{}{path}", endpoint.trim_end_matches('/'))
    }

    /// A transport error's text. A TLS server that refuses the client's
    /// certificate closes the connection once the handshake is done, and
    /// whether the request's write meets the closed pipe or the alert is
    /// read first is a race: that case gets one text, saying the likely
    /// cause (an expired certificate is known from the certificate
    /// itself), so that the same fault reads the same every time.
    fn transport(&self, e: ureq::Error) -> String {
        let text = e.to_string();
        if !(self.tls && closed(&text)) {
            return text;
        }
        let Some(cert) = &self.opts.cert_file else {
            return "etcd refused the connection after the TLS handshake: it wants a client \
                    certificate (certFile, keyFile)"
                .into();
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        match &self.live().not_after {
            Some((at, text)) if *at < now => format!(
                "etcd refused the client certificate {}: it expired on {text}",
                cert.display()
            ),
            _ => format!(
                "etcd refused the client certificate {} after the TLS handshake (not signed by \
                 a CA it trusts?)",
                cert.display()
            ),
        }
    }

    /// The HTTP exchange of a call (`recv_body`: how long its answer may
    /// take to arrive, for a watch). A connection closed under the
    /// request is tried once more on a new one: a kept connection the
    /// member dropped meanwhile (it restarted) is not its refusal, which
    /// the second try shows again.
    fn post(
        &self,
        agent: &ureq::Agent,
        endpoint: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
        recv_body: Option<Duration>,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, String> {
        let attempt = || {
            let mut req = agent.post(self.url(endpoint, path));
            if let Some(t) = recv_body {
                req = req.config().timeout_recv_body(Some(t)).build();
            }
            let mut req = req.content_type("application/json");
            if let Some(t) = token {
                req = req.header("Authorization", t);
            }
            req.send(body.to_string())
        };
        match attempt() {
            Err(e) if self.tls && closed(&e.to_string()) => attempt(),
            other => other,
        }
        .map_err(|e| self.transport(e))
    }

    /// POSTs `body` to one endpoint. A transport error (connection, TLS,
    /// timeout) is Err with its reason.
    fn send(
        &self,
        agent: &ureq::Agent,
        endpoint: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> std::result::Result<Answer, String> {
        let resp = self.post(agent, endpoint, path, body, token, None)?;
        let status = resp.status();
        let text = resp
            .into_body()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        if status.is_success() {
            serde_json::from_str(&text)
                .map(Answer::Ok)
                .map_err(|e| format!("{path}: unreadable answer: {e}"))
        } else {
            Ok(Answer::Refused(message_of(&text)))
        }
    }

    /// A token for the username, from etcd at `endpoint`; kept for the
    /// next calls (and processes, with a token file).
    fn authenticate(
        &self,
        agent: &ureq::Agent,
        endpoint: &str,
    ) -> std::result::Result<String, CallError> {
        let (Some(user), Some(password)) = (&self.opts.username, &self.password) else {
            return Err(CallError::Fatal(Error::config(
                "username",
                "etcd wants a user: give username and password (or passwordFile)",
            )));
        };
        let body = json!({"name": user, "password": password.expose()});
        match self.send(agent, endpoint, "/v3/auth/authenticate", &body, None) {
            Err(e) => Err(CallError::Endpoint(e)),
            Ok(Answer::Refused(m)) if member_unavailable(&m) => Err(CallError::Endpoint(m)),
            Ok(Answer::Refused(m)) if m.contains(COMMON_NAME_REFUSED) => {
                Err(CallError::Fatal(common_name_refused()))
            }
            Ok(Answer::Refused(m)) => Err(CallError::Fatal(Error::config(
                "password",
                format!("etcd refused user {user:?}: {m}"),
            ))),
            Ok(Answer::Ok(v)) => {
                let token = v["token"]
                    .as_str()
                    .ok_or_else(|| CallError::Endpoint("authenticate answered no token".into()))?
                    .to_string();
                self.live().token = Some(token.clone());
                if let Some(file) = &self.opts.token_file {
                    let seal = token_seal(user, password, &token);
                    if let Err(e) = write_private(file, &format!("{user}\n{token}\n{seal}\n")) {
                        tracing::warn!("etcd: cannot keep the token in {}: {e}", file.display());
                    }
                }
                Ok(token)
            }
        }
    }

    /// One call at one endpoint, authenticating first when a user is set
    /// and no token is at hand, and again once when etcd says the token
    /// expired.
    fn call_at(
        &self,
        agent: &ureq::Agent,
        endpoint: &str,
        token: &mut Option<String>,
        path: &str,
        body: &Value,
    ) -> std::result::Result<Value, CallError> {
        let user = self.opts.username.is_some();
        if user && token.is_none() {
            *token = Some(self.authenticate(agent, endpoint)?);
        }
        for retry in [false, true] {
            match self.send(agent, endpoint, path, body, token.as_deref()) {
                Err(e) => return Err(CallError::Endpoint(e)),
                Ok(Answer::Ok(v)) => return Ok(v),
                Ok(Answer::Refused(m)) if user && !retry && m.contains("invalid auth token") => {
                    *token = Some(self.authenticate(agent, endpoint)?);
                }
                Ok(Answer::Refused(m)) if member_unavailable(&m) => {
                    return Err(CallError::Endpoint(m))
                }
                Ok(Answer::Refused(m)) if m.contains("permission denied") => {
                    return Err(CallError::Fatal(Error::config(
                        "prefix",
                        format!(
                            "etcd denies {} {path}: {m}",
                            self.opts
                                .username
                                .as_deref()
                                .map_or("this client".to_string(), |u| format!("user {u:?}"))
                        ),
                    )))
                }
                Ok(Answer::Refused(m)) if m.contains(COMMON_NAME_REFUSED) => {
                    return Err(CallError::Fatal(common_name_refused()))
                }
                Ok(Answer::Refused(m)) if m.contains("user name is empty") => {
                    return Err(CallError::Fatal(Error::config(
                        "username",
                        format!("etcd has auth enabled and wants a user: {m}"),
                    )))
                }
                Ok(Answer::Refused(m)) => return Err(CallError::Endpoint(m)),
            }
        }
        Err(CallError::Endpoint("the new token was refused too".into()))
    }

    /// `call_at` on the preferred endpoint, then on each other in turn.
    fn call(&self, path: &str, body: Value) -> Result<Value> {
        let (agent, mut token, first) = self.current();
        let n = self.opts.endpoints.len();
        let mut errors = Vec::new();
        for i in (0..n).map(|k| (first + k) % n) {
            let endpoint = &self.opts.endpoints[i];
            match self.call_at(&agent, endpoint, &mut token, path, &body) {
                Ok(v) => {
                    self.live().preferred = i;
                    return Ok(v);
                }
                Err(CallError::Fatal(e)) => return Err(e),
                Err(CallError::Endpoint(e)) => errors.push(format!("{endpoint}: {e}")),
            }
        }
        Err(Error::Unavailable(errors.join("; ")))
    }

    /// Every key under `prefix`, and the store's revision they are from.
    pub fn get_prefix(&self, prefix: &str) -> Result<Range> {
        let v = self.call(
            "/v3/kv/range",
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&range_end(prefix))}),
        )?;
        let kvs = v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| Kv {
                key: unb64(&kv["key"]),
                value: unb64(&kv["value"]),
                lease: int64(&kv["lease"]).unwrap_or(0),
            })
            .collect();
        Ok(Range {
            kvs,
            revision: int64(&v["header"]["revision"]).unwrap_or(0),
        })
    }

    /// Renews lease `id`; its remaining TTL, 0 if it no longer exists.
    pub fn keepalive(&self, id: i64) -> Result<i64> {
        // A stream in gRPC; through the gateway one request, one answer.
        let v = self.call("/v3/lease/keepalive", json!({"ID": id.to_string()}))?;
        Ok(int64(&v["result"]["TTL"]).unwrap_or(0))
    }

    /// A new lease of `ttl` seconds.
    pub fn grant(&self, ttl: i64) -> Result<i64> {
        let v = self.call("/v3/lease/grant", json!({"TTL": ttl}))?;
        int64(&v["ID"]).ok_or_else(|| Error::Unavailable(format!("lease grant answered {v}")))
    }

    /// Creates `key` only if it does not exist. True if it was created.
    pub fn create(&self, key: &str, value: &str, lease: i64) -> Result<bool> {
        let k = b64(key.as_bytes());
        let v = self.call(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                "success": [{"request_put": {"key": k, "value": b64(value.as_bytes()), "lease": lease.to_string()}}],
            }),
        )?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// Sets `key` under `lease`, whatever was there.
    pub fn put(&self, key: &str, value: &str, lease: i64) -> Result<()> {
        self.call(
            "/v3/kv/put",
            json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes()), "lease": lease.to_string()}),
        )
        .map(|_| ())
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.call("/v3/kv/deleterange", json!({"key": b64(key.as_bytes())}))
            .map(|_| ())
    }

    /// Waits until a key under `prefix` changes after revision `after`:
    /// true when one did (or the watch was cancelled, e.g. compacted: look
    /// again), false when `timeout` passed first. The watch starts on the
    /// preferred endpoint and, should that one fail, resumes on the next
    /// from the same revision.
    pub fn wait_for_change(&self, prefix: &str, after: i64, timeout: Duration) -> Result<bool> {
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()), "range_end": b64(&range_end(prefix)),
            "start_revision": (after + 1).to_string(),
        }});
        let deadline = Instant::now() + timeout;
        let (agent, mut token, first) = self.current();
        let n = self.opts.endpoints.len();
        let mut errors = Vec::new();
        for i in (0..n).map(|k| (first + k) % n) {
            let endpoint = &self.opts.endpoints[i];
            match self.watch_at(&agent, endpoint, &mut token, &body, deadline) {
                Ok(changed) => {
                    self.live().preferred = i;
                    return Ok(changed);
                }
                Err(CallError::Fatal(e)) => return Err(e),
                Err(CallError::Endpoint(e)) => errors.push(format!("{endpoint}: {e}")),
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
        Err(Error::Unavailable(errors.join("; ")))
    }

    fn watch_at(
        &self,
        agent: &ureq::Agent,
        endpoint: &str,
        token: &mut Option<String>,
        body: &Value,
        deadline: Instant,
    ) -> std::result::Result<bool, CallError> {
        if self.opts.username.is_some() && token.is_none() {
            *token = Some(self.authenticate(agent, endpoint)?);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let resp = self
            .post(
                agent,
                endpoint,
                "/v3/watch",
                body,
                token.as_deref(),
                Some(left),
            )
            .map_err(CallError::Endpoint)?;
        if !resp.status().is_success() {
            let text = resp.into_body().read_to_string().unwrap_or_default();
            return Err(CallError::Endpoint(message_of(&text)));
        }
        // One JSON object per line, for as long as the watch lasts.
        let reader = BufReader::new(resp.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else {
                // The body's timeout: nothing changed in time.
                return Ok(false);
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(e) = v.get("error") {
                let m = e["message"].as_str().unwrap_or_default();
                if m.contains("invalid auth token") {
                    // Looked at again with a new token on the next call.
                    self.live().token = None;
                }
                return Ok(true);
            }
            let r = &v["result"];
            let changed = r["events"].as_array().is_some_and(|e| !e.is_empty())
                || r["canceled"].as_bool() == Some(true)
                || int64(&r["compact_revision"]).unwrap_or(0) > 0;
            if changed {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
        Err(CallError::Endpoint("the watch was closed".into()))
    }
}

/// Why a call at one endpoint failed: that endpoint (try the next), or
/// for good.
enum CallError {
    Endpoint(String),
    Fatal(Error),
}

/// What ties a kept token to the credentials it was given for: a token
/// kept for a user whose password has changed in the config since is not
/// used (a wrong password must fail, even while the old token lives).
fn token_seal(user: &str, password: &Secret, token: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [user, password.expose(), token] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The token kept in `file` for `user` with `password`, if any.
fn cached_token(file: &Path, user: &str, password: &Secret) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut lines = text.lines();
    let (kept_user, token, seal) = (lines.next()?, lines.next()?, lines.next()?);
    (kept_user == user && seal == token_seal(user, password, token)).then(|| token.to_string())
}

/// Writes `text` to `path` readable by its owner only, replacing it whole.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ranges_are_etcds() {
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(unb64(&json!("Zm8=")), "fo");
        assert_eq!(range_end("/a/"), b"/a0".to_vec());
        assert_eq!(int64(&json!("7")), Some(7));
        assert_eq!(int64(&json!(7)), Some(7));
    }

    #[test]
    fn etcds_messages_are_read_from_its_errors() {
        assert_eq!(
            message_of(
                r#"{"error":"etcdserver: permission denied","code":7,"message":"etcdserver: permission denied"}"#
            ),
            "etcdserver: permission denied"
        );
        assert_eq!(message_of("plain text\n"), "plain text");
        assert!(member_unavailable("etcdserver: no leader"));
        assert!(!member_unavailable("etcdserver: permission denied"));
    }

    #[test]
    fn a_kept_token_is_used_only_with_its_credentials() {
        let dir = std::env::temp_dir().join(format!("berth-etcd-seal-{}", std::process::id()));
        let file = dir.join("t");
        let pw = Secret::new("s3cret");
        let seal = token_seal("berth", &pw, "tok");
        write_private(&file, &format!("berth\ntok\n{seal}\n")).unwrap();
        assert_eq!(cached_token(&file, "berth", &pw), Some("tok".into()));
        assert_eq!(cached_token(&file, "berth", &Secret::new("wrong")), None);
        assert_eq!(cached_token(&file, "other", &pw), None);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_token_file_is_private() {
        let dir = std::env::temp_dir().join(format!("berth-etcd-token-{}", std::process::id()));
        let file = dir.join("t");
        write_private(&file, "u\ntok\n").unwrap();
        write_private(&file, "u\ntok2\n").unwrap();
        let m = std::fs::metadata(&file).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "u\ntok2\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
