//! The edge of every API request: what is checked before a handler runs, and what is done
//! with a body the handler did not read.
//!
//! - One `Authorization` header: two are refused (400 `duplicate_authorization`), whichever
//!   of them a proxy in front may have checked.
//! - No content coding (415 `unsupported_content_encoding`, RFC 9110 section 15.5.16) and no
//!   transfer coding but `chunked` (501 `unsupported_transfer_coding`, RFC 9112 section 6.1):
//!   consentry reads bodies as they are sent.
//! - The body must keep coming: after a grace of [`BODY_GRACE`], at least
//!   `server.min_body_rate` bytes a second of the time the handler waited for it; a slower
//!   client gets 408 `request_timeout` ([`body_error`]). Time the handler spends on what it
//!   read does not count against the client.
//! - An answer given before the body was read (401, 403, 413, 415...) waits until the rest of
//!   the body is read and discarded, up to [`DRAIN_BYTES`] in [`DRAIN_TIME`]: a client that
//!   writes its whole request before reading gets the answer rather than a reset, and h2
//!   clients get it without the `RST_STREAM` that curl reports as a framing error. A body
//!   larger or slower than that ends the HTTP/1.1 connection after the answer
//!   (`Connection: close`); the listener then lingers before closing (`server::connection`).
//!   A client that sent `Expect: 100-continue` and was not asked for its body gets the answer
//!   without a `100 Continue` (HTTP/1.1: and `Connection: close`): it never sends the body.
//! - The handler runs in a task of its own, to its end: a client that goes away (its own
//!   timeout, a closed connection) leaves no send cut in half, recorded but not forwarded or
//!   forwarded without the gateway's answer recorded ([`run_to_its_end`]).
//! - Each request gets an id (`X-Request-Id` in the answer, `id` in every log line of it).
//! - A request with a valid token marks its connection as authenticated: such connections
//!   keep their place when the listener is full (`server::limits`).

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, Version, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::time::{Instant, Sleep};
use tracing::Instrument as _;

use super::error::ApiError;
use crate::server::limits::Proof;
use crate::state::AppState;

/// How long a body may take before the minimum rate applies.
pub const BODY_GRACE: Duration = Duration::from_secs(5);
/// The most of an unread body read and discarded so that an early answer reaches the client.
pub const DRAIN_BYTES: u64 = 16 << 20;
/// The longest an early answer waits for the unread body to be discarded.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Runs a request's handler in a task of the state's tracker and answers what it answers. A
/// client that goes away drops this future, not the task: the handler goes on as if the client
/// were still there (a send's record is forwarded, the gateway's answer recorded, the key's
/// answer kept for the retry), and shutdown waits for it (`App::run`).
async fn run_to_its_end(
    state: &AppState,
    handler: impl Future<Output = Response> + Send + 'static,
) -> Response {
    match state.in_flight.spawn(handler.in_current_span()).await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(%error, "a request's handler failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the request failed inside consentry; see its log under this request's id",
            )
            .into_response()
        }
    }
}

/// The checks before the handler, and the drain after it. See the module documentation.
pub async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    // Every log line of the request carries its id; the answer says it.
    let id = request_id();
    let span = tracing::info_span!("request", id = %id, method = %request.method());
    let mut response = checked(&state, request, next).instrument(span).await;
    if let Ok(value) = http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

