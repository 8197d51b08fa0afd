//! The console (`GET /console`): one page for auditors and operators, served from three files
//! built into the binary, with nothing loaded from elsewhere. The page holds no data: it asks
//! for a token, keeps it in the tab's session storage, and reads the audit, consent and review
//! APIs with it, so it shows exactly what that token may see (numbers masked unless the token
//! may read them) and resolves a review only with `consents:write`. It checks in the browser
//! what it can without trusting the server: the checkpoint's signature and each row's
//! inclusion proof. docs/auditors.md, "The console".

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::http::error::ApiError;
use crate::http::extract::Path;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Only the console's own files and the API on this origin; no framing, no inline script.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `GET /console`
pub async fn page() -> Response {
    serve("text/html; charset=utf-8", PAGE)
}

/// `GET /console/{asset}`: the page's script and style sheet.
pub async fn asset(name: Path<String>) -> Result<Response, ApiError> {
    match name.get()?.as_str() {
        "console.js" => Ok(serve("text/javascript; charset=utf-8", SCRIPT)),
        "console.css" => Ok(serve("text/css; charset=utf-8", STYLE)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such file of the console",
        )),
    }
}

fn serve(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
