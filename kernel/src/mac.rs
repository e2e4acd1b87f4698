//! MAC addresses as text: `aa:bb:cc:dd:ee:ff`, the way the CNI results,
//! nft and `ip` spell them.

/// `aa:bb:cc:dd:ee:ff`, lowercase.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Six pairs of hex digits separated by ':' (or '-', as some tools write
/// them); None for anything else.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    // (from_str_radix alone would take "+2".)
    let hex_pair = |p: &&str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit());
    if parts.len() != 6 || !parts.iter().all(hex_pair) {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mac = [0x02, 0xbf, 0x0a, 0x00, 0xff, 0x01];
        assert_eq!(mac_text(&mac), "02:bf:0a:00:ff:01");
        assert_eq!(parse_mac("02:bf:0a:00:ff:01"), Some(mac));
        assert_eq!(parse_mac("02-BF-0A-00-FF-01"), Some(mac));
        for bad in [
            "",
            "02:bf:0a:00:ff",
            "02:bf:0a:00:ff:01:02",
            "2:bf:0a:00:ff:01",
            "0x:bf:0a:00:ff:01",
            "+2:bf:0a:00:ff:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
