//! The consent API: record one event, read a number's state and history, import in bulk.
//!
//! - `POST /v1/consents` (scope `consents:write`): one event; 201 with the event, or 200 with
//!   `"duplicate": true` and the event first recorded when the same event was sent before.
//! - `GET /v1/consents/{number}` (scope `consents:read`): `{"number", "state", "history"}` for
//!   the caller's tenant only.
//! - `POST /v1/consents/import` (scope `consents:write`): CSV or NDJSON, streamed; answers a
//!   summary with the line number and code of every refused line.
//!
//! There is no endpoint that changes or removes an event: the ledger is append-only, and a
//! correction is a new event.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::body::Body as RequestBody;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt as _;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{Principal, scope};
use crate::config::Tenant;
use crate::consent::{self, Action, ConsentState, Level};
use crate::domain::{PhoneNumber, Purpose, Scope};
use crate::flow::{
    self,
    consent::{Evidence, Validated},
};
use crate::http::error::ApiError;
use crate::http::extract::Path;
use crate::import::{CsvRecords, ImportError, NdjsonLines};
use crate::state::AppState;
use crate::store::{ConsentRecord, Recorded, StoredConsent};

/// How consent was collected.
pub const METHODS: [&str; 11] = [
    "web_form",
    "keyword",
    "verbal",
    "paper",
    "import",
    "api",
    "ivr",
    "email",
    "double_opt_in",
    crate::consent::NUMBER_DEACTIVATED,
    crate::consent::REASSIGNED_LOOKUP,
];
/// How far in the future `occurred_at` may be (clock skew between systems).
const FUTURE_LEEWAY_SECONDS: i64 = 300;
/// Events written per transaction during an import, at most. One batch is written while the
/// next is read, validated and sealed. Larger batches write each index page an event lands on
/// for more events (ARCHITECTURE.md, "The write path"); a send arriving meanwhile waits for the
/// batch being written, which bounds them.
const IMPORT_BATCH: usize = 10_000;
/// Sealed evidence per batch, at most: events with long disclosures make smaller batches, so
/// that the two batches an import holds stay a few MiB.
const IMPORT_BATCH_BYTES: usize = 2 << 20;
/// The most refused lines listed in an import's answer; the count is always complete.
const MAX_LISTED_ERRORS: usize = 1000;
/// The largest import accepted.
const MAX_IMPORT_BYTES: u64 = 1 << 30;

/// One consent event as a client sends it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentInput {
    pub number: String,
    pub action: String,
    #[serde(default)]
    pub scope: Option<ScopeInput>,
    pub level: Option<String>,
    pub method: Option<String>,
    pub occurred_at: Option<String>,
    pub external_id: Option<String>,
    #[serde(default)]
    pub evidence: Evidence,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeInput {
    pub brand: Option<String>,
    pub campaign: Option<String>,
    #[serde(default)]
    pub purposes: Vec<String>,
}

/// A refused event: a stable code and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

pub(crate) fn field_error(
    code: &'static str,
    field: &str,
    message: impl Into<String>,
) -> FieldError {
    FieldError {
        code,
        field: field.to_owned(),
        message: message.into(),
    }
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        ApiError::bad_request(error.code, format!("{}: {}", error.field, error.message))
            .with("field", error.field)
    }
}