async fn checked(state: &AppState, request: Request, next: Next) -> Response {
    let version = request.version();
    // A client that asked `Expect: 100-continue` sends no body until it is told to: an early
    // answer must not ask for it (reading would send the 100) but end the exchange instead.
    let awaits_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if let Some(refusal) = refused(&request) {
        if awaits_continue {
            return without_body(version, refusal);
        }
        return finish(request.into_body(), refusal).await;
    }
    let proof = request
        .extensions()
        .get::<Proof>()
        .filter(|proof| !proof.is_proven())
        .cloned();
    if let Some(proof) = &proof
        && state
            .verifier
            .verify_header(
                request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|value| value.to_str().ok()),
            )
            .is_ok()
    {
        proof.prove();
    }
    let (parts, body) = request.into_parts();
    let leftover = Arc::new(Mutex::new(None));
    let body = Body::new(Paced::new(body, state.min_body_rate, leftover.clone()));
    let response = run_to_its_end(state, next.run(Request::from_parts(parts, body))).await;
    // A webhook with a valid signature, a front's credentials in the body: a success shows
    // the client is known too.
    if let Some(proof) = proof
        && response.status().is_success()
    {
        proof.prove();
    }
    let unread = leftover.lock().ok().and_then(|mut slot| slot.take());
    match unread {
        None => response,
        Some(Unread { polled: false, .. }) if awaits_continue => without_body(version, response),
        Some(Unread { body, .. }) => {
            let response = finish(body, response).await;
            if version == Version::HTTP_11 && response.headers().contains_key(header::CONNECTION) {
                tracing::debug!("an unread request body was too large or slow to discard");
            }
            response
        }
    }
}

/// An answer to a request whose body was never asked for (`Expect: 100-continue`): on
/// HTTP/1.1 the connection ends after it, since the client may still send the body.
fn without_body(version: Version, mut response: Response) -> Response {
    if version == Version::HTTP_11 {
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    response
}

/// The header that carries a request's id in its answer, and in each log line of it.
const REQUEST_ID: &str = "x-request-id";

/// A new request id: `req_` and a UUIDv7 (time-ordered, so ids sort as requests came).
fn request_id() -> String {
    format!("req_{}", uuid::Uuid::now_v7().simple())
}

/// What is refused before the handler runs, whatever the route.
fn refused(request: &Request) -> Option<Response> {
    let headers = request.headers();
    if headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Some(
            ApiError::bad_request("duplicate_authorization", "send one Authorization header")
                .into_response(),
        );
    }
    let codings = |name: header::HeaderName| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
            .map(|coding| coding.trim().to_ascii_lowercase())
            .filter(|coding| !coding.is_empty())
            .collect::<Vec<_>>()
    };
    if codings(header::CONTENT_ENCODING)
        .iter()
        .any(|coding| coding != "identity")
    {
        let mut response = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_encoding",
            "send the body without a content coding (Content-Encoding: identity)",
        )
        .into_response();
        // RFC 9110 section 12.5.3: what the server accepts instead.
        response.headers_mut().insert(
            header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
        return Some(response);
    }
    if codings(header::TRANSFER_ENCODING)
        .iter()
        .any(|coding| coding != "chunked")
    {
        return Some(
            ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported_transfer_coding",
                "the only transfer coding accepted is chunked",
            )
            .into_response(),
        );
    }
    None
}

