//! The cluster store on etcd v3, through its JSON gateway (`/v3/...`,
//! base64 keys and values): no gRPC stack, no protoc. Every call has short
//! timeouts, so an unreachable store is an error within seconds, never a
//! hang.
//!
//! Layout under `<prefix>/<network>/`:
//! `subnets/<a.b.c.d-len>` → `{"node","underlay","subnet"[,"subnet6"]}`,
//! held under a lease (TTL `store.etcd.leaseTTL`) that the node's agent
//! renews.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::{json, Value};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
const IO_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct StoreError(pub String);

type Result<T> = std::result::Result<T, StoreError>;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = B64.iter().position(|x| *x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The smallest key after every key starting with `prefix`.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// One key of a range answer.
pub struct Kv {
    pub key: String,
    pub value: String,
    /// The lease it is held under (0: none).
    pub lease: i64,
}

pub struct Range {
    pub kvs: Vec<Kv>,
    /// The store's revision the answer is from.
    pub revision: i64,
}

/// An int64 of the gateway's JSON: a string, or a number.
fn int64(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
}

/// A connection to `host:port`, with the short timeouts.
fn connect(endpoint: &str) -> Result<TcpStream> {
    let addr = endpoint
        .to_socket_addrs()
        .map_err(|e| StoreError(format!("{endpoint}: {e}")))?
        .next()
        .ok_or_else(|| StoreError(format!("{endpoint}: no address")))?;
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| StoreError(format!("{endpoint}: {e}")))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| StoreError(e.to_string()))?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| StoreError(e.to_string()))?;
    Ok(s)
}

pub struct Etcd {
    endpoints: Vec<String>,
}

impl Etcd {
    /// `http://host:port` endpoints (TLS is not served).
    pub fn new(urls: &[String]) -> Result<Etcd> {
        let mut endpoints = Vec::new();
        for u in urls {
            let hostport = u.strip_prefix("http://").ok_or_else(|| {
                StoreError(format!("endpoint {u:?}: only http:// endpoints are served"))
            })?;
            endpoints.push(hostport.trim_end_matches('/').to_string());
        }
        if endpoints.is_empty() {
            return Err(StoreError("no endpoints".into()));
        }
        Ok(Etcd { endpoints })
    }

