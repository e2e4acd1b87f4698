//! berthd's HTTP/1.1 server: hyper on tokio, on the plugin socket.
//!
//! The engine's client is Go's net/http (POST, JSON bodies, keep-alive),
//! but anything that can open the socket may send anything, so every limit
//! is explicit and no input can stop the daemon:
//!
//! - a request head larger than [`MAX_HEAD`] gets hyper's 431, more than
//!   hyper's 100 headers its 431 too, a head hyper cannot parse (a bad
//!   request line, an overflowing or negative Content-Length, a broken
//!   Transfer-Encoding) its 400. hyper answers these itself, before any
//!   handler runs, so those answers carry no JSON body;
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
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;

/// Largest request head accepted (the protocol's are a few hundred bytes).
pub const MAX_HEAD: usize = 64 * 1024;
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