/// Checks an event against the tenant; `require_time` for imports, where history must say when.
fn validate(
    input: ConsentInput,
    tenant: &Tenant,
    now: Timestamp,
    default_method: &str,
    require_time: bool,
) -> Result<Validated, FieldError> {
    let number = PhoneNumber::parse(&input.number, tenant.default_region)
        .map_err(|e| field_error("invalid_number", "number", e.to_string()))?;
    let action = Action::parse(&input.action)
        .ok_or_else(|| field_error("invalid_action", "action", "must be opt_in or opt_out"))?;
    let scope_input = input.scope.unwrap_or_default();
    let scope = tenant
        .scope(
            scope_input.brand.as_deref(),
            scope_input.campaign.as_deref(),
        )
        .map_err(|e| field_error("unknown_scope", &format!("scope.{}", e.field), e.message))?;
    let purposes = scope_input
        .purposes
        .iter()
        .map(|p| p.parse::<Purpose>())
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(|e| field_error("invalid_purpose", "scope.purposes", e))?;
    let method = input.method.unwrap_or_else(|| default_method.to_owned());
    if !METHODS.contains(&method.as_str()) {
        return Err(field_error(
            "invalid_method",
            "method",
            format!("must be one of {}", METHODS.join(", ")),
        ));
    }
    if action == Action::OptIn && crate::consent::is_number_change(&method) {
        return Err(field_error(
            "invalid_method",
            "method",
            format!("{method} records an opt-out: a number that changed hands"),
        ));
    }
    let level = match (action, input.level.as_deref()) {
        (Action::OptOut, None) => None,
        (Action::OptOut, Some(_)) => {
            return Err(field_error(
                "invalid_level",
                "level",
                "an opt-out has no level",
            ));
        }
        (Action::OptIn, None) => Some(Level::Express),
        (Action::OptIn, Some(level)) => Some(Level::parse(level).ok_or_else(|| {
            field_error(
                "invalid_level",
                "level",
                "must be express or express_written",
            )
        })?),
    };
    let occurred_at = match input.occurred_at.as_deref() {
        None if require_time => {
            return Err(field_error(
                "invalid_occurred_at",
                "occurred_at",
                "is required in an import",
            ));
        }
        None => now,
        Some(text) => crate::rfc3339::parse(text).map_err(|e| {
            field_error(
                "invalid_occurred_at",
                "occurred_at",
                format!("not an RFC 3339 time with an offset: {e}"),
            )
        })?,
    };
    // A deactivation dated by its day (the end of it) may be later today: it takes effect now.
    let deactivation = action == Action::OptOut && crate::consent::is_number_change(&method);
    if occurred_at.as_second() > now.as_second() + FUTURE_LEEWAY_SECONDS && !deactivation {
        return Err(field_error(
            "invalid_occurred_at",
            "occurred_at",
            "is in the future",
        ));
    }
    // An opt-out takes effect when it is recorded at the latest: one dated a little ahead
    // (a client's clock) must not leave a window in which sends still pass.
    let occurred_at = if action == Action::OptOut {
        occurred_at.min(now)
    } else {
        occurred_at
    };
    if let Some(id) = &input.external_id
        && (id.is_empty() || id.len() > 200)
    {
        return Err(field_error(
            "invalid_external_id",
            "external_id",
            "must be 1 to 200 bytes",
        ));
    }
    let evidence = input.evidence;
    if let Some(ip) = &evidence.ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err(field_error(
            "invalid_evidence",
            "evidence.ip",
            "not an IP address",
        ));
    }
    if level == Some(Level::ExpressWritten) {
        check_written_consent(&method, &evidence)?;
    }
    Ok(Validated {
        number,
        action,
        level,
        scope,
        purposes,
        method,
        occurred_at,
        external_id: input.external_id,
        evidence,
    })
}

/// Prior express written consent (47 CFR 64.1200(f)(9)) is a signed agreement that discloses
/// that consent is not a condition of purchase: the record must show both.
fn check_written_consent(method: &str, evidence: &Evidence) -> Result<(), FieldError> {
    if method == "verbal" {
        return Err(field_error(
            "insufficient_evidence",
            "method",
            "verbal consent is not written consent",
        ));
    }
    if evidence
        .disclosure_text
        .as_deref()
        .is_none_or(|text| text.trim().is_empty())
    {
        return Err(field_error(
            "insufficient_evidence",
            "evidence.disclosure_text",
            "written consent needs the disclosure the person agreed to",
        ));
    }
    if evidence.not_condition_of_purchase != Some(true) {
        return Err(field_error(
            "insufficient_evidence",
            "evidence.not_condition_of_purchase",
            "written consent must say that consent is not a condition of purchase",
        ));
    }
    Ok(())
}

