//! `POST /v1/messages/batch` (scope `messages:send`): one message to up to 10,000 recipients.
//!
//! Every recipient is parsed, decided, recorded and forwarded on its own terms, through the
//! same flow as a single send: one recipient's refusal or failure never stops the others.
//! Recipients go through it in groups of [`GROUP`] (`flow::send::process_group`): a group's
//! facts are read in one read of the store and its records written in one write, so that a
//! batch is not [`GROUP`] times the cost of a send. The answer streams back as NDJSON, one line
//! per recipient in the order given (`sent`, `scheduled`, `denied`, `failed` or `invalid`),
//! then a summary line; [`GROUPS_IN_FLIGHT`] groups are under way at once (some decided while
//! others are written or forwarded), each in a task of its own that finishes even if the client
//! goes away.
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
use super::messages::{parse_json, read_body};
use crate::auth::scope;
use crate::config::Tenant;
use crate::flow::request::{SendRequest, canonical_message, sender_bounds};
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
/// Recipients decided together: their facts read in one read, their records in one write.
const GROUP: usize = 256;
/// Groups under way at once. With two, neither the group writer nor the request threads
/// were ever busy all the time (a paced batch of 40,000: 13,400 recipients a second); four
/// keep the writer fed (14,700; `bench/README.md`, "fifth pass"). On PostgreSQL each holds a
/// pool connection while it decides.
const GROUPS_IN_FLIGHT: usize = 4;

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
        crate::flow::request::send_at(
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
    let mut numbered = recipients.into_iter().enumerate();
    let groups = std::iter::from_fn(move || {
        let group: Vec<(usize, Recipient)> = numbered.by_ref().take(GROUP).collect();
        (!group.is_empty()).then_some(group)
    });
    let lines = futures_util::stream::iter(groups.map(move |group| {
        let (state, tenant, bounds, request) = (
            state.clone(),
            tenant.clone(),
            bounds.clone(),
            request.clone(),
        );
        let indexes: Vec<usize> = group.iter().map(|(index, _)| *index).collect();
        // Each group runs to its end in a task of its own: a client that goes away
        // mid-batch stops the groups not yet begun, never one between its records and its
        // forwards (a retry with the batch's key finds those done, the rest not begun).
        let task =
            tokio::spawn(async move { lines(&state, &tenant, &bounds, &request, group).await });
        async move {
            task.await.unwrap_or_else(|error| {
                tracing::error!(%error, "a batch group's task failed");
                indexes
                    .into_iter()
                    .map(|index| {
                        json!({
                            "index": index, "status": "failed",
                            "error": { "code": "internal_error", "message": "this line's task failed" },
                        })
                    })
                    .collect()
            })
        }
    }))
    .buffered(GROUPS_IN_FLIGHT)
    .flat_map(futures_util::stream::iter);
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

/// A recipient parsed and its key named, ready to be decided.
struct Ready {
    index: usize,
    message: crate::domain::CanonicalMessage,
    to: String,
    recipient_hash: String,
    /// The line's idempotency key, and the fingerprint of what it sends.
    key: Option<(String, Vec<u8>)>,
}

/// A group of recipients: parse each, claim their keys, decide and send those still to do
/// together, keep their lines. One line per recipient, in order.
async fn lines(
    state: &AppState,
    tenant: &Tenant,
    bounds: &SenderBounds,
    request: &BatchFields,
    group: Vec<(usize, Recipient)>,
) -> Vec<Value> {
    let mut done: Vec<(usize, Value)> = Vec::with_capacity(group.len());
    let mut ready = Vec::with_capacity(group.len());
    for (index, recipient) in group {
        match prepare(state, tenant, request, index, recipient) {
            Ok(line) => ready.push(line),
            Err(line) => done.push((index, line)),
        }
    }
    // The lines' keys, claimed before anything is decided (their writes share commits).
    let claims = futures_util::future::join_all(ready.into_iter().map(|line| async move {
        let Some((key, fingerprint)) = &line.key else {
            return Ok(line);
        };
        match idempotency::claim(state, tenant, key.clone(), fingerprint.clone()).await {
            Ok((_, Claimed::Fresh)) => Ok(line),
            Ok((claim, Claimed::Answered(answer))) => Err((
                line.index,
                match idempotency::open_answer(state, &claim, &answer).await {
                    Ok(bytes) => {
                        let mut replayed: Value =
                            serde_json::from_slice(&bytes).unwrap_or_default();
                        replayed["index"] = json!(line.index);
                        replayed["replayed"] = json!(true);
                        replayed
                    }
                    Err(error) => failed(line.index, &line.to, None, &error),
                },
            )),
            Ok((_, Claimed::Mismatch)) => {
                let error = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this line's key was used for another message",
                );
                Err((line.index, invalid(line.index, &error)))
            }
            Ok((_, Claimed::InUse { .. })) => {
                let error = ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_use",
                    "this line is being sent by another request (or was interrupted)",
                );
                Err((line.index, failed(line.index, &line.to, None, &error)))
            }
            Err(error) => Err((line.index, failed(line.index, &line.to, None, &error))),
        }
    }))
    .await;
    let mut to_send = Vec::with_capacity(claims.len());
    for claim in claims {
        match claim {
            Ok(line) => to_send.push(line),
            Err(answered) => done.push(answered),
        }
    }
    let (messages, sending): (Vec<_>, Vec<_>) = to_send
        .into_iter()
        .map(|line| {
            let Ready {
                index,
                message,
                to,
                recipient_hash,
                key,
            } = line;
            (message, (index, to, recipient_hash, key))
        })
        .unzip();
    let processed =
        flow::send::process_group(state, tenant, bounds, messages, Delivery::Upstream).await;
    let kept = futures_util::future::join_all(sending.into_iter().zip(processed).map(
        |((index, to, recipient_hash, key), processed)| async move {
            let (line, nothing_sent) = answer(index, &to, processed);
            if let Some((key, _)) = key {
                keep(state, tenant, &key, &line, nothing_sent, recipient_hash).await;
            }
            (index, line)
        },
    ))
    .await;
    done.extend(kept);
    done.sort_unstable_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, line)| line).collect()
}

