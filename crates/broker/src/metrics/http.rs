//! The metrics listener (`metrics.listen`): a small HTTP/1.1 server on hyper answering
//! `GET /metrics` (Prometheus text), `GET /health` (200 while the process serves) and
//! `GET /ready` (200 once the broker serves, 503 with the reason otherwise).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::handler::Context;

/// Scrapers and probes served at once; more wait in the kernel's accept queue. A handful of
/// Prometheus servers and a load balancer's probes need far fewer.
const CONNECTIONS_MAX: usize = 32;
/// A client that has not sent its request headers within this is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until the broker shuts down.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
            () = ctx.shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = ctx.shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, Infallible>(answer(&ctx, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                served = connection => if let Err(e) = served {
                    tracing::debug!(error = %e, "metrics connection closed");
                },
                () = ctx.shutdown.cancelled() => {}
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn answer(ctx: &Arc<Context>, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            // Walks every partition and group: off the async workers.
            let scraped = Arc::clone(ctx);
            match tokio::task::spawn_blocking(move || super::render(&scraped)).await {
                Ok(body) => {
                    let mut response = text(StatusCode::OK, body);
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
                    response
                }
                Err(e) => {
                    tracing::error!(error = %e, "rendering the metrics failed");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "rendering the metrics failed\n",
                    )
                }
            }
        }
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => match super::readiness(ctx) {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /health or /ready\n",
        ),
    }
}
