//! `POST /v1/consents/deactivations` (scope `consents:write`): a carrier's number deactivation
//! file, as A2P senders receive them daily. Each line says that a number was disconnected on a
//! date; it is recorded in the tenant's ledger as a tenant-wide opt-out for every purpose,
//! method `number_deactivated`, dated at the deactivation. So every consent given before it
//! stops counting (a denial names it `number_reassigned`), and an opt-in recorded after it (the
//! number's new owner) counts again. The file streams through the consent import
//! (`consents::import_file`): the same batches, idempotency, summary and audit-log leaves.
//!
//! - CSV with a header naming `number` and `deactivated_at`, and optionally `carrier`;
//! - NDJSON lines `{"number": "...", "deactivated_at": "...", "carrier": "..."}`.
//!
//! `deactivated_at` is an RFC 3339 time, or a date (`2026-11-30`): a date means the end of
//! that day in UTC, so that a consent given that same day, possibly by the leaving owner, does
//! not survive it (fail closed; the new owner opts in again).

use std::sync::Arc;

use axum::body::Body as RequestBody;
use axum::extract::State;
use axum::response::Response;
use http::HeaderMap;
use serde::Deserialize;

use super::consents::{
    ConsentInput, FieldError, LineFormat, field_error, import_file, read_header,
};
use crate::flow::consent::Evidence;
use crate::http::error::ApiError;
use crate::state::AppState;

pub async fn import(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Response, ApiError> {
    import_file::<DeactivationLines>(&state, &headers, body).await
}

/// A deactivation file's lines, each read into the opt-out it records.
pub(crate) struct DeactivationLines;

impl LineFormat for DeactivationLines {
    type Column = Column;
    const NAME: &'static str = "deactivations";

    fn ndjson(text: &str) -> Result<ConsentInput, FieldError> {
        ndjson_input(text)
    }

    fn csv_header(fields: &[String]) -> Result<Vec<Column>, ApiError> {
        csv_header(fields)
    }

    fn csv_line(header: &[Column], fields: Vec<String>) -> Result<ConsentInput, FieldError> {
        csv_input(header, fields)
    }
}

/// The columns a deactivation file may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    Number,
    DeactivatedAt,
    Carrier,
}

const COLUMNS: [(&str, Column); 3] = [
    ("number", Column::Number),
    ("deactivated_at", Column::DeactivatedAt),
    ("carrier", Column::Carrier),
];

/// One line of a deactivation file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    number: String,
    deactivated_at: String,
    carrier: Option<String>,
}

fn csv_header(fields: &[String]) -> Result<Vec<Column>, ApiError> {
    read_header(
        fields,
        &COLUMNS,
        &[Column::Number, Column::DeactivatedAt],
        "number and deactivated_at",
    )
}

fn csv_input(header: &[Column], fields: Vec<String>) -> Result<ConsentInput, FieldError> {
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
    let mut line = Line::default();
    for (column, value) in header.iter().zip(fields) {
        let value = value.trim().to_owned();
        match column {
            Column::Number => line.number = value,
            Column::DeactivatedAt => line.deactivated_at = value,
            Column::Carrier => line.carrier = Some(value).filter(|v| !v.is_empty()),
        }
    }
    opt_out(line)
}

fn ndjson_input(text: &str) -> Result<ConsentInput, FieldError> {
    let line = serde_json::from_str::<Line>(text)
        .map_err(|e| field_error("invalid_line", "", format!("not a deactivation line: {e}")))?;
    opt_out(line)
}

/// The opt-out a deactivation line records.
fn opt_out(line: Line) -> Result<ConsentInput, FieldError> {
    let at = deactivated_at(&line.deactivated_at)?;
    let mut evidence = Evidence::default();
    evidence.extra.insert(
        "source".into(),
        serde_json::Value::String("deactivation_file".into()),
    );
    if let Some(carrier) = line.carrier {
        evidence
            .extra
            .insert("carrier".into(), serde_json::Value::String(carrier));
    }
    Ok(ConsentInput {
        number: line.number,
        action: "opt_out".into(),
        scope: None,
        level: None,
        method: Some(crate::consent::NUMBER_DEACTIVATED.into()),
        occurred_at: Some(at.to_string()),
        external_id: None,
        evidence,
    })
}

/// A deactivation's time: RFC 3339, or a date, read as the last second of that day in UTC.
fn deactivated_at(text: &str) -> Result<jiff::Timestamp, FieldError> {
    // A date alone is ten characters; jiff would also read the date out of a longer time.
    if text.len() == 10
        && let Ok(date) = text.parse::<jiff::civil::Date>()
    {
        return date
            .at(23, 59, 59, 0)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map(|zoned| zoned.timestamp())
            .map_err(|e| field_error("invalid_deactivated_at", "deactivated_at", e.to_string()));
    }
    crate::rfc3339::parse(text).map_err(|e| {
        field_error(
            "invalid_deactivated_at",
            "deactivated_at",
            format!("not a date (2026-11-30) or an RFC 3339 time: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_is_the_end_of_that_day_and_a_time_is_itself() {
        assert_eq!(
            deactivated_at("2026-11-30").unwrap().to_string(),
            "2026-11-30T23:59:59Z"
        );
        assert_eq!(
            deactivated_at("2026-11-30T08:15:00-05:00")
                .unwrap()
                .to_string(),
            "2026-11-30T13:15:00Z"
        );
        for wrong in ["", "30/11/2026", "2026-11-31", "2026-11-30T08:15:00"] {
            let error = deactivated_at(wrong).unwrap_err();
            assert_eq!(error.code, "invalid_deactivated_at", "{wrong}");
            assert_eq!(error.field, "deactivated_at");
        }
    }
}
