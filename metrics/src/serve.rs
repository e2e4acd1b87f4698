//! `GET /metrics` over HTTP/1.1 (hyper on a tokio runtime of its own
//! thread), for Prometheus to scrape, and for a node agent also
//! `/readyz` and `/healthz`, its kubelet probes (200, or 503 with the
//! reason in one line). Anything else gets 404 (another path) or 405
//! (another method); a client that sends no complete request
//! head within [`HEAD_TIMEOUT`] is dropped. Each scrape reads the records
//! on tokio's blocking pool, so a slow one does not hold up another.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::{Error, Result};

/// How long a connection may take to send a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

type Render = dyn Fn() -> Result<String> + Send + Sync;

/// A kubelet probe a node agent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/readyz`: the node is ready for pods.
    Ready,
    /// `/healthz`: the process is working (restart it otherwise).
    Live,
}

/// A probe's answer: Ok (200) or Err with the reason (503), in one line.
type Prober = dyn Fn(Probe) -> std::result::Result<String, String> + Send + Sync;

struct Routes {
    render: Box<Render>,
    probe: Option<Box<Prober>>,
}

/// Listens on `addr` (its errors are the caller's, at once) and serves
/// `render`'s text on a thread of its own until the process ends. The
/// address it listens on (port 0: the one the kernel picked).
pub fn serve(
    addr: SocketAddr,
    render: impl Fn() -> Result<String> + Send + Sync + 'static,
) -> Result<SocketAddr> {
    listen(
        addr,
        Routes {
            render: Box::new(render),
            probe: None,
        },
    )
}

/// [`serve`], and `/readyz` and `/healthz` answered by `probe`.
pub fn serve_with_probes(
    addr: SocketAddr,
    render: impl Fn() -> Result<String> + Send + Sync + 'static,
    probe: impl Fn(Probe) -> std::result::Result<String, String> + Send + Sync + 'static,
) -> Result<SocketAddr> {
    listen(
        addr,
        Routes {
            render: Box::new(render),
            probe: Some(Box::new(probe)),
        },
    )
}

fn listen(addr: SocketAddr, routes: Routes) -> Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| Error::Bind { addr, source })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Serve)?;
    let routes = Arc::new(routes);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(accept(listener, routes)))
        .map_err(Error::Serve)?;
    Ok(local)
}

async fn accept(listener: std::net::TcpListener, routes: Arc<Routes>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("metrics: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some.
                tracing::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, routes.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("metrics: connection ended: {e}");
            }
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    routes: Arc<Routes>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let probe = match (req.uri().path(), &routes.probe) {
        ("/metrics", _) => None,
        ("/readyz", Some(_)) => Some(Probe::Ready),
        ("/healthz", Some(_)) => Some(Probe::Live),
        (_, None) => return Ok(text(StatusCode::NOT_FOUND, "only /metrics is served\n")),
        _ => {
            return Ok(text(
                StatusCode::NOT_FOUND,
                "only /metrics, /readyz and /healthz are served\n",
            ))
        }
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n"));
    }
    if let Some(probe) = probe {
        let answered =
            tokio::task::spawn_blocking(move || routes.probe.as_ref().map(|p| p(probe))).await;
        return Ok(match answered {
            Ok(Some(Ok(said))) => text(StatusCode::OK, &format!("{said}\n")),
            Ok(Some(Err(why))) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{why}\n")),
            Ok(None) => text(StatusCode::NOT_FOUND, "no probes here\n"),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
        });
    }
    let rendered = tokio::task::spawn_blocking(move || (routes.render)()).await;
    Ok(match rendered {
        Ok(Ok(body)) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            r
        }
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    })
}

fn text(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(msg.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn only_get_metrics_is_served() {
        // Loopback, on a port the kernel picks.
        let at = serve("127.0.0.1:0".parse().unwrap(), || Ok("up 1\n".to_string())).unwrap();
        let ok = get(at, "GET /metrics HTTP/1.0\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
        let other = get(at, "GET /other HTTP/1.0\r\n\r\n");
        assert!(other.starts_with("HTTP/1.0 404"), "{other}");
        let post = get(at, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
        assert!(post.starts_with("HTTP/1.0 405"), "{post}");
        let junk = get(at, "not http at all\r\n\r\n");
        assert!(
            junk.is_empty() || junk.starts_with("HTTP/1.1 400"),
            "{junk}"
        );
        // Still serving after all that.
        assert!(get(at, "GET /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 200"));
    }

    #[test]
    fn probes_answer_200_or_503_with_the_reason() {
        let at = serve_with_probes(
            "127.0.0.1:0".parse().unwrap(),
            || Ok("up 1\n".to_string()),
            |p| match p {
                Probe::Ready => Err("no lease yet".to_string()),
                Probe::Live => Ok("ok".to_string()),
            },
        )
        .unwrap();
        let ready = get(at, "GET /readyz HTTP/1.0\r\n\r\n");
        assert!(ready.starts_with("HTTP/1.0 503"), "{ready}");
        assert!(ready.ends_with("\r\n\r\nno lease yet\n"), "{ready}");
        let live = get(at, "GET /healthz HTTP/1.0\r\n\r\n");
        assert!(live.starts_with("HTTP/1.0 200"), "{live}");
        assert!(get(at, "GET /metrics HTTP/1.0\r\n\r\n").ends_with("up 1\n"));
        assert!(get(at, "GET /other HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
        // Without probes, the paths are not there.
        let plain = serve("127.0.0.1:0".parse().unwrap(), || Ok(String::new())).unwrap();
        assert!(get(plain, "GET /readyz HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
    }

    #[test]
    fn a_taken_address_is_the_callers_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = serve(addr, || Ok(String::new())).unwrap_err();
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
