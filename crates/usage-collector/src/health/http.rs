//! The admin HTTP server: `/metrics`, `/health/live`, `/health/ready`, `/status`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{Health, Metrics};

#[derive(Clone)]
struct AdminState {
    health: Health,
    metrics: Arc<Metrics>,
    status: Option<super::status::StatusSource>,
}

/// Serves the admin routes on `incoming`, secured as `security` says (plain HTTP or HTTPS),
/// until `shutdown` completes. Each connection gets `timeout` for a request's headers (a
/// slowloris client is cut off) and lives at most `timeout` more than that, so connections
/// cannot pile up; a TLS handshake runs in the connection's own task, within the handshake
/// timeout.
pub async fn serve(
    incoming: crate::net::Incoming,
    security: crate::net::tls::Security,
    router: Router,
    timeout: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            // An accept error is logged by `accept`, which pauses before the next one.
            accepted = incoming.accept("admin") => match accepted {
                Ok(stream) => stream,
                Err(_) => continue,
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let security = security.clone();
        tokio::spawn(async move {
            // Counted and logged by the handshake.
            let Ok(stream) = security.secure(stream).await else {
                return;
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(timeout * 2, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "admin connection ended with an error"),
                Err(_) => tracing::debug!("admin connection closed: open too long"),
            }
        });
    }
}

/// The admin routes; `/status` answers when `status` is given.
pub fn router(
    health: Health,
    metrics: Arc<Metrics>,
    status: Option<super::status::StatusSource>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/status", get(status_json))
        .with_state(AdminState {
            health,
            metrics,
            status,
        })
}

/// What the collector is doing (proto/admin.openapi.json).
async fn status_json(State(state): State<AdminState>) -> Response {
    match &state.status {
        Some(source) => axum::Json(source().await).into_response(),
        None => (StatusCode::NOT_FOUND, "no status here").into_response(),
    }
}

/// OpenMetrics unless the scraper asks only for the Prometheus text format (`text/plain`), as
/// Prometheus does when told to, and as older scrapers always do.
fn wants_openmetrics(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .all(|accept| {
            accept.contains("application/openmetrics-text") || !accept.contains("text/plain")
        })
}

async fn metrics_text(State(state): State<AdminState>, headers: axum::http::HeaderMap) -> Response {
    let (encoded, content_type) = if wants_openmetrics(&headers) {
        (
            state.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            state.metrics.encode_prometheus(),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    match encoded {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode metrics: {e}"),
            )
                .into_response()
        }
    }
}

async fn live(State(state): State<AdminState>) -> Response {
    if state.health.live() {
        axum::Json(serde_json::json!({"status": "ok"})).into_response()
    } else {
        let (readiness, _) = state.health.readiness(true);
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": "failing",
                "writer": readiness.checks.get("writer"),
            })),
        )
            .into_response()
    }
}

/// `?strict=1` (or `?strict`): a degraded data path is not ready either.
fn strict(uri: &axum::http::Uri) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| matches!(pair, "strict" | "strict=1" | "strict=true"))
    })
}

async fn ready(State(state): State<AdminState>, uri: axum::http::Uri) -> Response {
    let (readiness, ready) = state.health.readiness(strict(&uri));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(readiness)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().unwrap());
        headers
    }

    #[test]
    fn the_text_format_is_served_to_scrapers_that_ask_only_for_it() {
        assert!(wants_openmetrics(&axum::http::HeaderMap::new()));
        assert!(wants_openmetrics(&accept(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(&accept("text/plain;version=0.0.4")));
        let metrics = Metrics::new();
        metrics.database_up.set(1);
        let text = metrics.encode_prometheus().unwrap();
        assert!(text.contains("usage_collector_database_up 1"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