/// The event as the API shows it, with its evidence unsealed.
async fn consent_view(
    state: &AppState,
    tenant: &Tenant,
    stored: &StoredConsent,
) -> Result<Value, ApiError> {
    let record = &stored.record;
    let opened = flow::consent::open_evidence(state, tenant, record).await;
    let (number, evidence) = match opened {
        Some(opened) => (
            Value::String(opened.number),
            serde_json::to_value(opened.evidence).unwrap_or_default(),
        ),
        None => {
            tracing::error!(event = %record.id, "consent evidence does not decrypt");
            (Value::Null, Value::Null)
        }
    };
    let time = |us: i64| {
        Timestamp::from_microsecond(us)
            .map(|t| Value::String(t.to_string()))
            .unwrap_or(Value::Null)
    };
    let purposes: Vec<&str> = record.purposes.split_whitespace().collect();
    Ok(json!({
        "id": record.id,
        "number": number,
        "action": record.action.as_str(),
        "level": record.level.map(|l| l.as_str()),
        "scope": {
            "brand": record.brand,
            "campaign": record.campaign,
            "purposes": purposes,
        },
        "method": record.method,
        "occurred_at": time(record.occurred_at_us),
        "recorded_at": time(record.recorded_at_us),
        "recorded_by": record.recorded_by,
        "external_id": record.external_id,
        "evidence": evidence,
    }))
}

pub async fn record(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Response, ApiError> {
    let (principal, tenant) = state.authorize(&headers, scope::CONSENTS_WRITE)?;
    let bytes = super::messages::read_body(&headers, body, state.max_request_bytes).await?;
    let input: ConsentInput = super::messages::parse_json(&bytes)?;
    let now = state.clock.now();
    let event = validate(input, tenant, now, "api", false)?;
    let (stored, duplicate) =
        flow::consent::record(&state, event, tenant, &principal.subject, now).await?;
    let mut view = consent_view(&state, tenant, &stored).await?;
    let status = if duplicate {
        view["duplicate"] = Value::Bool(true);
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view)).into_response())
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    number: Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_principal, tenant) = state.authorize(&headers, scope::CONSENTS_READ)?;
    let number = number.get()?;
    let number = PhoneNumber::parse(&number, tenant.default_region).map_err(|e| {
        ApiError::bad_request("invalid_number", format!("number: {e}")).with("field", "number")
    })?;
    let (stored, events) = flow::consent::consent_events(&state, tenant, &number).await?;
    let now = state.clock.now();
    let policy = state.policies.consent.at(now);

    let mut scopes: BTreeSet<Scope> = events.iter().map(|e| e.scope.clone()).collect();
    scopes.insert(Scope::tenant_wide());
    let mut current = Vec::new();
    for scope in &scopes {
        for purpose in Purpose::ALL {
            let (status, level, event) = match consent::state(&events, scope, purpose, &policy, now)
            {
                ConsentState::OptedOut(event) => ("opted_out", None, Some(&event.id)),
                ConsentState::OptedIn { level, event } => {
                    ("opted_in", Some(level.as_str()), Some(&event.id))
                }
                ConsentState::NoRecord => ("none", None, None),
            };
            let sendable = consent::check(&events, scope, purpose, &policy, now).is_ok();
            current.push(json!({
                "scope": { "brand": scope.brand, "campaign": scope.campaign },
                "purpose": purpose.as_str(),
                "status": status,
                "level": level,
                "event": event,
                "sendable": sendable,
            }));
        }
    }
    let mut history = Vec::with_capacity(stored.len());
    for event in &stored {
        history.push(consent_view(&state, tenant, event).await?);
    }
    Ok(Json(json!({
        "number": number.e164(),
        "revoke_all": policy.revoke_all,
        "state": current,
        "history": history,
    })))
}

