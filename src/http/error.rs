//! Every error and denial of the native API has one shape:
//! `{"error": {"code": "...", "message": "...", ...details}}`, with a stable `code`.
//! Authentication failures add `WWW-Authenticate` (RFC 6750 section 3).

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::auth::AuthError;
use crate::dialect::WebhookError;
use crate::flow::FlowError;
use crate::store::StoreError;
use crate::upstream::UpstreamError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra members of the `error` object.
    pub details: Map<String, Value>,
    pub www_authenticate: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Map::new(),
            www_authenticate: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub fn insufficient_scope(scope: &str) -> Self {
        let mut error = Self::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("the token lacks the scope {scope}"),
        )
        .with("required_scope", scope);
        error.www_authenticate = Some(format!(
            "Bearer realm=\"consentry\", error=\"insufficient_scope\", scope=\"{scope}\""
        ));
        error
    }

    pub fn unknown_tenant() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "unknown_tenant",
            "the token names a tenant that is not configured",
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let mut api = ApiError::new(StatusCode::UNAUTHORIZED, error.code(), error.to_string());
        api.www_authenticate = Some(match error {
            AuthError::Missing => "Bearer realm=\"consentry\"".to_owned(),
            _ => format!(
                "Bearer realm=\"consentry\", error=\"invalid_token\", error_description=\"{}\"",
                error.code()
            ),
        });
        api
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "storage failed; answering 503 and forwarding nothing");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the message log cannot be written; nothing was sent",
        )
    }
}

impl From<UpstreamError> for ApiError {
    fn from(error: UpstreamError) -> Self {
        ApiError::new(StatusCode::BAD_GATEWAY, error.code(), error.to_string())
    }
}

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        let status = match error {
            WebhookError::Malformed(_) => StatusCode::BAD_REQUEST,
            WebhookError::MissingSignature | WebhookError::BadSignature | WebhookError::Stale => {
                StatusCode::UNAUTHORIZED
            }
        };
        tracing::warn!(code = error.code(), "webhook refused");
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl From<crate::flow::request::RequestError> for ApiError {
    fn from(error: crate::flow::request::RequestError) -> Self {
        let answer = ApiError::bad_request(error.code, error.message);
        match error.field {
            Some(field) => answer.with("field", field),
            None => answer,
        }
    }
}

impl From<FlowError> for ApiError {
    fn from(error: FlowError) -> Self {
        match error {
            FlowError::Store(error) => ApiError::from(error),
            FlowError::Encryption(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "encryption_unavailable",
                message,
            ),
            FlowError::Unreadable(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                message,
            ),
            FlowError::Reply(error) => ApiError::from(error),
            FlowError::Lookup(error) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "reassigned_lookup_unavailable",
                format!("{error}; nothing was sent"),
            ),
        }
    }
}

/// In the extensions of an answer that says nothing was sent because consentry could not
/// record or seal the message (503): an idempotency key is given up rather than kept, so that
/// the retry runs.
#[derive(Debug, Clone, Copy)]
pub struct NothingSent;

impl ApiError {
    /// Marks `response` (this error, in whatever shape a front renders it) with
    /// [`NothingSent`] when this error says nothing was sent.
    pub fn mark(&self, mut response: Response) -> Response {
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.extensions_mut().insert(NothingSent);
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let nothing_sent = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut error = Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        error.extend(self.details);
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if let Some(challenge) = self.www_authenticate
            && let Ok(value) = http::HeaderValue::from_str(&challenge)
        {
            response
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, value);
        }
        if nothing_sent {
            response.extensions_mut().insert(NothingSent);
        }
        response
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}