/// Reads and discards what is left of `body` before `response` goes out, within
/// [`DRAIN_BYTES`] and [`DRAIN_TIME`]; past them, the response closes an HTTP/1.1 connection.
async fn finish(body: Body, mut response: Response) -> Response {
    let drained = tokio::time::timeout(DRAIN_TIME, async {
        let mut body = body;
        let mut read: u64 = 0;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                read += data.len() as u64;
                if read > DRAIN_BYTES {
                    return false;
                }
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    if !drained {
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    response
}

/// The body a client sends too slowly: fewer than the minimum rate's bytes a second.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly")]
pub struct BodyTooSlow;

/// The request body as the handler reads it: timed against the minimum rate, and handed back
/// to [`guard`] if the handler drops it unread.
struct Paced {
    inner: Option<Body>,
    min_rate: u64,
    received: u64,
    /// Time spent waiting for the client, not counting the time being waited now.
    waited: Duration,
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the handler ever asked for the body.
    polled: bool,
    leftover: Arc<Mutex<Option<Unread>>>,
}

/// What is left of a body its handler dropped.
struct Unread {
    body: Body,
    /// Whether the handler read any of it (asked for it at least once).
    polled: bool,
}

impl Paced {
    fn new(inner: Body, min_rate: u64, leftover: Arc<Mutex<Option<Unread>>>) -> Paced {
        Paced {
            inner: Some(inner),
            min_rate: min_rate.max(1),
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
            polled: false,
            leftover,
        }
    }

    /// How long the client may have been waited for, given what it has sent.
    fn allowance(&self) -> Duration {
        BODY_GRACE + Duration::from_secs_f64(self.received as f64 / self.min_rate as f64)
    }
}

impl HttpBody for Paced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        this.polled = true;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                this.timer = None;
                if let Some(Ok(frame)) = &frame
                    && let Some(data) = frame.data_ref()
                {
                    this.received += data.len() as u64;
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let now = Instant::now();
                let since = *this.waiting_since.get_or_insert(now);
                let spent = this.waited + (now - since);
                let allowance = this.allowance();
                if spent >= allowance {
                    return Poll::Ready(Some(Err(axum::Error::new(BodyTooSlow))));
                }
                let deadline = now + (allowance - spent);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTooSlow)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(HttpBody::size_hint)
            .unwrap_or_default()
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && !inner.is_end_stream()
            && let Ok(mut slot) = self.leftover.lock()
        {
            *slot = Some(Unread {
                body: inner,
                polled: self.polled,
            });
        }
    }
}

/// The answer for a body that could not be read: 408 when the client was too slow, 413 when
/// it was larger than `limit`, 400 when it ended badly.
pub fn body_error(error: &(dyn StdError + 'static), limit: usize) -> ApiError {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<BodyTooSlow>() {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body arrived too slowly",
            );
        }
        if error.is::<http_body_util::LengthLimitError>() {
            return ApiError::payload_too_large(limit);
        }
        cause = error.source();
    }
    ApiError::bad_request(
        "incomplete_body",
        format!("the request body could not be read: {error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow_body() -> (Body, tokio::sync::mpsc::Sender<Bytes>) {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = futures_stream(move |cx| receiver.poll_recv(cx));
        (Body::new(stream), sender)
    }

    /// A body fed from a channel, one frame per message.
    fn futures_stream(
        poll: impl FnMut(&mut Context<'_>) -> Poll<Option<Bytes>> + Send + Unpin + 'static,
    ) -> impl HttpBody<Data = Bytes, Error = std::convert::Infallible> + Send + 'static {
        struct Channel<F>(F);
        impl<F: FnMut(&mut Context<'_>) -> Poll<Option<Bytes>> + Unpin> HttpBody for Channel<F> {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                (self.0)(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
            }
        }
        Channel(poll)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_below_the_minimum_rate_is_refused_after_the_grace() {
        let (body, sender) = slow_body();
        let leftover = Arc::new(Mutex::new(None));
        let paced = Body::new(Paced::new(body, 1024, leftover));
        let feeder = tokio::spawn(async move {
            loop {
                if sender.send(Bytes::from_static(b"x")).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        let started = Instant::now();
        let error = axum::body::to_bytes(paced, 1 << 20).await.unwrap_err();
        let answer = body_error(&error, 1 << 20);
        assert_eq!(answer.status, StatusCode::REQUEST_TIMEOUT);
        let took = started.elapsed();
        assert!(
            took >= BODY_GRACE && took < BODY_GRACE + Duration::from_secs(1),
            "{took:?}"
        );
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_by_the_reader_does_not_count_against_the_client() {
        let (body, sender) = slow_body();
        let mut paced = Paced::new(body, 1024, Arc::new(Mutex::new(None)));
        for _ in 0..4 {
            sender.send(Bytes::from_static(b"chunk")).await.unwrap();
            let frame = paced.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "chunk");
            // The handler works for longer than the grace between reads.
            tokio::time::sleep(BODY_GRACE * 2).await;
        }
        drop(sender);
        assert!(paced.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_body_dropped_unread_is_handed_back() {
        let (body, sender) = slow_body();
        let leftover = Arc::new(Mutex::new(None));
        drop(Paced::new(body, 1024, leftover.clone()));
        assert!(leftover.lock().unwrap().is_some());
        drop(sender);
        let empty = Arc::new(Mutex::new(None));
        drop(Paced::new(Body::empty(), 1024, empty.clone()));
        assert!(empty.lock().unwrap().is_none());
    }
}
