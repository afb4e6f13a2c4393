//! `--metrics-addr`: `GET /metrics` (Prometheus text) and `GET /healthz`
//! (JSON). Neither ever triggers a fetch.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

use super::Metrics;
use crate::cache::Cache;

/// What the endpoints report on.
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub cache: Arc<Cache>,
    pub models: usize,
}

/// Serves until the runtime shuts down.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let endpoint = Arc::clone(&endpoint);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(Arc::clone(&endpoint), req));
            if let Err(e) = http1::Builder::new()
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
    // Walking the cache directory is blocking file I/O.
    let cache = Arc::clone(&endpoint.cache);
    let cache_bytes = tokio::task::spawn_blocking(move || cache.disk_usage())
        .await
        .unwrap_or(0);
    if path == "/metrics" {
        let text = endpoint.metrics.encode(cache_bytes);
        return reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            text,
        );
    }
    let health = serde_json::json!({
        "mounted": true,
        "cache_dir": endpoint.cache.root(),
        "cache_bytes": cache_bytes,
        "quota_bytes": endpoint.cache.quota().max_bytes,
        "models": endpoint.models,
        "sources": endpoint.metrics.last_errors(),
    });
    reply(StatusCode::OK, "application/json", format!("{health:#}\n"))
}
