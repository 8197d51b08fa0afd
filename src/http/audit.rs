//! The audit API (scope `audit:read`; `audit:decrypt` for bodies), per tenant, and erasure
//! (scope `admin`).
//!
//! Lists follow the verifiable log: rows appear once sequenced, in log order, and the cursor is
//! the `leaf_index` of the last row received (`after`), so paging neither skips nor repeats
//! while new rows arrive. Lists stream in pages with bounded memory, up to the log's size when
//! the request began.
//!
//! Of the store it uses the [`AuditLog`] part (erasure included), and the [`Inbound`] part
//! for a number's replies.
//!
//! [`Inbound`]: crate::store::Inbound

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::body::Frame;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{Path, Query};
use crate::audit::leaf::{self, BodyAccess, Erasure, Kind};
use crate::audit::merkle::{self, Hash, NodeId};
use crate::auth::scope;
use crate::config::Tenant;
use crate::crypto::{Sealed, hex};
use crate::domain::PhoneNumber;
use crate::state::AppState;
use crate::store::{AuditFilter, AuditLog, AuditedConsent, AuditedMessage};

/// Rows read per query while streaming.
const PAGE: i64 = 500;
/// Rows a bundle holds at most per kind.
const BUNDLE_LIMIT: i64 = crate::audit::verify::BUNDLE_LIMIT as i64;

/// What a bundle cannot prove about a number: kept, but not leaves of the log.
const NOT_IN_THE_LOG: [&str; 5] = [
    "pending: leaves not yet given an index by the sequencer (a second or so after they are written) are in a later bundle",
    "before chains: outcomes, releases, replies and review resolutions recorded before consentry 0.14 (migration 0014) are not leaves; leaves logged before it carry no link, so only the newest of them is proven to be there (the first linked leaf names it)",
    "reviews: that a reply was held for review (the reply is a leaf, and so is the review's resolution)",
    "a message's `outcome` field: a copy of the status of its newest outcome, which is a leaf of its own among other_leaves",
    "reads of bodies: each is a leaf among other_leaves, but not a link of the number's chain (it names a message, not a number), so only `audit verify` of the whole log shows that none was removed",
];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn time(us: i64) -> String {
    Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The query of both lists.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// A phone number (E.164, or national in the tenant's region).
    number: Option<String>,
    /// RFC 3339; inclusive.
    from: Option<String>,
    /// RFC 3339; exclusive.
    to: Option<String>,
    /// Messages: `allowed`, `denied`, `deferred`.
    decision: Option<String>,
    /// Consent events: `opt_in`, `opt_out`.
    action: Option<String>,
    /// The cursor: the `leaf_index` of the last row already received.
    after: Option<i64>,
    /// At most this many rows (default: every row up to the log's size at the request).
    limit: Option<i64>,
    /// `ndjson` (default) or `csv`.
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Ndjson,
    Csv,
}

fn bad(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_query", message).with("field", field)
}

/// An RFC 3339 instant of the query, in microseconds.
fn instant(field: &'static str, text: &str) -> Result<i64, ApiError> {
    crate::rfc3339::parse(text)
        .map(|t| t.as_microsecond())
        .map_err(|e| bad(field, format!("{field}: not an RFC 3339 instant: {e}")))
}

fn parse_number(tenant: &Tenant, number: &str) -> Result<PhoneNumber, ApiError> {
    PhoneNumber::parse(number, tenant.default_region).map_err(|e| {
        ApiError::bad_request("invalid_number", format!("number: {e}")).with("field", "number")
    })
}

impl ListQuery {
    fn format(&self) -> Result<Format, ApiError> {
        if self.limit.is_some_and(|limit| limit < 1) {
            return Err(bad("limit", "limit must be at least 1"));
        }
        if self.after.is_some_and(|after| after < -1) {
            return Err(bad("after", "after is a leaf index (or -1 for the start)"));
        }
        match self.format.as_deref() {
            None | Some("ndjson") => Ok(Format::Ndjson),
            Some("csv") => Ok(Format::Csv),
            Some(other) => Err(bad(
                "format",
                format!("unknown format {other:?} (ndjson, csv)"),
            )),
        }
    }

