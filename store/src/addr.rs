//! Address keys: every address is stored as a 16-byte big-endian integer, IPv4 as
//! IPv4-mapped IPv6 (`::ffff:a.b.c.d`), so byte order equals numeric order and both
//! families share one ordered key space.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const V4_MAPPED_PREFIX: u128 = 0xffff_u128 << 32;
const V4_MAPPED_MASK: u128 = !0xffff_ffff_u128;

/// The ordered key of an address.
pub fn to_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => V4_MAPPED_PREFIX | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of a key. Keys in `::ffff:0:0/96` are IPv4.
pub fn from_key(key: u128) -> IpAddr {
    if key & V4_MAPPED_MASK == V4_MAPPED_PREFIX {
        // Truncation is intended: the low 32 bits are the IPv4 address.
        IpAddr::V4(Ipv4Addr::from((key & 0xffff_ffff) as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(key))
    }
}

/// True if the key encodes an IPv4 address.
pub fn is_v4_key(key: u128) -> bool {
    key & V4_MAPPED_MASK == V4_MAPPED_PREFIX
}

pub(crate) fn key_bytes(key: u128) -> [u8; 16] {
    key.to_be_bytes()
}

pub(crate) fn bytes_key(b: &[u8]) -> Option<u128> {
    let arr: [u8; 16] = b.try_into().ok()?;
    Some(u128::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_order() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "255.255.255.255".parse().unwrap();
        let d: IpAddr = "2001:db8::1".parse().unwrap();
        let e: IpAddr = "::1".parse().unwrap();
        for ip in [a, b, c, d, e] {
            assert_eq!(from_key(to_key(ip)), ip);
        }
        assert!(key_bytes(to_key(a)) < key_bytes(to_key(b)));
        assert!(key_bytes(to_key(c)) < key_bytes(to_key(d)));
        assert!(is_v4_key(to_key(c)));
        assert!(!is_v4_key(to_key(d)));
        assert_eq!(bytes_key(&key_bytes(to_key(d))), Some(to_key(d)));
        assert_eq!(bytes_key(&[1, 2, 3]), None);
    }
}
