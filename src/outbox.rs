//! Delivery of inbound messages to tenants' webhooks, through a durable outbox: of the store, the
//! worker uses the [`Outbox`](crate::store::Outbox) part only.
//!
//! A delivery is written in the same transaction as the inbound message it carries, so none is
//! lost; a worker posts due deliveries and retries failures with exponential backoff
//! (`outbox.retry_base_ms`, doubling, capped at `outbox.retry_max_ms`) until the tenant answers
//! 2xx. Delivery is at least once: each carries `X-Consentry-Delivery`, its id, for the tenant
//! to drop a repeat.
//!
//! Each request is signed: `X-Consentry-Timestamp: <unix seconds>` and
//! `X-Consentry-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use jiff::Timestamp;
use ring::hmac;

use crate::config::OutboxConfig;
use crate::crypto::{self, Sealed};
use crate::flow::receive::outbox_associated_data;
use crate::state::AppState;
use crate::store::{OutboxItem, StoreError};

pub mod webhooks;

/// How many deliveries one pass takes.
const BATCH: i64 = 50;
/// How often the worker looks for due deliveries.
const POLL: Duration = Duration::from_millis(200);

/// The signature header of a delivery.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    format!("v1={}", crypto::hex(hmac::sign(&key, &signed).as_ref()))
}

/// The delay before retry number `attempts` (1 for the first retry).
pub fn backoff(config: &OutboxConfig, attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(30);
    let delay = config.retry_base_ms.saturating_mul(1u64 << exponent);
    Duration::from_millis(delay.min(config.retry_max_ms))
}