/// The formats an import may come in.
enum Format {
    Csv,
    Ndjson,
}

/// Running totals of an import.
#[derive(Debug, Default, Serialize)]
struct ImportSummary {
    lines: u64,
    recorded: u64,
    duplicates: u64,
    failed: u64,
    errors: Vec<Value>,
    errors_truncated: bool,
}

impl ImportSummary {
    fn refuse(&mut self, line: u64, error: FieldError) {
        self.failed += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(json!({
                "line": line, "code": error.code, "field": error.field, "message": error.message,
            }));
        } else {
            self.errors_truncated = true;
        }
    }
}

pub async fn import(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Response, ApiError> {
    import_file::<ConsentLines>(&state, &headers, body).await
}

/// How an import reads its lines into consent events: the consent import's own format
/// ([`ConsentLines`]), or another one (`http::deactivations`: a carrier's deactivation file).
pub(crate) trait LineFormat: Send + Sync + 'static {
    /// A CSV column the format knows.
    type Column: Copy + PartialEq + Send + Sync;
    /// What the logs call the import.
    const NAME: &'static str;
    fn ndjson(text: &str) -> Result<ConsentInput, FieldError>;
    fn csv_header(fields: &[String]) -> Result<Vec<Self::Column>, ApiError>;
    fn csv_line(header: &[Self::Column], fields: Vec<String>) -> Result<ConsentInput, FieldError>;
}

/// Consent events: NDJSON lines of `POST /v1/consents`, or the CSV columns of [`CSV_COLUMNS`].
pub(crate) struct ConsentLines;

impl LineFormat for ConsentLines {
    type Column = CsvColumn;
    const NAME: &'static str = "consents";

    fn ndjson(text: &str) -> Result<ConsentInput, FieldError> {
        serde_json::from_str::<ConsentInput>(text)
            .map_err(|e| field_error("invalid_line", "", format!("not a consent event: {e}")))
    }

    fn csv_header(fields: &[String]) -> Result<Vec<CsvColumn>, ApiError> {
        csv_header(fields)
    }

    fn csv_line(header: &[CsvColumn], fields: Vec<String>) -> Result<ConsentInput, FieldError> {
        csv_input(header, fields)
    }
}

/// A file of consent events or deactivations, streamed: validated line by line, written in
/// batches (`POST /v1/consents/import`, `POST /v1/consents/deactivations`).
pub(crate) async fn import_file<F: LineFormat>(
    state: &AppState,
    headers: &HeaderMap,
    body: RequestBody,
) -> Result<Response, ApiError> {
    let (principal, tenant) = state.authorize(headers, scope::CONSENTS_WRITE)?;
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let format = if content_type.starts_with("text/csv") {
        Format::Csv
    } else if content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/jsonl")
        || content_type.starts_with("application/ndjson")
    {
        Format::Ndjson
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send text/csv or application/x-ndjson",
        ));
    };

    let mut importer = Importer::<F> {
        state,
        format: std::marker::PhantomData,
        tenant,
        principal: &principal,
        summary: ImportSummary::default(),
        batch: Vec::with_capacity(IMPORT_BATCH),
        batch_lines: Vec::with_capacity(IMPORT_BATCH),
        batch_bytes: 0,
        header: None,
        committed_through: 0,
        in_flight: None,
        in_flight_turn: None,
    };
    let mut ndjson = NdjsonLines::default();
    let mut csv = CsvRecords::default();
    let mut received: u64 = 0;
    let mut body = body;
    loop {
        let frame = match body.frame().await {
            None => None,
            Some(Ok(frame)) => Some(frame),
            Some(Err(error)) => {
                return Err(importer
                    .stop(super::edge::body_error(&error, MAX_IMPORT_BYTES as usize))
                    .await);
            }
        };
        let Some(frame) = frame else { break };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        received += chunk.len() as u64;
        if received > MAX_IMPORT_BYTES {
            return Err(importer
                .stop(ApiError::payload_too_large(MAX_IMPORT_BYTES as usize))
                .await);
        }
        let result = match format {
            Format::Ndjson => match ndjson.push(&chunk) {
                Ok(lines) => importer.ndjson_lines(lines).await,
                Err(error) => Err(import_error(error)),
            },
            Format::Csv => match csv.push(&chunk) {
                Ok(records) => importer.csv_records(records).await,
                Err(error) => Err(import_error(error)),
            },
        };
        if let Err(error) = result {
            return Err(importer.stop(error).await);
        }
    }
    let result = match format {
        Format::Ndjson => match ndjson.finish() {
            Ok(lines) => importer.ndjson_lines(lines).await,
            Err(error) => Err(import_error(error)),
        },
        Format::Csv => match csv.finish() {
            Ok(records) => importer.csv_records(records).await,
            Err(error) => Err(import_error(error)),
        },
    };
    if let Err(error) = result {
        return Err(importer.stop(error).await);
    }
    let flushed = match importer.flush().await {
        Ok(()) => importer.settle().await,
        Err(error) => Err(error),
    };
    if let Err(error) = flushed {
        return Err(importer.stop(error).await);
    }
    tracing::info!(
        tenant = %tenant.id,
        kind = F::NAME,
        lines = importer.summary.lines,
        recorded = importer.summary.recorded,
        duplicates = importer.summary.duplicates,
        failed = importer.summary.failed,
        "import finished"
    );
    Ok((StatusCode::OK, Json(importer.summary)).into_response())
}