    fn post_to(&self, endpoint: &str, path: &str, body: &Value) -> Result<Value> {
        let mut s = connect(endpoint)?;
        let text = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.0\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        s.write_all(req.as_bytes())
            .map_err(|e| StoreError(format!("{endpoint}: {e}")))?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)
            .map_err(|e| StoreError(format!("{endpoint}: {e}")))?;
        let resp = String::from_utf8_lossy(&resp);
        let (head, body) = resp
            .split_once("\r\n\r\n")
            .ok_or_else(|| StoreError(format!("{endpoint}: malformed answer")))?;
        if head.split_whitespace().nth(1) != Some("200") {
            return Err(StoreError(format!("{endpoint}{path}: {}", body.trim())));
        }
        serde_json::from_str(body).map_err(|e| StoreError(format!("{endpoint}{path}: {e}")))
    }

    /// POSTs to the first endpoint that answers.
    fn post(&self, path: &str, body: Value) -> Result<Value> {
        let mut errors = Vec::new();
        for e in &self.endpoints {
            match self.post_to(e, path, &body) {
                Ok(v) => return Ok(v),
                Err(err) => errors.push(err.0),
            }
        }
        Err(StoreError(format!(
            "etcd unreachable: {}",
            errors.join("; ")
        )))
    }

    /// Every key under `prefix`, and the store's revision they are from.
    pub fn get_prefix(&self, prefix: &str) -> Result<Range> {
        let v = self.post(
            "/v3/kv/range",
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&range_end(prefix))}),
        )?;
        let mut kvs = Vec::new();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            let k = kv["key"].as_str().and_then(unb64).unwrap_or_default();
            let val = kv["value"].as_str().and_then(unb64).unwrap_or_default();
            kvs.push(Kv {
                key: String::from_utf8_lossy(&k).into_owned(),
                value: String::from_utf8_lossy(&val).into_owned(),
                lease: int64(&kv["lease"]).unwrap_or(0),
            });
        }
        Ok(Range {
            kvs,
            revision: int64(&v["header"]["revision"]).unwrap_or(0),
        })
    }

    /// Renews lease `id`; its remaining TTL, 0 if it no longer exists.
    pub fn keepalive(&self, id: i64) -> Result<i64> {
        // A stream in gRPC; through the gateway one request, one answer.
        let v = self.post("/v3/lease/keepalive", json!({"ID": id.to_string()}))?;
        Ok(int64(&v["result"]["TTL"]).unwrap_or(0))
    }

    /// Waits until a key under `prefix` changes after revision `after`:
    /// true when one did (or the watch was cancelled, e.g. compacted: look
    /// again), false when `timeout` passed first. One watch stream on the
    /// first endpoint that accepts it.
    pub fn wait_for_change(&self, prefix: &str, after: i64, timeout: Duration) -> Result<bool> {
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()), "range_end": b64(&range_end(prefix)), "start_revision": (after + 1).to_string(),
        }})
        .to_string();
        let deadline = std::time::Instant::now() + timeout;
        let mut errors = Vec::new();
        for endpoint in &self.endpoints {
            let mut s = match connect(endpoint) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(e.0);
                    continue;
                }
            };
            let req = format!(
                "POST /v3/watch HTTP/1.0\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes())
                .map_err(|e| StoreError(format!("{endpoint}: {e}")))?;
            // HTTP/1.0: no chunking; the answers are JSON lines until the
            // server closes.
            let mut buf: Vec<u8> = Vec::new();
            let mut body_at: Option<usize> = None;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                s.set_read_timeout(Some(left))
                    .map_err(|e| StoreError(e.to_string()))?;
                let mut chunk = [0u8; 4096];
                let n = match s.read(&mut chunk) {
                    Ok(0) => return Err(StoreError(format!("{endpoint}: watch closed"))),
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Ok(false)
                    }
                    Err(e) => return Err(StoreError(format!("{endpoint}: {e}"))),
                };
                buf.extend_from_slice(&chunk[..n]);
                if body_at.is_none() {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]);
                    if head.split_whitespace().nth(1) != Some("200") {
                        return Err(StoreError(format!(
                            "{endpoint}/v3/watch: {}",
                            head.lines().next().unwrap_or("")
                        )));
                    }
                    body_at = Some(end + 4);
                }
                let start = body_at.unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[start..]).into_owned();
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let Ok(v) = serde_json::from_str::<Value>(line) else {
                        continue;
                    }; // incomplete yet
                    let r = &v["result"];
                    let changed = r["events"].as_array().is_some_and(|e| !e.is_empty())
                        || r["canceled"].as_bool() == Some(true)
                        || int64(&r["compact_revision"]).unwrap_or(0) > 0;
                    if changed || v.get("error").is_some() {
                        return Ok(true);
                    }
                }
            }
        }
        Err(StoreError(format!(
            "etcd unreachable: {}",
            errors.join("; ")
        )))
    }

    /// A new lease of `ttl` seconds.
    pub fn grant(&self, ttl: i64) -> Result<i64> {
        let v = self.post("/v3/lease/grant", json!({"TTL": ttl}))?;
        int64(&v["ID"]).ok_or_else(|| StoreError(format!("lease grant answered {v}")))
    }

    /// Creates `key` only if it does not exist. True if it was created.
    pub fn create(&self, key: &str, value: &str, lease: i64) -> Result<bool> {
        let k = b64(key.as_bytes());
        let v = self.post(
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
        self.post(
            "/v3/kv/put",
            json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes()), "lease": lease.to_string()}),
        )
        .map(|_| ())
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.post("/v3/kv/deleterange", json!({"key": b64(key.as_bytes())}))
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "/berth/ov/subnets/10.244.1.0-24",
        ] {
            assert_eq!(unb64(&b64(s.as_bytes())).unwrap(), s.as_bytes(), "{s}");
        }
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(range_end("/a/"), b"/a0".to_vec());
    }
}
