//! Asking the Docker engine which containers use a volume, over its API
//! socket: how berthd reconciles mount counts the engine lost track of
//! (containers killed with dockerd get no Unmount, and their next start
//! may use new mount IDs).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How many containers, running or not, reference volume `name`; None if
/// the engine can't be asked (then nothing is assumed).
pub fn containers_using(socket: &Path, name: &str) -> Option<usize> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let filters = encode(&format!("{{\"volume\":[\"{name}\"]}}"));
    // HTTP/1.0: the answer is not chunked and ends with the connection.
    let req =
        format!("GET /containers/json?all=1&filters={filters} HTTP/1.0\r\nHost: docker\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    let list: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(list.as_array()?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode("{\"volume\":[\"a.b\"]}"),
            "%7B%22volume%22%3A%5B%22a.b%22%5D%7D"
        );
    }
}
