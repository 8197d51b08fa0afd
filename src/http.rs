//! The HTTP API: routes, and the one place errors become responses ([`error`]).
//!
//! Handlers only translate: authenticate, read and parse the request into domain types, call
//! the flow (`flow::send`, `flow::receive`, `flow::consent`) or a read of the store, and map
//! what comes back to a status code and JSON (or a gateway's own shape, in the fronts). The
//! rules live in `policy`, the sequence of a message in `flow`, the IO in `store` and
//! `upstream`.

pub mod admin;
pub mod audit;
pub mod batch;
pub mod consents;
pub mod console;
pub mod deactivations;
pub mod edge;
pub mod error;
pub mod extract;
pub mod fronts;
pub mod idempotency;
pub mod inbound;
pub mod messages;
pub mod sandbox;

use axum::Router;
use axum::routing::{delete, get, post};
use http::HeaderMap;

use crate::auth::Principal;
use crate::config::Tenant;
use crate::state::AppState;
use error::ApiError;

use std::sync::Arc;

/// The API served on the TLS listener.
pub fn api_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/messages", post(messages::send))
        .route("/v1/messages/batch", post(batch::send))
        .route("/v1/messages/{id}", get(messages::show))
        .route("/v1/messages/{id}/cancel", post(messages::cancel))
        .route("/v1/decisions", post(messages::dry_run))
        .route("/v1/consents", post(consents::record))
        .route("/v1/consents/import", post(consents::import))
        .route("/v1/consents/deactivations", post(deactivations::import))
        .route("/v1/consents/{number}", get(consents::show))
        .route(
            "/2010-04-01/Accounts/{account}/Messages.json",
            post(fronts::twilio_create),
        )
        .route(
            "/2010-04-01/Accounts/{account}/Messages/{sid}",
            get(fronts::twilio_fetch).post(fronts::twilio_update),
        )
        .route("/v2/messages", post(fronts::telnyx_send))
        .route("/v2/messages/{id}", delete(fronts::telnyx_cancel))
        .route("/sms/json", post(fronts::vonage_send))
        .route("/v1/sandbox/messages", get(sandbox::list))
        .route("/v1/sandbox/replies", post(inbound::sandbox_reply))
        .route("/v1/inbound/{upstream}", post(inbound::webhook))
        .route("/v1/reviews", get(inbound::reviews))
        .route("/v1/reviews/{id}/resolve", post(inbound::resolve_review))
        .route("/v1/audit/messages", get(audit::messages))
        .route("/v1/audit/messages/{id}/body", get(audit::message_body))
        .route("/v1/audit/consent-events", get(audit::consent_events))
        .route(
            "/v1/audit/checkpoints/latest",
            get(audit::latest_checkpoint),
        )
        .route("/v1/audit/proofs/inclusion", get(audit::inclusion))
        .route("/v1/audit/proofs/consistency", get(audit::consistency))
        .route("/v1/audit/numbers/{number}/bundle", get(audit::bundle))
        .route("/v1/audit/numbers/{number}/replies", get(audit::replies))
        .route("/v1/audit/decisions", get(audit::decisions))
        .route("/console", get(console::page))
        .route("/console/{asset}", get(console::asset))
        .route("/v1/erasure", post(audit::erase))
        .route("/v1/openapi.json", get(openapi))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::guard,
        ))
        .with_state(state)
}

/// The native API's contract (OpenAPI 3.1): `docs/openapi.json`, compiled in.
pub const OPENAPI: &str = include_str!("../docs/openapi.json");

/// `GET /v1/openapi.json`: the contract, public like any API reference.
async fn openapi() -> impl axum::response::IntoResponse {
    ([(http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// The admin API served on the plain admin listener.
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .fallback(error::not_found)
        .with_state(state)
}

impl AppState {
    /// Verifies the bearer token and checks that it carries `scope` and names a known tenant.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        scope: &'static str,
    ) -> Result<(Principal, &Tenant), ApiError> {
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .map(|value| value.to_str().unwrap_or("\u{0}invalid"));
        let principal = self.verifier.verify_header(authorization)?;
        self.admit(principal, scope)
    }

    /// Checks a verified principal's scope and tenant.
    pub fn admit(
        &self,
        principal: Principal,
        scope: &'static str,
    ) -> Result<(Principal, &Tenant), ApiError> {
        if !principal.has_scope(scope) {
            return Err(ApiError::insufficient_scope(scope));
        }
        let tenant = self
            .tenants
            .get(&principal.tenant)
            .ok_or_else(ApiError::unknown_tenant)?;
        Ok((principal, tenant))
    }
}
