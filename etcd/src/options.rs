//! How to reach etcd: endpoints, TLS files, credentials, timeouts.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

/// How long connecting to one endpoint may take (TCP and the TLS
/// handshake) before the next is tried.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// A password: compared and cloned like a string, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The client's settings, as `store.etcd` gives them (the keys named in
/// errors are those).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `http://host:port` or `https://host:port`, all of one scheme.
    pub endpoints: Vec<String>,
    /// PEM certificates to trust (None: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain) and its key.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A file holding the password (its first line).
    pub password_file: Option<PathBuf>,
    pub dial_timeout: Duration,
    /// Where the auth token is kept between processes (mode 0600); None:
    /// each client authenticates once for itself.
    pub token_file: Option<PathBuf>,
}

impl Options {
    /// A digest of who these settings reach etcd as: the endpoints, the
    /// TLS files' paths, the user and the password (its file's path, or
    /// itself, which the digest does not give back). Two configs with the
    /// same digest are the same client; a process that kept another's
    /// word for what the store holds can tell by it that the word applies.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let parts = [
            self.endpoints.join(","),
            path(&self.ca_file),
            path(&self.cert_file),
            path(&self.key_file),
            self.username.clone().unwrap_or_default(),
            self.password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
            path(&self.password_file),
        ];
        for part in parts {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }

    /// Plain endpoints and nothing else set.
    pub fn new(endpoints: Vec<String>) -> Options {
        Options {
            endpoints,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
            password_file: None,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            token_file: None,
        }
    }

    /// True when the endpoints are `https://`. Errs on anything
    /// [`Options::check`] refuses about them.
    pub(crate) fn tls(&self) -> Result<bool> {
        let mut schemes = Vec::new();
        for ep in &self.endpoints {
            let (scheme, rest) = ep.split_once("://").ok_or_else(|| {
                Error::config(
                    "endpoints",
                    format!("{ep:?} is not a URL (http://HOST:PORT)"),
                )
            })?;
            if !matches!(scheme, "http" | "https") {
                return Err(Error::config(
                    "endpoints",
                    format!("{ep:?}: only http:// and https:// are served"),
                ));
            }
            let authority = rest.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') || authority.contains('@') {
                return Err(Error::config(
                    "endpoints",
                    format!("{ep:?} is not SCHEME://HOST:PORT"),
                ));
            }
            if !schemes.contains(&scheme) {
                schemes.push(scheme);
            }
        }
        match schemes[..] {
            [] => Err(Error::config("endpoints", "empty")),
            [one] => Ok(one == "https"),
            _ => Err(Error::config(
                "endpoints",
                "mixes http:// and https://: give the same scheme for every member",
            )),
        }
    }

    /// Everything that can be told without reaching etcd: the endpoints,
    /// that TLS files go with https, that each credential has its other
    /// half, the dial timeout. The files themselves are read by
    /// [`crate::Client::new`].
    pub(crate) fn check(&self) -> Result<bool> {
        let tls = self.tls()?;
        if !tls {
            for (key, set) in [
                ("caFile", self.ca_file.is_some()),
                ("certFile", self.cert_file.is_some()),
                ("keyFile", self.key_file.is_some()),
            ] {
                if set {
                    return Err(Error::config(
                        key,
                        "given, but the endpoints are http://: TLS needs https:// endpoints",
                    ));
                }
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(Error::config(
                    "keyFile",
                    "missing: certFile needs its private key",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "certFile",
                    "missing: keyFile needs its certificate",
                ))
            }
            _ => {}
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(Error::config(
                "passwordFile",
                "given together with password: give one of them",
            ));
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        match (&self.username, has_password) {
            (Some(u), _) if u.is_empty() => return Err(Error::config("username", "empty")),
            (Some(_), false) => {
                return Err(Error::config(
                    "password",
                    "missing: username needs password or passwordFile",
                ))
            }
            (None, true) => {
                return Err(Error::config(
                    "username",
                    "missing: a password needs its username",
                ))
            }
            _ => {}
        }
        if self.dial_timeout.is_zero() {
            return Err(Error::config("dialTimeout", "must be more than zero"));
        }
        Ok(tls)
    }

    /// The password, from `password` or the first line of `passwordFile`.
    pub(crate) fn resolve_password(&self) -> Result<Option<Secret>> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(
                "passwordFile",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let line = text.lines().next().unwrap_or_default();
        if line.is_empty() {
            return Err(Error::config(
                "passwordFile",
                format!("{} holds no password", path.display()),
            ));
        }
        Ok(Some(Secret::new(line)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_tells_clients_apart_and_hides_the_password() {
        let mut a = Options::new(vec!["https://e:2379".into()]);
        a.password = Some(Secret::new("s3cret-pass"));
        let same = a.clone();
        assert_eq!(a.fingerprint(), same.fingerprint());
        assert!(!a.fingerprint().contains("s3cret"));
        let mut other = a.clone();
        other.password = Some(Secret::new("other"));
        assert_ne!(a.fingerprint(), other.fingerprint());
        let mut cert = a.clone();
        cert.cert_file = Some("/x.crt".into());
        assert_ne!(a.fingerprint(), cert.fingerprint());
        // How long a dial may take is not who the client is.
        let mut slow = a.clone();
        slow.dial_timeout = Duration::from_secs(9);
        assert_eq!(a.fingerprint(), slow.fingerprint());
    }

    fn with(endpoints: &[&str]) -> Options {
        Options::new(endpoints.iter().map(|s| s.to_string()).collect())
    }

    fn key_of(r: Result<bool>) -> &'static str {
        match r {
            Err(Error::Config { key, .. }) => key,
            other => panic!("not a config error: {other:?}"),
        }
    }

    #[test]
    fn endpoints_are_urls_of_one_scheme() {
        assert!(!with(&["http://a:1", "http://b:2/"]).check().unwrap());
        assert!(with(&["https://a:1"]).check().unwrap());
        for bad in [
            &["https://a:1", "http://b:2"][..],
            &[],
            &["a:2379"],
            &["ftp://a:1"],
            &["http://a:1/v3"],
            &["http://"],
            &["http://u:p@a:1"],
        ] {
            assert_eq!(key_of(with(bad).check()), "endpoints", "{bad:?}");
        }
    }

    #[test]
    fn each_setting_needs_its_other_half() {
        let mut o = with(&["http://a:1"]);
        o.ca_file = Some("/ca.pem".into());
        assert_eq!(key_of(o.check()), "caFile");
        let mut o = with(&["https://a:1"]);
        o.cert_file = Some("/c.pem".into());
        assert_eq!(key_of(o.check()), "keyFile");
        let mut o = with(&["https://a:1"]);
        o.key_file = Some("/k.pem".into());
        assert_eq!(key_of(o.check()), "certFile");
        let mut o = with(&["https://a:1"]);
        o.username = Some("berth".into());
        assert_eq!(key_of(o.check()), "password");
        o.password = Some(Secret::new("pw"));
        assert!(o.check().is_ok());
        o.password_file = Some("/pw".into());
        assert_eq!(key_of(o.check()), "passwordFile");
        let mut o = with(&["https://a:1"]);
        o.password = Some(Secret::new("pw"));
        assert_eq!(key_of(o.check()), "username");
        let mut o = with(&["https://a:1"]);
        o.dial_timeout = Duration::ZERO;
        assert_eq!(key_of(o.check()), "dialTimeout");
    }

    #[test]
    fn a_password_never_shows() {
        let mut o = with(&["https://a:1"]);
        o.username = Some("berth".into());
        o.password = Some(Secret::new("hunter2"));
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