    fn filter(
        &self,
        state: &AppState,
        tenant: &Tenant,
        kind: Kind,
    ) -> Result<AuditFilter, ApiError> {
        let instant = |field: &'static str, text: &Option<String>| {
            text.as_deref().map(|text| instant(field, text)).transpose()
        };
        let decision = match (kind, &self.decision, &self.action) {
            (Kind::Message, Some(decision), None) => {
                if !["allowed", "denied", "deferred"].contains(&decision.as_str()) {
                    return Err(bad("decision", "decision: allowed, denied or deferred"));
                }
                Some(decision.clone())
            }
            (Kind::ConsentEvent, None, Some(action)) => {
                if !["opt_in", "opt_out"].contains(&action.as_str()) {
                    return Err(bad("action", "action: opt_in or opt_out"));
                }
                Some(action.clone())
            }
            (_, None, None) => None,
            (Kind::Message, _, Some(_)) => {
                return Err(bad("action", "messages are filtered by decision"));
            }
            _ => return Err(bad("decision", "consent events are filtered by action")),
        };
        Ok(AuditFilter {
            recipient_hash: self
                .number
                .as_deref()
                .map(|number| parse_number(tenant, number).map(|n| state.numbers.hash(&n)))
                .transpose()?,
            from_us: instant("from", &self.from)?,
            to_us: instant("to", &self.to)?,
            decision,
        })
    }
}

/// A message record as auditors read it: its fields, its leaf and where it is in the log.
fn message_json(item: &AuditedMessage) -> Value {
    let record = &item.record;
    let leaf = leaf::message(record, item.link);
    json!({
        "leaf_index": item.leaf_index,
        "id": record.id.as_str(),
        "created_at": time(record.created_at_us),
        "created_at_us": record.created_at_us,
        "recipient": record.recipient_masked,
        "recipient_hash": record.recipient_hash,
        "sender": record.sender_masked,
        "purpose": record.purpose,
        "brand": record.brand,
        "campaign": record.campaign,
        "decision": record.decision.as_str(),
        "reasons": serde_json::from_str::<Value>(&record.reasons_json).unwrap_or(Value::Null),
        "reply_kind": record.reply_kind,
        "confirms_event": record.confirms_event,
        "upstream": record.upstream,
        "outcome": item.outcome,
        "key_id": record.key_id,
        "basis": record.basis,
        "leaf_hash": hex(&leaf.hash()),
        "leaf": b64(&leaf.bytes),
    })
}

fn consent_json(item: &AuditedConsent) -> Value {
    let record = &item.record;
    let leaf = leaf::consent_event(record, item.link);
    json!({
        "leaf_index": item.leaf_index,
        "id": record.id,
        "occurred_at": time(record.occurred_at_us),
        "recorded_at": time(record.recorded_at_us),
        "recipient": record.recipient_masked,
        "recipient_hash": record.recipient_hash,
        "action": record.action.as_str(),
        "level": record.level.map(|level| level.as_str()),
        "brand": record.brand,
        "campaign": record.campaign,
        "purposes": record.purposes.split_whitespace().collect::<Vec<_>>(),
        "method": record.method,
        "recorded_by": record.recorded_by,
        "external_id": record.external_id,
        "key_id": record.key_id,
        "leaf_hash": hex(&leaf.hash()),
        "leaf": b64(&leaf.bytes),
    })
}

const MESSAGE_CSV: [&str; 14] = [
    "leaf_index",
    "id",
    "created_at",
    "recipient",
    "recipient_hash",
    "sender",
    "purpose",
    "brand",
    "campaign",
    "decision",
    "reason_codes",
    "outcome",
    "reply_kind",
    "leaf_hash",
];

fn message_csv(item: &AuditedMessage) -> Vec<String> {
    let record = &item.record;
    let reasons: Value = serde_json::from_str(&record.reasons_json).unwrap_or(Value::Null);
    let codes: Vec<&str> = reasons
        .as_array()
        .map(|reasons| reasons.iter().filter_map(|r| r["code"].as_str()).collect())
        .unwrap_or_default();
    vec![
        item.leaf_index.to_string(),
        record.id.as_str().to_owned(),
        time(record.created_at_us),
        record.recipient_masked.clone(),
        record.recipient_hash.clone(),
        record.sender_masked.clone(),
        record.purpose.to_owned(),
        record.brand.clone().unwrap_or_default(),
        record.campaign.clone().unwrap_or_default(),
        record.decision.as_str().to_owned(),
        codes.join(" "),
        item.outcome.clone().unwrap_or_default(),
        record.reply_kind.unwrap_or_default().to_owned(),
        hex(&leaf::message(record, item.link).hash()),
    ]
}

