//! Just enough HTTP/1.1 for the engine's plugin client: POST requests with
//! a Content-Length (or chunked) body, keep-alive, JSON answers. The
//! engine's client is Go's net/http; nothing else talks to this socket.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

/// Bodies larger than this are refused (the protocol's are tiny).
const MAX_BODY: usize = 1 << 20;

pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    pub close: bool,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one request; None at a clean end of the connection.
pub fn read_request(r: &mut BufReader<UnixStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("malformed request line"));
    };
    let mut length = 0usize;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(bad("connection closed in the headers"));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let Some((k, v)) = h.split_once(':') else { return Err(bad("malformed header")) };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "content-length" => length = v.parse().map_err(|_| bad("bad Content-Length"))?,
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            "connection" => close = v.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let body = if chunked { read_chunked(r)? } else { read_exact_body(r, length)? };
    Ok(Some(Request { method: method.to_string(), path: path.to_string(), body, close }))
}

fn read_exact_body(r: &mut BufReader<UnixStream>, length: usize) -> io::Result<Vec<u8>> {
    if length > MAX_BODY {
        return Err(bad("body too large"));
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok(body)
}

fn read_chunked(r: &mut BufReader<UnixStream>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let hex = size.trim().split(';').next().unwrap_or("");
        let n = usize::from_str_radix(hex, 16).map_err(|_| bad("bad chunk size"))?;
        if body.len() + n > MAX_BODY {
            return Err(bad("body too large"));
        }
        let mut chunk = vec![0; n];
        r.read_exact(&mut chunk)?;
        body.extend_from_slice(&chunk);
        let mut crlf = String::new();
        r.read_line(&mut crlf)?;
        if n == 0 {
            return Ok(body);
        }
    }
}

pub fn write_response(w: &mut UnixStream, resp: &Response) -> io::Result<()> {
    let reason = match resp.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/vnd.docker.plugins.v1.1+json\r\nContent-Length: {}\r\n\r\n",
        resp.status,
        resp.body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(&resp.body)?;
    w.flush()
}
