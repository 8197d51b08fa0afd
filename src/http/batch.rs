//! `POST /v1/messages/batch` (scope `messages:send`): one message to up to 10,000 recipients.
//!
//! Every recipient is parsed, decided, recorded and forwarded on its own, through the same
//! flow as a single send (`flow::send::process`): one recipient's refusal or failure never
//! stops the others. The answer streams back as NDJSON, one line per recipient in the order
//! given (`sent`, `scheduled`, `denied`, `failed` or `invalid`), then a summary line; up to
//! [`IN_FLIGHT`] recipients are decided at once, each in a task of its own that finishes even
//! if the client goes away.
//!
//! Resumable: with an `Idempotency-Key` on the batch, recipient *i* is sent under the key
//! `<batch key>#<i>` (or `<batch key>#<its idempotency_key>` when the line names one), claimed
//! and answered like a single send's. A retried batch replays the lines already done
//! (`"replayed": true`) and sends only the rest: nothing twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body as RequestBody;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::idempotency;
use super::messages::{SendRequest, canonical_message, parse_json, read_body, sender_bounds};
use crate::auth::scope;
use crate::config::Tenant;
use crate::flow::{self, send::Delivery, send::Processed};
use crate::policy::SenderBounds;
use crate::state::AppState;
use crate::store::Claimed;

/// Recipients a batch holds at most.
pub const MAX_RECIPIENTS: usize = 10_000;
/// The largest batch request, in bytes.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// The longest key of one recipient (its part of `<batch key>#<key>`).
const MAX_LINE_KEY: usize = 200;
/// Recipients decided at once.
const IN_FLIGHT: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    from: String,
    purpose: String,
    /// The text, with `{{name}}` placeholders filled from each recipient's `vars`; a
    /// recipient's own `body` replaces it.
    body: Option<String>,
    brand: Option<String>,
    campaign: Option<String>,
    /// When to send (RFC 3339); a recipient's own `send_at` replaces it.
    send_at: Option<String>,
    /// An MMS's media, for every recipient.
    #[serde(default)]
    media_urls: Vec<String>,
    recipients: Vec<Recipient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipient {
    to: String,
    body: Option<String>,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    idempotency_key: Option<String>,
    send_at: Option<String>,
}

/// What one line became, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent,
    Scheduled,
    Denied,
    Failed,
    Invalid,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Scheduled => "scheduled",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
            Outcome::Invalid => "invalid",
        }
    }

    fn of(line: &Value) -> Outcome {
        match line["status"].as_str() {
            Some("sent") => Outcome::Sent,
            Some("scheduled") => Outcome::Scheduled,
            Some("denied") => Outcome::Denied,
            Some("invalid") => Outcome::Invalid,
            _ => Outcome::Failed,
        }
    }
}

