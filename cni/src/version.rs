//! cniVersion values and their ordering.

use crate::error::{codes, Error};
use std::fmt;

/// Every version this crate reads and writes, oldest first.
pub const SUPPORTED: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
pub const CURRENT: &str = "1.1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const V0_1_0: Version = Version::new(0, 1, 0);
    pub const V0_3_0: Version = Version::new(0, 3, 0);
    pub const V0_4_0: Version = Version::new(0, 4, 0);
    pub const V1_0_0: Version = Version::new(1, 0, 0);
    pub const V1_1_0: Version = Version::new(1, 1, 0);

    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Parses "X.Y.Z" (also "X.Y" and "X", as the reference's semver
    /// parser accepts). An empty string is 0.1.0, per the spec. Unparseable
    /// input is a decode error (code 6).
    pub fn parse(s: &str) -> Result<Version, Error> {
        if s.is_empty() {
            return Ok(Version::V0_1_0);
        }
        let mut parts = [0u32; 3];
        let fields: Vec<&str> = s.split('.').collect();
        if fields.len() > 3 {
            return Err(bad_version(s));
        }
        for (i, f) in fields.iter().enumerate() {
            if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad_version(s));
            }
            parts[i] = f.parse().map_err(|_| bad_version(s))?;
        }
        Ok(Version::new(parts[0], parts[1], parts[2]))
    }

    /// True if `s` is exactly one of [`SUPPORTED`].
    pub fn is_supported_str(s: &str) -> bool {
        SUPPORTED.contains(&s)
    }

    /// The result family: results of versions within one family share a
    /// shape and convert losslessly.
    pub fn family(self) -> Family {
        if self < Version::V0_3_0 {
            Family::V02
        } else if self < Version::V1_0_0 {
            Family::V04
        } else {
            Family::V1
        }
    }
}

/// Result shapes: 0.1/0.2 (`ip4`/`ip6`), 0.3/0.4 (`ips` with `version`),
/// 1.x (`ips` without `version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V02,
    V04,
    V1,
}

fn bad_version(s: &str) -> Error {
    Error::new(codes::DECODE, format!("cniVersion: invalid version {s:?}"))
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The `details` of an incompatible-version error: the list a runtime
/// needs to pick another version.
pub fn supported_list() -> String {
    format!("supported versions: {}", SUPPORTED.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        assert_eq!(Version::parse("").unwrap(), Version::V0_1_0);
        assert_eq!(Version::parse("1.1.0").unwrap(), Version::V1_1_0);
        assert_eq!(Version::parse("1").unwrap(), Version::new(1, 0, 0));
        assert!(Version::parse("0.3.1").unwrap() < Version::V0_4_0);
        assert_eq!(Version::parse("abc").unwrap_err().code, codes::DECODE);
        assert_eq!(Version::parse("1..0").unwrap_err().code, codes::DECODE);
        assert_eq!(Version::parse("1.0.0.0").unwrap_err().code, codes::DECODE);
    }

    #[test]
    fn families() {
        assert_eq!(Version::parse("0.2.0").unwrap().family(), Family::V02);
        assert_eq!(Version::parse("0.3.0").unwrap().family(), Family::V04);
        assert_eq!(Version::parse("0.4.0").unwrap().family(), Family::V04);
        assert_eq!(Version::parse("1.0.0").unwrap().family(), Family::V1);
    }
}
