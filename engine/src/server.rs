//! berthd's HTTP/1.1 server: hyper on tokio, on the plugin socket.
//!
//! The engine's client is Go's net/http (POST, JSON bodies, keep-alive),
//! but anything that can open the socket may send anything, so every limit
//! is explicit and no input can stop the daemon:
//!
//! - a connection's first request head is screened before hyper sees it
//!   (parsed with httparse, hyper's own parser): one larger than
//!   [`MAX_HEAD`] or with more than [`MAX_HEADERS`] headers gets 431, one
//!   that does not parse, or whose Content-Length is not a number or is
//!   given twice differently, gets 400, each with `{"Err": "..."}`, and the
//!   connection closes. Later heads on a kept-alive connection (only Go's
//!   client sends those) are hyper's, which answers the same errors with
//!   an empty 400 or 431;
//! - a head not complete within [`HEAD_TIMEOUT`] of connecting (a client
//!   that connects and stalls) closes the connection;
//! - a body larger than [`MAX_BODY`] gets 413, a malformed chunked body
//!   400, a body not received within [`BODY_TIMEOUT`] 408, each with
//!   `{"Err": "..."}`; the rest (unknown paths, invalid JSON) is the
//!   handler's, which answers 4xx with `Err` too.
//!
//! The handler is synchronous (it makes kernel objects and may ask the
//! engine's API), so it runs on tokio's blocking pool: a slow call never
//! holds up another connection.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

/// Largest request head accepted (the protocol's are a few hundred bytes).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers a request may have (hyper's limit too).
pub const MAX_HEADERS: usize = 100;
/// Largest request body accepted (the protocol's are tiny).
pub const MAX_BODY: usize = 1 << 20;
/// How long a connection may take to send a complete request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may take to send its body once the head is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The protocol's content type (Docker's plugin API v1.1).
const CONTENT_TYPE_PLUGIN: &str = "application/vnd.docker.plugins.v1.1+json";

/// One request as the drivers see it.
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: Bytes,
}

/// The drivers' answer.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Serves `handler` on `listener` until the process ends.
pub async fn serve<F>(listener: UnixListener, handler: Arc<F>)
where
    F: Fn(Call) -> Answer + Send + Sync + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to
                // be freed instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let Some(head) = screen_first_head(&mut stream).await else {
                return;
            };
            let stream = Prefixed {
                prefix: head,
                pos: 0,
                inner: stream,
            };
            let service = service_fn(move |req| answer(req, handler.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

async fn answer<F>(
    req: Request<Incoming>,
    handler: Arc<F>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    F: Fn(Call) -> Answer + Send + Sync + 'static,
{
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    // A declared length over the limit is refused before waiting for it
    // (Limited would only notice once that much had arrived).
    if req.body().size_hint().lower() > MAX_BODY as u64 {
        return Ok(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body larger than {MAX_BODY} bytes"),
        ));
    }
    let collected = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Ok(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body larger than {MAX_BODY} bytes"),
            ));
        }
        Ok(Err(e)) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                &format!("malformed HTTP request body: {e}"),
            ))
        }
        Err(_) => {
            return Ok(error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "request body not received within {}s",
                    BODY_TIMEOUT.as_secs()
                ),
            ))
        }
    };
    let call = Call { method, path, body };
    let answer = match tokio::task::spawn_blocking(move || handler(call)).await {
        Ok(a) => a,
        Err(e) => {
            return Ok(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the call failed: {e}"),
            ))
        }
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Ok(response(status, answer.body))
}

fn response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_PLUGIN));
    r
}

/// A 4xx/5xx with the protocol's `{"Err": ...}`.
fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    tracing::info!("{} {msg}", status.as_u16());
    response(
        status,
        serde_json::to_vec(&serde_json::json!({ "Err": msg })).unwrap_or_default(),
    )
}

/// Reads the connection's first request head (and whatever of its body
/// came with it) and checks it; returns the bytes read, for hyper to parse
/// again. A head that cannot be served is answered here with a 4xx and
/// `Err` (None: nothing more to do on this connection).
async fn screen_first_head(stream: &mut UnixStream) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return match check_head(&buf[..end + 4]) {
                Ok(()) => Some(buf),
                Err((status, msg)) => {
                    refuse(stream, status, &msg).await;
                    None
                }
            };
        }
        if buf.len() > MAX_HEAD {
            let msg = format!("request head larger than {MAX_HEAD} bytes");
            refuse(stream, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &msg).await;
            return None;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            // Closed (before anything, or in the head) or stalled: nothing
            // to answer that anyone reads.
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => {
                if !buf.is_empty() {
                    refuse(
                        stream,
                        StatusCode::BAD_REQUEST,
                        "connection closed in the request head",
                    )
                    .await;
                }
                return None;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What hyper would refuse in a complete head, with why.
fn check_head(head: &[u8]) -> Result<(), (StatusCode, String)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err((StatusCode::BAD_REQUEST, "incomplete request head".into()))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("more than {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("malformed request head: {e}"),
            ))
        }
    }
    let mut length: Option<u64> = None;
    for h in req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let text = std::str::from_utf8(h.value).unwrap_or("").trim();
        let value: u64 = text
            .parse()
            .ok()
            .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("Content-Length {text:?} is not a length"),
                )
            })?;
        if length.is_some_and(|l| l != value) {
            return Err((
                StatusCode::BAD_REQUEST,
                "two different Content-Lengths".into(),
            ));
        }
        length = Some(value);
    }
    Ok(())
}

/// Answers `status` with `{"Err": msg}` and closes (the connection's state
/// is unknown after a head that was refused).
async fn refuse(stream: &mut UnixStream, status: StatusCode, msg: &str) {
    tracing::info!("{} {msg}", status.as_u16());
    let body = serde_json::to_vec(&serde_json::json!({ "Err": msg })).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {CONTENT_TYPE_PLUGIN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tokio::time::timeout(BODY_TIMEOUT, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
}

/// The connection as hyper reads it: the bytes the screen already read,
/// then the rest of the stream.
struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: UnixStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_hyper_would_refuse_are_named() {
        let ok = b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n";
        assert!(check_head(ok).is_ok());
        for (head, status, says) in [
            (
                &b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
                400,
                "Content-Length",
            ),
            (
                b"POST /x HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
                400,
                "Content-Length",
            ),
            (
                b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
                400,
                "two different",
            ),
            (b"POST\x01 /x HTTP/1.1\r\n\r\n", 400, "malformed"),
        ] {
            let (s, msg) = check_head(head).unwrap_err();
            assert_eq!(s.as_u16(), status, "{msg}");
            assert!(msg.contains(says), "{msg}");
        }
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("POST /x HTTP/1.1\r\n{many}\r\n");
        assert_eq!(check_head(head.as_bytes()).unwrap_err().0.as_u16(), 431);
    }
}
