//! CNI errors: `{"cniVersion","code","msg","details"}` on stdout, exit 1.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Error codes. 0-99 are the spec's; 100+ are berth's own.
pub mod codes {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    /// Used by the reference skel when CNI_NETNS is the plugin's own netns.
    pub const INVALID_NETNS: u32 = 8;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_AVAILABLE_LIMITED: u32 = 51;
    /// A kernel operation (netlink, sysctl, netns) failed.
    pub const KERNEL: u32 = 100;
    /// The interface or attachment already exists (duplicate ADD).
    pub const ALREADY_EXISTS: u32 = 101;
    /// An address range is exhausted.
    pub const NO_ADDRESSES: u32 = 102;
    /// A requested address is held by another attachment.
    pub const ADDRESS_TAKEN: u32 = 103;
    /// Berth's state store failed.
    pub const STORE: u32 = 104;
    /// A delegated plugin failed without a CNI error of its own.
    pub const DELEGATE: u32 = 105;
    /// The nftables ruleset could not be applied.
    pub const FIREWALL: u32 = 106;
    /// Something CHECK expected is missing or different.
    pub const CHECK_FAILED: u32 = 107;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl Error {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Error {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Code 7, the message prefixed with the offending field.
    pub fn config(field: &str, msg: impl fmt::Display) -> Self {
        Error::new(codes::INVALID_CONFIG, format!("{field}: {msg}"))
    }

    /// Code 4, the message prefixed with the offending variable.
    pub fn env(var: &str, msg: impl fmt::Display) -> Self {
        Error::new(codes::INVALID_ENV, format!("{var}: {msg}"))
    }

    pub fn decode(msg: impl fmt::Display) -> Self {
        Error::new(codes::DECODE, msg.to_string())
    }

    /// The JSON printed on stdout. `cniVersion` is the request's version
    /// when it is known, so libcni parses it in the right family.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_code_msg_and_details_only_when_set() {
        let e = Error::config("ipam.ranges", "overlap");
        let j = e.to_json("1.1.0");
        assert_eq!(j["code"], 7);
        assert_eq!(j["msg"], "ipam.ranges: overlap");
        assert!(j.get("details").is_none());
        let j = e.with_details("d").to_json("1.0.0");
        assert_eq!(j["details"], "d");
        assert_eq!(j["cniVersion"], "1.0.0");
    }
}