/// Parses one recipient into its message and names its key; or its `invalid` line.
fn prepare(
    state: &AppState,
    tenant: &Tenant,
    request: &BatchFields,
    index: usize,
    recipient: Recipient,
) -> Result<Ready, Value> {
    let text = match recipient.body.as_deref().or(request.body.as_deref()) {
        Some(template) => fill(template, &recipient.vars).map_err(|message| {
            let error = ApiError::bad_request("missing_variable", message).with("field", "vars");
            invalid(index, &error)
        })?,
        None => {
            let error = ApiError::bad_request("invalid_body", "body: none for this recipient")
                .with("field", "body");
            return Err(invalid(index, &error));
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
    let message = canonical_message(state, send, tenant, state.clock.now())
        .map_err(|error| invalid(index, &error.into()))?;
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
        return Err(invalid(index, &error));
    }
    let key = match (&request.key, recipient.idempotency_key) {
        (Some(batch), Some(own)) => Some(format!("{batch}#{own}")),
        (Some(batch), None) => Some(format!("{batch}#{index}")),
        (None, _) => None,
    };
    Ok(Ready {
        index,
        recipient_hash: state.numbers.hash(&message.to),
        to: message.to.masked(),
        message,
        key: key.map(|key| (key, fingerprint)),
    })
}

/// A recipient's line from what the flow made of it, and whether nothing was recorded or sent
/// (its key is then given up, so that a retry runs it).
fn answer(index: usize, to: &str, processed: Result<Processed, flow::FlowError>) -> (Value, bool) {
    match processed {
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
            failed(index, to, Some(id.as_str()), &ApiError::from(error)),
            false,
        ),
        Err(error) => (failed(index, to, None, &ApiError::from(error)), true),
    }
}

/// Keeps a line under its key, or gives the key up when nothing was recorded or sent.
async fn keep(
    state: &AppState,
    tenant: &Tenant,
    key: &str,
    line: &Value,
    nothing_sent: bool,
    recipient_hash: String,
) {
    let kept = if nothing_sent {
        // Nothing was recorded or sent: the retry may run this line.
        state
            .idempotency_keys()
            .release_key(tenant.id.as_str(), key)
            .await
            .map_err(|error| error.to_string())
    } else {
        idempotency::keep(
            state,
            tenant.id.as_str(),
            key,
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
