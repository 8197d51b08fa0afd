//! Path and query extractors that never answer on their own: a malformed path segment or query
//! string is kept as an [`ApiError`] in the documented shape, and the handler returns it after
//! it has authenticated the caller. axum's own extractors would answer a plain-text 400 before
//! the token is looked at.

use axum::extract::FromRequestParts;
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The path parameters, or why they could not be read (`invalid_path`).
pub struct Path<T>(Result<T, ApiError>);

/// The query string, or why it could not be read (`invalid_query`).
pub struct Query<T>(Result<T, ApiError>);

impl<T> Path<T> {
    pub fn get(self) -> Result<T, ApiError> {
        self.0
    }
}

impl<T> Query<T> {
    pub fn get(self) -> Result<T, ApiError> {
        self.0
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Path(
            axum::extract::Path::<T>::from_request_parts(parts, state)
                .await
                .map(|path| path.0)
                .map_err(|rejection| {
                    ApiError::bad_request(
                        "invalid_path",
                        format!("the path is not valid: {}", rejection.body_text()),
                    )
                }),
        ))
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Query<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Query(
            axum::extract::Query::<T>::from_request_parts(parts, state)
                .await
                .map(|query| query.0)
                .map_err(|rejection| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("the query string is not valid: {}", rejection.body_text()),
                    )
                }),
        ))
    }
}