fn import_error(error: ImportError) -> ApiError {
    ApiError::bad_request("invalid_import", error.to_string())
}

/// The state of one import: lines are validated as they arrive and written in batches.
struct Importer<'a, F: LineFormat> {
    state: &'a AppState,
    format: std::marker::PhantomData<F>,
    tenant: &'a Tenant,
    principal: &'a Principal,
    summary: ImportSummary,
    batch: Vec<ConsentRecord>,
    batch_lines: Vec<u64>,
    /// The sealed evidence in `batch`, in bytes.
    batch_bytes: usize,
    /// The CSV header, once read.
    header: Option<Vec<F::Column>>,
    /// Every line up to this one is recorded or refused.
    committed_through: u64,
    /// The batch being written, and its last line.
    in_flight: Option<(BatchWrite, u64)>,
    /// Its recipients' turn, held until it is written: a send to one of them in this process
    /// decides before the batch or after it, never across it, so that the log's order of a
    /// recipient's leaves is the order its decisions saw.
    in_flight_turn: Option<crate::state::LocalTurn<'a>>,
}

/// An import batch's write, running while the next batch is read.
type BatchWrite = tokio::task::JoinHandle<Result<Vec<Recorded>, crate::store::StoreError>>;

impl<F: LineFormat> Importer<'_, F> {
    async fn ndjson_lines(&mut self, lines: Vec<(u64, String)>) -> Result<(), ApiError> {
        for (line, text) in lines {
            let input = F::ndjson(&text);
            self.line(line, input).await?;
        }
        Ok(())
    }

    async fn csv_records(&mut self, records: Vec<(u64, Vec<String>)>) -> Result<(), ApiError> {
        for (line, fields) in records {
            let Some(header) = &self.header else {
                self.header = Some(F::csv_header(&fields)?);
                continue;
            };
            let input = F::csv_line(header, fields);
            self.line(line, input).await?;
        }
        Ok(())
    }

    async fn line(
        &mut self,
        line: u64,
        input: Result<ConsentInput, FieldError>,
    ) -> Result<(), ApiError> {
        self.summary.lines += 1;
        let now = self.state.clock.now();
        match input.and_then(|input| validate(input, self.tenant, now, "import", true)) {
            Ok(event) => {
                let record = flow::consent::consent_record(
                    self.state,
                    event,
                    self.tenant,
                    &self.principal.subject,
                    now,
                )
                .await?;
                self.batch_bytes += record.evidence.len();
                self.batch.push(record);
                self.batch_lines.push(line);
                if self.batch.len() >= IMPORT_BATCH || self.batch_bytes >= IMPORT_BATCH_BYTES {
                    self.flush().await?;
                }
            }
            Err(error) => {
                self.summary.refuse(line, error);
                if self.batch.is_empty() && self.in_flight.is_none() {
                    self.committed_through = line;
                }
            }
        }
        Ok(())
    }

    /// Starts writing the batch, once the one before it is written: reading and sealing the
    /// next lines goes on meanwhile, one batch ahead at most.
    async fn flush(&mut self) -> Result<(), ApiError> {
        self.settle().await?;
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::replace(&mut self.batch, Vec::with_capacity(IMPORT_BATCH));
        // Recorded when written, not when read: a slow upload's lines wait in the batch, and
        // the log's times must not go back (`audit verify` checks it).
        let now = self.state.clock.now().as_microsecond();
        for record in &mut batch {
            record.recorded_at_us = now;
        }
        let last_line = self.batch_lines.last().copied().unwrap_or_default();
        self.batch_lines.clear();
        self.batch_bytes = 0;
        let hashes: Vec<&str> = batch.iter().map(|r| r.recipient_hash.as_str()).collect();
        self.in_flight_turn = Some(self.state.local_turn(&hashes).await);
        let ledger: std::sync::Arc<dyn crate::store::Ledger> = self.state.store.clone();
        self.in_flight = Some((
            tokio::spawn(async move { ledger.record_consents(&batch, None).await }),
            last_line,
        ));
        Ok(())
    }

    /// Waits for the batch being written, and counts it.
    async fn settle(&mut self) -> Result<(), ApiError> {
        let Some((write, last_line)) = self.in_flight.take() else {
            return Ok(());
        };
        let written = write.await;
        self.in_flight_turn = None;
        let results = written.map_err(|error| {
            crate::store::StoreError::Unsafe(format!("the import's write stopped: {error}"))
        })??;
        for result in results {
            match result {
                Recorded::New => self.summary.recorded += 1,
                Recorded::Duplicate(_) => self.summary.duplicates += 1,
            }
        }
        self.committed_through = last_line;
        Ok(())
    }

    /// The answer when an import stops part way: what was committed stays (the batch being
    /// written is waited for first, so the answer says where it ended), and a re-run of the
    /// same file adds nothing twice.
    async fn stop(&mut self, error: ApiError) -> ApiError {
        let error = match self.settle().await {
            Ok(()) => error,
            Err(write_error) => write_error,
        };
        error
            .with("committed_through_line", self.committed_through)
            .with("recorded", self.summary.recorded)
            .with("duplicates", self.summary.duplicates)
    }
}

