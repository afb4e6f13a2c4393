//! `--metrics-addr`: `GET /metrics` (Prometheus text) and `GET /healthz`
//! (JSON). Neither ever triggers a fetch.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::Metrics;
use crate::cache::Cache;

/// A client gets this long to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a measured cache size is reported before it is walked again:
/// scrapes come every few seconds, and a walk reads every blob's metadata.
const CACHE_BYTES_FOR: Duration = Duration::from_secs(5);

/// What the endpoints report on.
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub cache: Arc<Cache>,
    /// Set once the file system is mounted, cleared when it is unmounted.
    pub mounted: Arc<AtomicBool>,
    cache_bytes: tokio::sync::Mutex<Option<(Instant, u64)>>,
}

impl Endpoint {
    pub fn new(metrics: Arc<Metrics>, cache: Arc<Cache>, mounted: Arc<AtomicBool>) -> Self {
        Endpoint {
            metrics,
            cache,
            mounted,
            cache_bytes: tokio::sync::Mutex::new(None),
        }
    }

    /// The cache's size on disk, walked at most every [`CACHE_BYTES_FOR`]
    /// however many requests come.
    async fn cache_bytes(&self) -> u64 {
        let mut last = self.cache_bytes.lock().await;
        if let Some((at, bytes)) = *last
            && at.elapsed() < CACHE_BYTES_FOR
        {
            return bytes;
        }
        // Walking the cache directory is blocking file I/O.
        let cache = Arc::clone(&self.cache);
        let bytes = tokio::task::spawn_blocking(move || cache.disk_usage())
            .await
            .unwrap_or(0);
        *last = Some((Instant::now(), bytes));
        bytes
    }
}

/// Serves until the runtime shuts down.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin on the error.
                warn!(error = %e, "metrics listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoint = Arc::clone(&endpoint);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(Arc::clone(&endpoint), req));
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

async fn answer(
    endpoint: Arc<Endpoint>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, v);
        }
        Ok(response)
    };
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    let path = req.uri().path().to_owned();
    if path != "/metrics" && path != "/healthz" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /healthz\n".into(),
        );
    }
    let cache_bytes = endpoint.cache_bytes().await;
    if path == "/metrics" {
        let text = endpoint.metrics.encode(cache_bytes);
        return reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            text,
        );
    }
    let mounted = endpoint.mounted.load(Ordering::Acquire);
    let catalog = endpoint.metrics.catalog();
    let health = serde_json::json!({
        "mounted": mounted,
        "cache_dir": endpoint.cache.root(),
        "cache_bytes": cache_bytes,
        "quota_bytes": endpoint.cache.quota().max_bytes,
        "models": catalog.as_ref().map_or(0, |c| c.models),
        "sources": endpoint.metrics.sources(),
        "streams": endpoint.metrics.streams_json(),
        "catalog": catalog,
    });
    let status = if mounted {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    reply(status, "application/json", format!("{health:#}\n"))
}
