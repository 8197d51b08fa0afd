//! The admin listener: liveness and readiness for load balancers and orchestrators, and
//! Prometheus metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use serde_json::{Value, json};

use crate::metrics::Snapshot;
use crate::state::AppState;

/// Alive: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready: the database takes a durable write, so a send can be checked and logged.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    match state.database().ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(error) => {
            tracing::warn!(%error, "not ready: the database does not take a write");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "reason": "database" })),
            )
        }
    }
}

/// `GET /metrics`: the Prometheus text exposition of what the flows counted and what waits
/// now (`crate::metrics`). A store that does not answer leaves its gauges out and sets
/// `consentry_store_up` to 0; the scrape itself still succeeds.
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    use std::sync::atomic::Ordering;
    let now_us = state.clock.now().as_microsecond();
    let limits = &state.connections;
    let mut snapshot = Snapshot {
        connections_open: limits.open(),
        requests_in_flight: state.in_flight.len(),
        connections_evicted: limits.evicted.load(Ordering::Relaxed),
        connections_refused: limits.refused.load(Ordering::Relaxed),
        tls_handshake_failures: limits.handshake_failures.load(Ordering::Relaxed),
        write_batches: state.database().write_batch_counts(),
        config_version: state.config_version,
        paced: state.pacer.views(state.clock.now()),
        ..Snapshot::default()
    };
    let read = async {
        let depths = state.database().queue_depths().await?;
        let size = state.audit_log().log_size().await?;
        let latest = state.audit_log().latest_checkpoint().await?;
        Ok::<_, crate::store::StoreError>((depths, size, latest))
    };
    match read.await {
        Ok((depths, size, latest)) => {
            snapshot.store_up = true;
            snapshot.deferred = Some(depths.deferred);
            snapshot.deferred_overdue_seconds = Some(
                depths
                    .earliest_release_us
                    .map_or(0.0, |due| (now_us - due).max(0) as f64 / 1e6),
            );
            snapshot.outbox_pending = Some(depths.outbox_pending);
            snapshot.log_unsequenced = Some(depths.log_unsequenced);
            snapshot.log_tree_size = Some(size);
            snapshot.checkpoint_age_seconds = latest.map(|checkpoint| {
                (jiff::Timestamp::now().as_microsecond() - checkpoint.signed_at_us).max(0) as f64
                    / 1e6
            });
        }
        Err(error) => tracing::warn!(%error, "metrics: the store did not answer"),
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&snapshot),
    )
}