/// The columns a CSV import may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CsvColumn {
    Number,
    Action,
    Level,
    Brand,
    Campaign,
    Purposes,
    Method,
    OccurredAt,
    ExternalId,
    DisclosureText,
    DisclosureVersion,
    Language,
    Ip,
    UserAgent,
    PageUrl,
    InboundMessageId,
    DoubleOptInId,
    NotConditionOfPurchase,
}

const CSV_COLUMNS: [(&str, CsvColumn); 18] = [
    ("number", CsvColumn::Number),
    ("action", CsvColumn::Action),
    ("level", CsvColumn::Level),
    ("brand", CsvColumn::Brand),
    ("campaign", CsvColumn::Campaign),
    ("purposes", CsvColumn::Purposes),
    ("method", CsvColumn::Method),
    ("occurred_at", CsvColumn::OccurredAt),
    ("external_id", CsvColumn::ExternalId),
    ("disclosure_text", CsvColumn::DisclosureText),
    ("disclosure_version", CsvColumn::DisclosureVersion),
    ("language", CsvColumn::Language),
    ("ip", CsvColumn::Ip),
    ("user_agent", CsvColumn::UserAgent),
    ("page_url", CsvColumn::PageUrl),
    ("inbound_message_id", CsvColumn::InboundMessageId),
    ("double_opt_in_id", CsvColumn::DoubleOptInId),
    (
        "not_condition_of_purchase",
        CsvColumn::NotConditionOfPurchase,
    ),
];