const CONSENT_CSV: [&str; 13] = [
    "leaf_index",
    "id",
    "occurred_at",
    "recorded_at",
    "recipient",
    "recipient_hash",
    "action",
    "level",
    "brand",
    "campaign",
    "purposes",
    "method",
    "leaf_hash",
];

fn consent_csv(item: &AuditedConsent) -> Vec<String> {
    let record = &item.record;
    vec![
        item.leaf_index.to_string(),
        record.id.clone(),
        time(record.occurred_at_us),
        time(record.recorded_at_us),
        record.recipient_masked.clone(),
        record.recipient_hash.clone(),
        record.action.as_str().to_owned(),
        record
            .level
            .map(|level| level.as_str())
            .unwrap_or_default()
            .to_owned(),
        record.brand.clone().unwrap_or_default(),
        record.campaign.clone().unwrap_or_default(),
        record.purposes.clone(),
        record.method.clone(),
        hex(&leaf::consent_event(record, item.link).hash()),
    ]
}

/// One CSV line (RFC 4180): fields with a comma, quote or line break are quoted, quotes doubled.
fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = String::new();
    for (i, field) in fields.iter().enumerate() {
        let field = field.as_ref();
        if i > 0 {
            line.push(',');
        }
        if field.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&field.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(field);
        }
    }
    line.push_str("\r\n");
    line
}

/// A response body fed page by page from a bounded channel: memory stays constant however
/// many rows are streamed.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }
}

fn streamed(
    format: Format,
    receiver: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> Response {
    let content_type = match format {
        Format::Ndjson => "application/x-ndjson",
        Format::Csv => "text/csv; charset=utf-8",
    };
    let mut response = axum::body::Body::new(ChannelBody(receiver)).into_response();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

/// How a list's rows are written.
struct Shape<T> {
    csv_header: &'static [&'static str],
    json: fn(&T) -> Value,
    csv: fn(&T) -> Vec<String>,
    leaf_index: fn(&T) -> i64,
}

/// Streams pages read by `page(after, limit)` until the query's limit, the log's size at the
/// request (`upto`), or the end.
fn stream_pages<T, F, Fut>(
    format: Format,
    query: &ListQuery,
    upto: i64,
    shape: Shape<T>,
    page: F,
) -> Response
where
    T: Send + 'static,
    F: Fn(i64, i64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<T>, crate::store::StoreError>> + Send,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    let mut after = query.after.unwrap_or(-1);
    let mut left = query.limit.unwrap_or(i64::MAX);
    tokio::spawn(async move {
        if format == Format::Csv
            && sender
                .send(Ok(Bytes::from(csv_line(shape.csv_header))))
                .await
                .is_err()
        {
            return;
        }
        while left > 0 {
            let rows = match page(after, PAGE.min(left)).await {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::error!(%error, "an audit export failed part way");
                    // Ends the body with an error: the client sees a truncated transfer, never
                    // a list that looks complete.
                    let _ = sender.send(Err(std::io::Error::other("store error"))).await;
                    return;
                }
            };
            let mut chunk = String::new();
            let mut done = rows.len() < PAGE.min(left) as usize;
            for row in &rows {
                let index = (shape.leaf_index)(row);
                if index >= upto {
                    done = true;
                    break;
                }
                after = index;
                left -= 1;
                match format {
                    Format::Ndjson => {
                        chunk.push_str(&(shape.json)(row).to_string());
                        chunk.push('\n');
                    }
                    Format::Csv => chunk.push_str(&csv_line(&(shape.csv)(row))),
                }
            }
            if !chunk.is_empty() && sender.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            if done {
                return;
            }
        }
    });
    streamed(format, receiver)
}

/// `GET /v1/audit/messages`
pub async fn messages(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Query<ListQuery>,
) -> Result<Response, ApiError> {
    let (_principal, tenant) = state.authorize(&headers, scope::AUDIT_READ)?;
    let query = query.get()?;
    let format = query.format()?;
    let filter = query.filter(&state, tenant, Kind::Message)?;
    let upto = state.audit_log().log_size().await? as i64;
    let tenant_id = tenant.id.clone();
    let store: Arc<dyn AuditLog> = state.store.clone();
    let shape = Shape {
        csv_header: &MESSAGE_CSV,
        json: message_json,
        csv: message_csv,
        leaf_index: |item| item.leaf_index,
    };
    Ok(stream_pages(
        format,
        &query,
        upto,
        shape,
        move |after, limit| {
            let (store, tenant_id, filter) = (store.clone(), tenant_id.clone(), filter.clone());
            async move {
                store
                    .audit_messages(&tenant_id, &filter, after, limit)
                    .await
            }
        },
    ))
}

