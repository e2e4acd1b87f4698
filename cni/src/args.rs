//! CNI_ARGS: `K=V;K2=V2`, deprecated but still sent by runtimes
//! (Kubernetes sends `IgnoreUnknown=1;K8S_POD_NAMESPACE=...`).

use crate::error::Error;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// Parses like the reference `LoadArgs`: every pair needs exactly one
    /// `=`; an empty string means no args.
    pub fn parse(s: &str) -> Result<CniArgs, Error> {
        let mut pairs = Vec::new();
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let mut kv = pair.split('=');
            match (kv.next(), kv.next(), kv.next()) {
                (Some(k), Some(v), None) => pairs.push((k.to_string(), v.to_string())),
                _ => {
                    return Err(Error::env(
                        "CNI_ARGS",
                        format!("invalid pair {pair:?}: expected KEY=VALUE"),
                    ))
                }
            }
        }
        Ok(CniArgs { pairs })
    }

    /// The last value given for `key` (keys are case-sensitive, as in the
    /// reference, which matches them against Go field names).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// `IgnoreUnknown=1|true` (any case of "true").
    pub fn ignore_unknown(&self) -> bool {
        self.get("IgnoreUnknown")
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    }

    /// Rejects keys outside `known` (plus `IgnoreUnknown`) unless
    /// `IgnoreUnknown` is set, like the reference plugins.
    pub fn check_known(&self, known: &[&str]) -> Result<(), Error> {
        if self.ignore_unknown() {
            return Ok(());
        }
        for (k, v) in &self.pairs {
            if k != "IgnoreUnknown" && !known.contains(&k.as_str()) {
                return Err(Error::env(
                    "CNI_ARGS",
                    format!("unknown key {k:?} (value {v:?}); set IgnoreUnknown=1 to ignore it"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes;

    #[test]
    fn parse_and_lookup() {
        let a = CniArgs::parse("IgnoreUnknown=1;FOO=bar;IP=10.99.0.77").unwrap();
        assert_eq!(a.get("IP"), Some("10.99.0.77"));
        assert!(a.ignore_unknown());
        assert!(a.check_known(&["IP"]).is_ok());
        assert!(CniArgs::parse("").unwrap().is_empty());
    }

    #[test]
    fn unknown_keys_rejected_unless_ignored() {
        let a = CniArgs::parse("FOO=bar").unwrap();
        let e = a.check_known(&["IP"]).unwrap_err();
        assert_eq!(e.code, codes::INVALID_ENV);
        assert!(e.msg.contains("FOO"));
        assert!(CniArgs::parse("ip=").unwrap().check_known(&["IP"]).is_err());
    }

    #[test]
    fn malformed_pairs_rejected() {
        assert_eq!(CniArgs::parse("A").unwrap_err().code, codes::INVALID_ENV);
        assert!(CniArgs::parse("A=b=c").is_err());
    }
}