fn csv_header(fields: &[String]) -> Result<Vec<CsvColumn>, ApiError> {
    read_header(
        fields,
        &CSV_COLUMNS,
        &[CsvColumn::Number, CsvColumn::Action],
        "number and action",
    )
}

/// Reads a CSV header into `known` columns: names in any case (a byte-order mark dropped); an
/// unknown name, or a missing `required` one, refuses the file (`invalid_csv_header`).
pub(crate) fn read_header<C: Copy + PartialEq>(
    fields: &[String],
    known: &[(&str, C)],
    required: &[C],
    required_names: &str,
) -> Result<Vec<C>, ApiError> {
    let columns = fields
        .iter()
        .map(|name| {
            let name = name
                .trim()
                .trim_start_matches('\u{feff}')
                .to_ascii_lowercase();
            known
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, column)| *column)
                .ok_or_else(|| {
                    let names: Vec<&str> = known.iter().map(|(known, _)| *known).collect();
                    ApiError::bad_request(
                        "invalid_csv_header",
                        format!(
                            "unknown column {name:?}; known columns: {}",
                            names.join(", ")
                        ),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if required.iter().any(|column| !columns.contains(column)) {
        return Err(ApiError::bad_request(
            "invalid_csv_header",
            format!("the header must name the columns {required_names}"),
        ));
    }
    Ok(columns)
}

fn csv_input(header: &[CsvColumn], fields: Vec<String>) -> Result<ConsentInput, FieldError> {
    if fields.len() != header.len() {
        return Err(field_error(
            "invalid_line",
            "",
            format!(
                "{} fields where the header has {}",
                fields.len(),
                header.len()
            ),
        ));
    }
    let mut input = ConsentInput::default();
    let mut scope = ScopeInput::default();
    for (column, value) in header.iter().zip(fields) {
        let value = value.trim().to_owned();
        if value.is_empty() {
            continue;
        }
        let evidence = &mut input.evidence;
        match column {
            CsvColumn::Number => input.number = value,
            CsvColumn::Action => input.action = value,
            CsvColumn::Level => input.level = Some(value),
            CsvColumn::Brand => scope.brand = Some(value),
            CsvColumn::Campaign => scope.campaign = Some(value),
            CsvColumn::Purposes => {
                scope.purposes = value
                    .split([' ', ';', '|'])
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            CsvColumn::Method => input.method = Some(value),
            CsvColumn::OccurredAt => input.occurred_at = Some(value),
            CsvColumn::ExternalId => input.external_id = Some(value),
            CsvColumn::DisclosureText => evidence.disclosure_text = Some(value),
            CsvColumn::DisclosureVersion => evidence.disclosure_version = Some(value),
            CsvColumn::Language => evidence.language = Some(value),
            CsvColumn::Ip => evidence.ip = Some(value),
            CsvColumn::UserAgent => evidence.user_agent = Some(value),
            CsvColumn::PageUrl => evidence.page_url = Some(value),
            CsvColumn::InboundMessageId => evidence.inbound_message_id = Some(value),
            CsvColumn::DoubleOptInId => evidence.double_opt_in_id = Some(value),
            CsvColumn::NotConditionOfPurchase => {
                evidence.not_condition_of_purchase =
                    Some(match value.to_ascii_lowercase().as_str() {
                        "true" | "yes" | "1" => true,
                        "false" | "no" | "0" => false,
                        _ => {
                            return Err(field_error(
                                "invalid_evidence",
                                "not_condition_of_purchase",
                                "must be true or false",
                            ));
                        }
                    });
            }
        }
    }
    input.scope = Some(scope);
    Ok(input)
}