/// `GET /v1/audit/consent-events`
pub async fn consent_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Query<ListQuery>,
) -> Result<Response, ApiError> {
    let (_principal, tenant) = state.authorize(&headers, scope::AUDIT_READ)?;
    let query = query.get()?;
    let format = query.format()?;
    let filter = query.filter(&state, tenant, Kind::ConsentEvent)?;
    let upto = state.audit_log().log_size().await? as i64;
    let tenant_id = tenant.id.clone();
    let store: Arc<dyn AuditLog> = state.store.clone();
    let shape = Shape {
        csv_header: &CONSENT_CSV,
        json: consent_json,
        csv: consent_csv,
        leaf_index: |item| item.leaf_index,
    };
    Ok(stream_pages(
        format,
        &query,
        upto,
        shape,
        move |after, limit| {
            let (store, tenant_id, filter) = (store.clone(), tenant_id.clone(), filter.clone());
            async move {
                store
                    .audit_consents(&tenant_id, &filter, after, limit)
                    .await
            }
        },
    ))
}

/// `GET /v1/audit/messages/{id}/body` (scope `audit:decrypt`): the body, once the access is
/// recorded in the log.
pub async fn message_body(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    id: Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (principal, tenant) = state.authorize(&headers, scope::AUDIT_DECRYPT)?;
    let id = id.get()?;
    let record = state
        .audit_log()
        .audited_message(&tenant.id, &id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "message_not_found",
                "no such message",
            )
        })?;
    let now = state.clock.now();
    let access = BodyAccess {
        id: format!("acc_{}", uuid::Uuid::now_v7().simple()),
        tenant: tenant.id.as_str().to_owned(),
        subject: principal.subject.clone(),
        message_id: record.id.as_str().to_owned(),
        accessed_at_us: now.as_microsecond(),
    };
    // Recorded first: no body leaves without its access in the log.
    state.audit_log().record_body_access(&access).await?;
    let associated = format!("consentry/message/v1\0{}\0{}", record.tenant, record.id);
    let sealed = Sealed {
        key_id: record.key_id.clone(),
        bytes: record.payload.clone(),
    };
    let payload: Value = match state.keys.open(associated.as_bytes(), &sealed).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| unreadable())?,
        Err(crate::keyring::KeyError::Crypto(crate::crypto::CryptoError::Erased(_))) => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "body_erased",
                "the recipient's data was erased: this body can no longer be decrypted",
            )
            .with("access_id", access.id));
        }
        Err(error) => {
            tracing::error!(message_id = %record.id, %error, "a message body does not decrypt");
            return Err(unreadable());
        }
    };
    Ok(Json(json!({
        "id": record.id.as_str(),
        "to": payload["to"],
        "from": payload["from"],
        "body": payload["body"],
        "access_id": access.id,
        "accessed_at": now.to_string(),
        "accessed_by": principal.subject,
    })))
}

fn unreadable() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "body_undecryptable",
        "the body does not decrypt: wrong key, or the stored row was altered",
    )
}

/// `GET /v1/audit/checkpoints/latest`
pub async fn latest_checkpoint(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.authorize(&headers, scope::AUDIT_READ)?;
    let checkpoint = state
        .audit_log()
        .latest_checkpoint()
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_checkpoint",
                "no checkpoint has been signed yet",
            )
        })?;
    let mut view =
        serde_json::to_value(checkpoint_view(&state, checkpoint).await?).unwrap_or_default();
    view["public_key"] = Value::String(b64(state.log_signer.public_key()));
    Ok(Json(view))
}

/// The checkpoint a bundle is proven under: with witnesses configured, the newest one every
/// one of them cosigned (so that it verifies under a witness policy; rows after it are marked
/// as not covered yet), else, or before any is, the latest.
async fn bundle_checkpoint(
    state: &AppState,
) -> Result<Option<crate::audit::checkpoint::Checkpoint>, ApiError> {
    let log = state.audit_log();
    if !state.witnesses.is_empty()
        && let Some(size) = log.latest_cosigned_by(state.witnesses.len() as i64).await?
        && let Some(checkpoint) = log.checkpoint(size as i64).await?
    {
        return Ok(Some(checkpoint));
    }
    Ok(log.latest_checkpoint().await?)
}