/// Runs the worker until `stop` turns true.
pub async fn run(current: crate::state::Current, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        // The configuration live now: a reload reaches the next pass.
        let state = current.borrow().clone();
        if let Err(error) = deliver_due(&state).await {
            tracing::warn!(%error, "the outbox cannot be read; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// One pass: posts every due delivery once. Returns how many were delivered.
pub async fn deliver_due(state: &AppState) -> Result<usize, StoreError> {
    let due = state
        .outbox()
        .due_deliveries(Timestamp::now().as_microsecond(), BATCH)
        .await?;
    let mut delivered = 0;
    for item in due {
        let id = item.record.id.clone();
        let attempts = item.attempts + 1;
        match deliver(state, &item).await {
            Ok(()) => {
                state
                    .outbox()
                    .delivery_succeeded(&id, Timestamp::now().as_microsecond())
                    .await?;
                delivered += 1;
            }
            Err(error) => {
                let delay = backoff(&state.webhooks.config, attempts);
                let next = Timestamp::now().as_microsecond()
                    + i64::try_from(delay.as_micros()).unwrap_or(i64::MAX / 2);
                tracing::warn!(delivery = %id, attempts, %error, retry_in_ms = delay.as_millis() as u64, "webhook delivery failed");
                state
                    .outbox()
                    .delivery_failed(&id, attempts, next, &error)
                    .await?;
            }
        }
    }
    Ok(delivered)
}

async fn deliver(state: &AppState, item: &OutboxItem) -> Result<(), String> {
    let record = &item.record;
    let body = state
        .keys
        .open(
            outbox_associated_data(&record.tenant, &record.id).as_bytes(),
            &Sealed {
                key_id: record.key_id.clone(),
                bytes: record.payload.clone(),
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let request = match (&record.url, record.format.as_deref()) {
        (url, Some(crate::flow::receive::SMPP_FORMAT)) => {
            return smpp_delivery(state, record, url.as_deref(), &body).await;
        }
        (Some(url), Some("twilio")) => twilio_callback(state, record, url, &body)?,
        (Some(_), format) => return Err(format!("unknown delivery format {format:?}")),
        (None, _) => tenant_webhook(state, record, body)?,
    };
    let exchange = async {
        let response = state
            .webhooks
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // Read (and drop) the answer so the connection can be reused.
        let _ = response.into_body().collect().await;
        Ok::<_, String>(status)
    };
    let status = tokio::time::timeout(
        Duration::from_millis(state.webhooks.config.timeout_ms),
        exchange,
    )
    .await
    .map_err(|_| "timed out".to_owned())??;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered HTTP {}", status.as_u16()))
    }
}

/// A reply or receipt to the tenant's SMPP sessions (`smpp::deliver`): a receipt goes to the
/// account that asked for it (`url` = `smpp:<system_id>`), a reply to any session of the tenant
/// bound to receive.
async fn smpp_delivery(
    state: &AppState,
    record: &crate::store::OutboxRecord,
    url: Option<&str>,
    body: &[u8],
) -> Result<(), String> {
    use crate::smpp::deliver::{self, Final};
    let event: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let field = |name: &str| event[name].as_str().unwrap_or_default();
    let system_id = url.and_then(|url| url.strip_prefix("smpp:"));
    let pdu = match field("type") {
        "inbound_message" => deliver::mo(field("from"), field("to"), field("body"))?,
        "delivery_status" => {
            let id = crate::domain::MessageId::parse(field("message_id"))
                .ok_or("the receipt's message_id is not a message id")?;
            // The numbers as the record shows them (masked): the receipt names the message by
            // its id, and consentry does not open a sealed record to address a receipt.
            let message = state
                .messages()
                .message(&record.tenant, &id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the receipt's message is not the tenant's")?;
            let (recipient, sender) = (message.recipient, message.sender);
            let state_word = match field("state") {
                "delivered" => Final::Delivered,
                "undelivered" => Final::Undelivered,
                _ => Final::Failed,
            };
            let done = field("received_at")
                .parse::<Timestamp>()
                .map(|at| at.strftime("%y%m%d%H%M").to_string())
                .map_err(|e| format!("received_at: {e}"))?;
            deliver::receipt(
                id.as_str(),
                &recipient,
                &sender,
                state_word,
                event["error_code"].as_str(),
                &done,
            )?
        }
        other => return Err(format!("an SMPP delivery of an unknown type {other:?}")),
    };
    state
        .smpp_receivers
        .deliver(&record.tenant, system_id, pdu)
        .await
}

/// A status callback to an application's own URL, as Twilio would send it: a form, signed
/// with `X-Twilio-Signature` under the tenant's `status_callback_secret`.
fn twilio_callback(
    state: &AppState,
    record: &crate::store::OutboxRecord,
    url: &str,
    body: &[u8],
) -> Result<http::Request<Full<Bytes>>, String> {
    let secret = state
        .webhooks
        .callback_secrets
        .get(&record.tenant)
        .ok_or("the tenant has no status_callback_secret")?;
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let params: Vec<(String, String)> = fields
        .into_iter()
        .map(|(name, value)| (name, value.as_str().unwrap_or_default().to_owned()))
        .collect();
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    http::Request::post(url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(
            http::header::USER_AGENT,
            concat!("consentry/", env!("CARGO_PKG_VERSION")),
        )
        .header(
            crate::dialect::twilio::SIGNATURE_HEADER,
            crate::dialect::twilio::sign(secret.expose(), url, &params),
        )
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| e.to_string())
}

/// The delivery of a reply or status to the tenant's webhook, signed with its secret.
fn tenant_webhook(
    state: &AppState,
    record: &crate::store::OutboxRecord,
    body: Vec<u8>,
) -> Result<http::Request<Full<Bytes>>, String> {
    let (url, secret) = state
        .webhooks
        .targets
        .get(&record.tenant)
        .ok_or("the tenant has no webhook configured")?;
    let timestamp = Timestamp::now().as_second();
    http::Request::post(url.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("consentry/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-consentry-timestamp", timestamp.to_string())
        .header(
            "x-consentry-signature",
            signature(secret.expose().as_bytes(), timestamp, &body),
        )
        .header("x-consentry-delivery", record.id.as_str())
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let config = OutboxConfig {
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            timeout_ms: 10_000,
        };
        let delays: Vec<u64> = (1..=10)
            .map(|n| backoff(&config, n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [
                1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 300000
            ]
        );
        assert_eq!(backoff(&config, 1000).as_millis(), 300_000);
    }

    #[test]
    fn signatures_cover_time_and_body() {
        // printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
