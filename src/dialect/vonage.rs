//! Vonage's SMS API (`/sms/json`): as an upstream, and as a front for applications that use a
//! Vonage SDK.
//!
//! Vonage answers HTTP 200 with a `status` per message: `"0"` is success; anything else is an
//! error, with `error-text`.

use serde_json::{Value, json};

use super::GatewayRequest;
use crate::policy::Permit;

pub const DEFAULT_BASE_URL: &str = "https://rest.nexmo.com";

/// `POST /sms/json`, form-encoded with the API key and secret.
pub fn send_request(
    base_url: &str,
    api_key: &str,
    api_secret: &str,
    permit: &Permit,
) -> GatewayRequest {
    let message = permit.message();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("api_key", api_key)
        .append_pair("api_secret", api_secret)
        .append_pair("from", message.from.as_str().trim_start_matches('+'))
        .append_pair("to", message.to.e164().trim_start_matches('+'))
        .append_pair("text", message.body.as_str())
        .finish();
    GatewayRequest {
        url: format!("{}/sms/json", base_url.trim_end_matches('/')),
        content_type: "application/x-www-form-urlencoded",
        // The credentials travel in the form, as Vonage's SMS API takes them.
        authorization: String::new(),
        body: body.into_bytes(),
    }
}

/// Reads Vonage's answer: the message id, or the status and error text of a refusal.
pub fn read_answer(answer: &Value) -> Result<Option<String>, (String, String)> {
    let first = answer.pointer("/messages/0").ok_or_else(|| {
        (
            "missing".to_owned(),
            "the answer holds no message".to_owned(),
        )
    })?;
    let status = first["status"].as_str().unwrap_or("?");
    if status == "0" {
        Ok(first["message-id"].as_str().map(str::to_owned))
    } else {
        Err((
            status.to_owned(),
            super::mask_numbers(first["error-text"].as_str().unwrap_or("refused")),
        ))
    }
}

/// A front's answer: one message accepted (`status` "0") or refused with a status.
pub fn front_answer(
    to: &str,
    message_id: Option<&str>,
    status: &str,
    error_text: Option<&str>,
    consentry_status: &str,
) -> Value {
    let mut message = json!({
        "to": to.trim_start_matches('+'),
        "status": status,
        "consentry-status": consentry_status,
    });
    match (message_id, error_text) {
        (Some(id), _) => {
            message["message-id"] = json!(id);
            message["remaining-balance"] = json!("0.00");
            message["message-price"] = json!("0.00");
            message["network"] = json!("");
        }
        (None, Some(text)) => message["error-text"] = json!(text),
        (None, None) => {}
    }
    json!({ "message-count": "1", "messages": [message] })
}

/// Vonage's status for a consentry code: its own where one means the same, else `"90"`
/// (a compliance denial; the error text names the consentry code).
pub fn status_for(code: &str) -> &'static str {
    match code {
        "opted_out" => "7",                               // Number barred
        "sender_not_allowed" | "invalid_sender" => "15",  // Illegal Sender Address
        "invalid_request" | "duplicate_parameter" => "2", // Missing or duplicate parameters
        "invalid_recipient" | "invalid_body" | "invalid_purpose" | "unknown_scope" => "3", // Invalid parameters
        code if super::twilio::is_authentication(code) => "4", // Invalid Credentials
        "upstream_unavailable"
        | "upstream_timeout"
        | "upstream_rejected"
        | "upstream_bad_answer"
        | "store_unavailable"
        | "encryption_unavailable"
        | "reassigned_lookup_unavailable" => "5", // Internal Error
        _ => "90",
    }
}

/// The message id in Vonage's answer.
pub fn message_id(answer: &Value) -> Option<String> {
    read_answer(answer).ok().flatten()
}