/// A checkpoint as shown, with the cosignatures gathered for it.
async fn checkpoint_view(
    state: &AppState,
    checkpoint: crate::audit::checkpoint::Checkpoint,
) -> Result<crate::audit::checkpoint::CheckpointView, ApiError> {
    let mut checkpoints = [checkpoint];
    crate::audit::with_cosignatures(state.audit_log(), &mut checkpoints).await?;
    Ok(checkpoints[0].view(state.log_signer.origin()))
}

/// Computes a proof from the stored subtrees it needs.
async fn with_nodes<T>(
    state: &AppState,
    compute: impl Fn(&mut dyn FnMut(NodeId) -> Hash) -> T,
) -> Result<T, ApiError> {
    Ok(crate::audit::with_nodes(state.audit_log(), compute).await?)
}

/// The tree size a proof is asked against: given (in the query parameter `field`), or the
/// latest checkpoint's.
async fn tree_size(
    state: &AppState,
    given: Option<u64>,
    field: &'static str,
) -> Result<u64, ApiError> {
    let size = match given {
        Some(size) => size,
        None => state
            .audit_log()
            .latest_checkpoint()
            .await?
            .map(|c| c.tree_size)
            .ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, "no_checkpoint", "no checkpoint yet")
            })?,
    };
    if size > state.audit_log().log_size().await? {
        return Err(bad(field, "the log is not that large yet"));
    }
    Ok(size)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    leaf_index: u64,
    tree_size: Option<u64>,
}

