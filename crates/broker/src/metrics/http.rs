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
/// How long one connection is kept: then it is closed after the answer in progress, if any
/// (scrapers reconnect at their next scrape). With [`CLOSE_GRACE`], it bounds how long a client
/// that reads no answers (or idles on a keep-alive connection) holds one of the
/// [`CONNECTIONS_MAX`] slots. Short in unit tests, so that the test of it is quick.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 60 });
/// How long the answer in progress may take to be written once the lifetime is over.
const CLOSE_GRACE: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 10 });

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
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => Some(served),
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        served = tokio::time::timeout(CLOSE_GRACE, connection.as_mut()) => served.ok(),
                        () = ctx.shutdown.cancelled() => None,
                    }
                }
                () = ctx.shutdown.cancelled() => None,
            };
            if let Some(Err(e)) = served {
                tracing::debug!(error = %e, "metrics connection closed");
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::{CLOSE_GRACE, CONNECTION_LIFETIME};
    use crate::{BrokerConfig, start};

    /// A client that asks for far more than it reads does not keep its slot: once the
    /// connection's lifetime and grace are over, the broker drops it, answers unwritten.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_metrics_client_that_reads_nothing_is_dropped_after_the_lifetime() {
        const REQUESTS: usize = 3000;
        let dir = tempfile::tempdir().unwrap();
        let mut config = BrokerConfig::for_dir(dir.path().into(), "127.0.0.1:0".parse().unwrap());
        config.set("metrics.listen", "127.0.0.1:0").unwrap();
        let broker = start(config).await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket
            .connect(broker.metrics_addr().unwrap())
            .await
            .unwrap();
        let (mut reader, mut writer) = stream.into_split();
        // Pipelined scrapes, each answer some kilobytes: far more than the socket buffers hold.
        // The writes themselves block once the broker stops reading, hence their own task.
        let asks = tokio::spawn(async move {
            let request = b"GET /metrics HTTP/1.1\r\nHost: strata\r\n\r\n".repeat(REQUESTS);
            let _ = writer.write_all(&request).await;
            writer
        });
        // The client reads nothing for longer than the lifetime and the grace together.
        tokio::time::sleep(CONNECTION_LIFETIME + CLOSE_GRACE + Duration::from_secs(1)).await;
        let mut received = Vec::new();
        let read_all = async {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(60), read_all)
                .await
                .is_ok(),
            "the connection stays open"
        );
        let answers = received
            .windows(12)
            .filter(|w| w == b"HTTP/1.1 200")
            .count();
        assert!(answers < REQUESTS, "every answer was written: {answers}");
        asks.abort();
        broker.shutdown().await;
    }
}
