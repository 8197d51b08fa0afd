//! `GET /v1/sandbox/messages` (scope `admin`): what the built-in sandbox gateway received for
//! the caller's tenant, oldest first. It stands in for a phone: it shows bodies in clear.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use http::HeaderMap;
use serde_json::{Value, json};

use crate::auth::scope;
use crate::http::error::ApiError;
use crate::state::AppState;

pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (principal, _tenant) = state.authorize(&headers, scope::ADMIN)?;
    let messages = state.upstreams.sandbox().messages(&principal.tenant);
    Ok(Json(json!({ "messages": messages })))
}