/// `GET /v1/audit/proofs/inclusion?leaf_index=&tree_size=` (the tree size defaults to the
/// latest checkpoint's). Only for the caller's own leaves.
pub async fn inclusion(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Query<InclusionQuery>,
) -> Result<Json<Value>, ApiError> {
    let (_principal, tenant) = state.authorize(&headers, scope::AUDIT_READ)?;
    let query = query.get()?;
    let size = tree_size(&state, query.tree_size, "tree_size").await?;
    if query.leaf_index >= size {
        return Err(bad("leaf_index", "the leaf is not in a tree of that size"));
    }
    let entry = state
        .audit_log()
        .log_entries(query.leaf_index as i64 - 1, 1)
        .await?
        .into_iter()
        .next()
        .filter(|entry| entry.tenant == tenant.id.as_str())
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "leaf_not_found", "no such leaf"))?;
    let index = query.leaf_index;
    let proof = with_nodes(&state, |get| {
        merkle::inclusion_proof(index, size, &mut |id| get(id))
    })
    .await?;
    Ok(Json(json!({
        "leaf_index": index,
        "tree_size": size,
        "kind": entry.kind.as_str(),
        "id": entry.ref_id,
        "leaf_hash": hex(&entry.leaf_hash),
        "proof": proof.iter().map(|h| hex(h)).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    from: u64,
    to: Option<u64>,
}

/// `GET /v1/audit/proofs/consistency?from=&to=` (`to` defaults to the latest checkpoint's size).
pub async fn consistency(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Query<ConsistencyQuery>,
) -> Result<Json<Value>, ApiError> {
    state.authorize(&headers, scope::AUDIT_READ)?;
    let query = query.get()?;
    let to = tree_size(&state, query.to, "to").await?;
    if query.from > to {
        return Err(bad("from", "from must not be larger than to"));
    }
    let from = query.from;
    let proof = with_nodes(&state, |get| {
        merkle::consistency_proof(from, to, &mut |id| get(id))
    })
    .await?;
    let roots = with_nodes(&state, |get| {
        (
            merkle::root_of(from, &mut |id| get(id)),
            merkle::root_of(to, &mut |id| get(id)),
        )
    })
    .await?;
    Ok(Json(json!({
        "from": from,
        "to": to,
        "from_root": hex(&roots.0),
        "to_root": hex(&roots.1),
        "proof": proof.iter().map(|h| hex(h)).collect::<Vec<_>>(),
    })))
}

/// `GET /v1/audit/numbers/{number}/bundle`: everything about one number in one document, with
/// the proofs that each row is in the log under the latest checkpoint.
pub async fn bundle(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    number: Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_principal, tenant) = state.authorize(&headers, scope::AUDIT_READ)?;
    let number = number.get()?;
    let number = parse_number(tenant, &number)?;
    let filter = AuditFilter {
        recipient_hash: Some(state.numbers.hash(&number)),
        ..AuditFilter::default()
    };
    let checkpoint = bundle_checkpoint(&state).await?;
    let size = checkpoint.as_ref().map_or(0, |c| c.tree_size);
    // The lists are read one after the other while the sequencer goes on: each holds only
    // leaves indexed before this size, read first, so that together they are the number's
    // leaves of one prefix of the log (a leaf indexed between two reads would otherwise be in
    // one list and its predecessor missing from another, and the chain would break).
    let ceiling = state.audit_log().log_size().await? as i64;
    let mut consents = state
        .audit_log()
        .audit_consents(&tenant.id, &filter, -1, BUNDLE_LIMIT)
        .await?;
    let mut messages = state
        .audit_log()
        .audit_messages(&tenant.id, &filter, -1, BUNDLE_LIMIT)
        .await?;
    let recipient_hash = filter.recipient_hash.as_deref().unwrap_or_default();
    let mut others = state
        .audit_log()
        .number_other_leaves(&tenant.id, recipient_hash, BUNDLE_LIMIT)
        .await?;
    // More rows than a bundle holds: the lists, filtered by number, page through the rest.
    let truncated = [consents.len(), messages.len(), others.len()]
        .iter()
        .any(|&rows| rows as i64 == BUNDLE_LIMIT);
    consents.retain(|item| item.leaf_index < ceiling);
    messages.retain(|item| item.leaf_index < ceiling);
    others.retain(|(_, _, index)| *index < ceiling);
    let proof = |index: i64| {
        let index = index as u64;
        let state = state.clone();
        async move {
            if index >= size {
                // Sequenced after the latest checkpoint: provable at the next one.
                return Ok::<Value, ApiError>(Value::Null);
            }
            let path = with_nodes(&state, |get| {
                merkle::inclusion_proof(index, size, &mut |id| get(id))
            })
            .await?;
            Ok(Value::Array(
                path.iter().map(|h| Value::String(hex(h))).collect(),
            ))
        }
    };
    let mut consent_rows = Vec::with_capacity(consents.len());
    for item in &consents {
        let mut row = consent_json(item);
        row["inclusion_proof"] = proof(item.leaf_index).await?;
        consent_rows.push(row);
    }
    let mut message_rows = Vec::with_capacity(messages.len());
    for item in &messages {
        let mut row = message_json(item);
        row["inclusion_proof"] = proof(item.leaf_index).await?;
        message_rows.push(row);
    }
    let mut other_rows = Vec::with_capacity(others.len());
    for (kind, id, index) in &others {
        let leaf = state.audit_log().leaf_of(*kind, id).await?.ok_or_else(|| {
            crate::store::StoreError::Corrupt(format!(
                "the {} {id} of leaf {index} is gone",
                kind.as_str()
            ))
        })?;
        other_rows.push(json!({
            "leaf_index": index,
            "kind": kind.as_str(),
            "id": id,
            "leaf_hash": hex(&leaf.hash()),
            "leaf": b64(&leaf.bytes),
            "inclusion_proof": proof(*index).await?,
        }));
    }
    let checkpoint = match checkpoint {
        Some(checkpoint) => {
            let mut view = serde_json::to_value(checkpoint_view(&state, checkpoint).await?)
                .unwrap_or_default();
            view["public_key"] = Value::String(b64(state.log_signer.public_key()));
            Some(view)
        }
        None => None,
    };
    Ok(Json(json!({
        "number": number.e164(),
        "recipient_hash": filter.recipient_hash,
        "tenant": tenant.id,
        // More rows than a bundle holds: the lists, filtered by number, page through the rest.
        "truncated": truncated,
        "checkpoint": checkpoint,
        "consent_events": consent_rows,
        "messages": message_rows,
        "other_leaves": other_rows,
        // Shown or kept about the number, but not leaves of the log: nothing proves them.
        "not_in_the_log": NOT_IN_THE_LOG,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    number: String,
}

/// `POST /v1/erasure` (scope `admin`): destroys the keys of a number's bodies and replies in
/// the caller's tenant. What is erased and what is kept: docs/operators.md, "Erasure".
pub async fn erase(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (principal, tenant) = state.authorize(&headers, scope::ADMIN)?;
    let body = super::messages::read_body(&headers, body, state.max_request_bytes).await?;
    let request: ErasureRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("expected {{\"number\": ...}}: {e}"),
        )
    })?;
    let number = parse_number(tenant, &request.number)?;
    let now = state.clock.now();
    let erasure = Erasure {
        id: format!("era_{}", uuid::Uuid::now_v7().simple()),
        tenant: tenant.id.as_str().to_owned(),
        recipient_hash: state.numbers.hash(&number),
        erased_at_us: now.as_microsecond(),
        erased_by: principal.subject.clone(),
        keys_destroyed: 0,
    };
    let destroyed = state.audit_log().erase_recipient(&erasure).await?;
    state
        .upstreams
        .sandbox()
        .forget(&tenant.id, |to| to == number.e164());
    tracing::info!(erasure = %erasure.id, tenant = %tenant.id, number = %number.masked(), destroyed, "recipient erased");
    Ok((
        StatusCode::OK,
        Json(json!({
            "id": erasure.id,
            "number": number.masked(),
            "recipient_hash": erasure.recipient_hash,
            "keys_destroyed": destroyed,
            "erased_at": now.to_string(),
        })),
    ))
}

/// Replies a number list at most.
const REPLIES_LIMIT: i64 = 500;

/// `GET /v1/audit/numbers/{number}/replies`: what a number replied, newest first: the keyword
/// class each was taken for and the consent event it recorded, never its text.
pub async fn replies(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    number: Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_principal, tenant) = state.authorize(&headers, scope::AUDIT_READ)?;
    let number = parse_number(tenant, &number.get()?)?;
    let replies = state
        .inbound()
        .replies(&tenant.id, &state.numbers.hash(&number), REPLIES_LIMIT)
        .await?;
    let replies: Vec<Value> = replies
        .iter()
        .map(|reply| {
            let mut row = serde_json::to_value(reply).unwrap_or_default();
            row["received_at"] = Value::String(time(reply.received_at_us));
            row
        })
        .collect();
    Ok(Json(json!({ "number": number.e164(), "replies": replies })))
}

/// The query of `GET /v1/audit/decisions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionsQuery {
    /// RFC 3339, inclusive; default: 24 spans before `to`.
    from: Option<String>,
    /// RFC 3339, exclusive; default: now.
    to: Option<String>,
    /// `hour` (default) or `day`.
    bucket: Option<String>,
}

/// Spans a chart of decisions holds at most (a month of hours).
const MAX_SPANS: i64 = 744;

/// `GET /v1/audit/decisions`: how many of the tenant's messages got each decision, by headline
/// reason, hour by hour (or day by day). It reads every message of the window.
pub async fn decisions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Query<DecisionsQuery>,
) -> Result<Json<Value>, ApiError> {
    let (_principal, tenant) = state.authorize(&headers, scope::AUDIT_READ)?;
    let query = query.get()?;
    let (bucket, span_us) = match query.bucket.as_deref() {
        None | Some("hour") => ("hour", 3_600_000_000_i64),
        Some("day") => ("day", 86_400_000_000_i64),
        Some(other) => {
            return Err(bad(
                "bucket",
                format!("unknown bucket {other:?} (hour, day)"),
            ));
        }
    };
    let to_us = match &query.to {
        Some(text) => instant("to", text)?,
        None => state.clock.now().as_microsecond(),
    };
    let from_us = match &query.from {
        Some(text) => instant("from", text)?,
        None => to_us.saturating_sub(24 * span_us),
    };
    if from_us >= to_us {
        return Err(bad("from", "from must be before to"));
    }
    if (to_us - from_us + span_us - 1) / span_us > MAX_SPANS {
        return Err(bad(
            "from",
            format!("at most {MAX_SPANS} spans of a {bucket} at once"),
        ));
    }
    let counts = state
        .audit_log()
        .decision_counts(&tenant.id, from_us, to_us, span_us)
        .await?;
    let counts: Vec<Value> = counts
        .iter()
        .map(|count| {
            json!({
                "start": time(count.bucket_us),
                "decision": count.decision,
                "reason": count.reason,
                "count": count.count,
            })
        })
        .collect();
    Ok(Json(json!({
        "from": time(from_us),
        "to": time(to_us),
        "bucket": bucket,
        "counts": counts,
    })))
}
