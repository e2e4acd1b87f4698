//! `resolvConf`: a resolv.conf-style file turned into the result's `dns`.

use std::path::Path;

use cni::{codes, Dns, Error};

/// Parse `nameserver`, `domain`, `search` and `options` lines like host-local:
/// comments (`#`, `;`) and lines with fewer than two fields are skipped; the
/// last `domain` wins; `search` and `options` accumulate.
pub fn parse_resolv_conf_str(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        let rest = fields[1..].iter().map(|s| s.to_string());
        match fields[0] {
            "nameserver" => dns.nameservers.push(fields[1].to_string()),
            "domain" => dns.domain = Some(fields[1].to_string()),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

/// Read and parse `path`; a read failure is code 5 naming the file.
pub fn parse_resolv_conf(path: &Path) -> Result<Dns, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::new(
            codes::IO,
            format!("ipam.resolvConf: cannot read {}: {e}", path.display()),
        )
    })?;
    Ok(parse_resolv_conf_str(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_host_local() {
        let d = parse_resolv_conf_str(
            "# comment\n; other\nnameserver 10.0.0.53\nnameserver  fd00::53 \n\
             domain example.com\nsearch a.example b.example\nsearch c.example\n\
             options ndots:2 edns0\nnameserver\nsortlist 1.2.3.4\n",
        );
        assert_eq!(d.nameservers, vec!["10.0.0.53", "fd00::53"]);
        assert_eq!(d.domain.as_deref(), Some("example.com"));
        assert_eq!(d.search, vec!["a.example", "b.example", "c.example"]);
        assert_eq!(d.options, vec!["ndots:2", "edns0"]);
        assert!(parse_resolv_conf_str("").is_empty());
    }

    #[test]
    fn missing_file_is_io_error() {
        let e = parse_resolv_conf(Path::new("/nonexistent/berth/resolv.conf")).unwrap_err();
        assert_eq!(e.code, codes::IO);
        assert!(e.msg.contains("/nonexistent/berth/resolv.conf"));
    }
}