pub async fn send(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Response, ApiError> {
    let (principal, tenant) = state.authorize(&headers, scope::SEND)?;
    let batch_key = idempotency::key_of(&headers, &[])?;
    let bytes = read_body(&headers, body, MAX_BATCH_BYTES).await?;
    let BatchRequest {
        from,
        purpose,
        body,
        brand,
        campaign,
        send_at,
        media_urls,
        recipients,
    } = parse_json(&bytes)?;
    // A batch's own time is checked once: wrong, it would make every line wrong.
    if let Some(text) = &send_at {
        super::messages::send_at(
            text,
            state.clock.now(),
            jiff::SignedDuration::ZERO,
            "send_at",
        )?;
    }
    let count = recipients.len();
    if count == 0 || count > MAX_RECIPIENTS {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!("recipients: 1 to {MAX_RECIPIENTS}"),
        )
        .with("field", "recipients"));
    }
    let bounds = Arc::new(sender_bounds(&principal, tenant));
    let tenant = Arc::new(tenant.clone());
    let request = Arc::new(BatchFields {
        from,
        purpose,
        body,
        brand,
        campaign,
        send_at,
        media_urls,
        key: batch_key,
    });
    let lines = futures_util::stream::iter(recipients.into_iter().enumerate().map(
        move |(index, recipient)| {
            let (state, tenant, bounds, request) = (
                state.clone(),
                tenant.clone(),
                bounds.clone(),
                request.clone(),
            );
            // Each line runs to its end in a task of its own: a client that goes away
            // mid-batch stops the lines not yet begun, never one between its record and its
            // forward (a retry with the batch's key finds those done, the rest not begun).
            let task = tokio::spawn(async move {
                line(&state, &tenant, &bounds, &request, index, recipient).await
            });
            async move {
                task.await.unwrap_or_else(|error| {
                    tracing::error!(%error, index, "a batch line's task failed");
                    json!({
                        "index": index, "status": "failed",
                        "error": { "code": "internal_error", "message": "this line's task failed" },
                    })
                })
            }
        },
    ))
    .buffered(IN_FLIGHT);
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    let stream = lines
        .map(move |value| {
            *totals.entry(Outcome::of(&value).as_str()).or_default() += 1;
            let mut text = value.to_string();
            text.push('\n');
            (text, totals.clone())
        })
        .scan(count, move |remaining, (text, totals)| {
            *remaining -= 1;
            let mut out = text;
            if *remaining == 0 {
                let mut summary = json!({ "recipients": count });
                for outcome in ["sent", "scheduled", "denied", "failed", "invalid"] {
                    summary[outcome] = json!(totals.get(outcome).copied().unwrap_or(0));
                }
                out.push_str(&json!({ "summary": summary }).to_string());
                out.push('\n');
            }
            std::future::ready(Some(Ok::<_, std::convert::Infallible>(Bytes::from(out))))
        });
    let mut response = (StatusCode::OK, axum::body::Body::from_stream(stream)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// The batch's fields every line shares.
struct BatchFields {
    from: String,
    purpose: String,
    body: Option<String>,
    brand: Option<String>,
    campaign: Option<String>,
    send_at: Option<String>,
    media_urls: Vec<String>,
    /// The batch's `Idempotency-Key`.
    key: Option<String>,
}

/// Fills `{{name}}` placeholders from `vars`; a placeholder without a value is an error.
fn fill(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "an unclosed {{ in body".to_owned())?;
        let name = after[..end].trim();
        let value = vars
            .get(name)
            .ok_or_else(|| format!("no value for {{{{{name}}}}} in vars"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn invalid(index: usize, error: &ApiError) -> Value {
    let mut line = json!({
        "index": index,
        "status": "invalid",
        "error": { "code": error.code, "message": error.message },
    });
    if let Some(field) = error.details.get("field") {
        line["error"]["field"] = field.clone();
    }
    line
}

/// One recipient: parse, claim its key, process, keep its line.
async fn line(
    state: &AppState,
    tenant: &Tenant,
    bounds: &SenderBounds,
    request: &BatchFields,
    index: usize,
    recipient: Recipient,
) -> Value {
    let text = match recipient.body.as_deref().or(request.body.as_deref()) {
        Some(template) => match fill(template, &recipient.vars) {
            Ok(text) => text,
            Err(message) => {
                let error =
                    ApiError::bad_request("missing_variable", message).with("field", "vars");
                return invalid(index, &error);
            }
        },
        None => {
            let error = ApiError::bad_request("invalid_body", "body: none for this recipient")
                .with("field", "body");
            return invalid(index, &error);
        }
    };
    let send = SendRequest {
        to: recipient.to,
        from: request.from.clone(),
        body: text,
        purpose: request.purpose.clone(),
        brand: request.brand.clone(),
        campaign: request.campaign.clone(),
        send_at: recipient.send_at.or_else(|| request.send_at.clone()),
        media_urls: request.media_urls.clone(),
    };
    let fingerprint = idempotency::request_hash(&[
        b"POST /v1/messages/batch",
        send.to.as_bytes(),
        send.from.as_bytes(),
        send.purpose.as_bytes(),
        send.brand.as_deref().unwrap_or_default().as_bytes(),
        send.campaign.as_deref().unwrap_or_default().as_bytes(),
        send.body.as_bytes(),
        send.send_at.as_deref().unwrap_or_default().as_bytes(),
        send.media_urls.join("\n").as_bytes(),
    ]);
    let message = match canonical_message(state, send, tenant, state.clock.now()) {
        Ok(message) => message,
        Err(error) => return invalid(index, &error),
    };
    let recipient_hash = state.numbers.hash(&message.to);
    let to = message.to.masked();

    // The line's key, claimed before anything is decided.
    if let Some(own) = &recipient.idempotency_key
        && (own.is_empty()
            || own.len() > MAX_LINE_KEY
            || !own.bytes().all(|byte| (0x20..0x7f).contains(&byte)))
    {
        let error = ApiError::bad_request(
            "invalid_idempotency_key",
            format!("idempotency_key: 1 to {MAX_LINE_KEY} visible ASCII characters"),
        )
        .with("field", "idempotency_key");
        return invalid(index, &error);
    }
    let key = match (&request.key, recipient.idempotency_key) {
        (Some(batch), Some(own)) => Some(format!("{batch}#{own}")),
        (Some(batch), None) => Some(format!("{batch}#{index}")),
        (None, _) => None,
    };
    if let Some(key) = &key {
        match idempotency::claim(state, tenant, key.clone(), fingerprint).await {
            Ok((_, Claimed::Fresh)) => {}
            Ok((claim, Claimed::Answered(answer))) => {
                return match idempotency::open_answer(state, &claim, &answer).await {
                    Ok(bytes) => {
                        let mut line: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                        line["index"] = json!(index);
                        line["replayed"] = json!(true);
                        line
                    }
                    Err(error) => failed(index, &to, None, &error),
                };
            }
            Ok((_, Claimed::Mismatch)) => {
                let error = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this line's key was used for another message",
                );
                return invalid(index, &error);
            }
            Ok((_, Claimed::InUse { .. })) => {
                let error = ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_use",
                    "this line is being sent by another request (or was interrupted)",
                );
                return failed(index, &to, None, &error);
            }
            Err(error) => return failed(index, &to, None, &error),
        }
    }

    let processed = flow::send::process(state, tenant, bounds, message, Delivery::Upstream).await;
    let (line, nothing_sent) = match processed {
        Ok(Processed::Sent { id, receipt }) => (
            json!({ "index": index, "to": to, "status": "sent", "id": id, "upstream": receipt }),
            false,
        ),
        Ok(Processed::Answered { id, .. }) => (
            json!({ "index": index, "to": to, "status": "sent", "id": id }),
            false,
        ),
        Ok(Processed::Scheduled(deferral)) => (
            json!({
                "index": index, "to": to, "status": "scheduled", "id": deferral.message.id,
                "release_at": deferral.until.to_string(), "reasons": deferral.reasons,
            }),
            false,
        ),
        Ok(Processed::Requeued { id, until }) => (
            json!({
                "index": index, "to": to, "status": "scheduled", "id": id,
                "release_at": until.to_string(), "reasons": flow::send::throttled_reasons(until),
            }),
            false,
        ),
        Ok(Processed::Denied(denial)) => (
            json!({
                "index": index, "to": to, "status": "denied", "id": denial.message.id,
                "reasons": denial.reasons,
            }),
            false,
        ),
        Ok(Processed::Failed { id, error }) => (
            failed(index, &to, Some(id.as_str()), &ApiError::from(error)),
            false,
        ),
        Err(error) => (failed(index, &to, None, &ApiError::from(error)), true),
    };
    if let Some(key) = key {
        let kept = if nothing_sent {
            // Nothing was recorded or sent: the retry may run this line.
            state
                .idempotency_keys()
                .release_key(tenant.id.as_str(), &key)
                .await
                .map_err(|error| error.to_string())
        } else {
            idempotency::keep(
                state,
                tenant.id.as_str(),
                &key,
                200,
                "application/json".into(),
                line.to_string().as_bytes(),
                Some(recipient_hash),
            )
            .await
        };
        if let Err(error) = kept {
            tracing::error!(%error, "a batch line's idempotency key could not be kept");
        }
    }
    line
}

fn failed(index: usize, to: &str, id: Option<&str>, error: &ApiError) -> Value {
    json!({
        "index": index, "to": to, "status": "failed", "id": id,
        "error": { "code": error.code, "message": error.message },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_a_missing_one_is_refused() {
        let vars = BTreeMap::from([("name".to_owned(), "Ann".to_owned())]);
        assert_eq!(
            fill("Hi {{name}}, {{ name }}!", &vars).unwrap(),
            "Hi Ann, Ann!"
        );
        assert_eq!(fill("no placeholders", &vars).unwrap(), "no placeholders");
        assert!(fill("Hi {{who}}", &vars).unwrap_err().contains("{{who}}"));
        assert!(fill("Hi {{name", &vars).is_err());
    }
}
