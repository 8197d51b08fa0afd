//! Twilio: webhooks and the Messages API.
//!
//! Webhook signatures (Twilio's "Webhooks security"): `X-Twilio-Signature` is
//! `base64(HMAC-SHA1(auth token, URL + every POST parameter's name and value, names sorted))`.
//! Twilio may add parameters without notice, so every received parameter is signed over. For
//! JSON bodies the URL carries `bodySHA256=<hex SHA-256 of the body>` and only the URL is signed.
//! Twilio's SDKs accept the URL with and without the scheme's default port; so does consentry.
//! The HMAC-SHA256 variant of the same construction is accepted too.

use base64::Engine as _;
use ring::hmac;

use super::{GatewayRequest, InboundMessage, WebhookError, WebhookEvent};
use crate::policy::Permit;

pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// The string Twilio signs: the URL, then each parameter's name and value, sorted by name.
pub fn signing_input(url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut input = url.to_owned();
    for (name, value) in sorted {
        input.push_str(name);
        input.push_str(value);
    }
    input
}

/// The signature of a URL and parameters (HMAC-SHA1, base64), as Twilio computes it.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes());
    let tag = hmac::sign(&key, signing_input(url, params).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// The URL as Twilio may have signed it: as configured, and with the default port added or
/// removed.
pub fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    let Ok(uri) = url.parse::<http::Uri>() else {
        return variants;
    };
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return variants;
    };
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return variants,
    };
    let rest = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    match uri.port_u16() {
        Some(port) if port == default_port => variants.push(format!("{scheme}://{host}{rest}")),
        None => variants.push(format!("{scheme}://{host}:{default_port}{rest}")),
        Some(_) => {}
    }
    variants
}

/// Verifies a signature over `url` (in every accepted form) and `params`.
pub fn verify(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header: Option<&str>,
) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::MissingSignature)?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(header.trim())
        .map_err(|_| WebhookError::BadSignature)?;
    for algorithm in [hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, hmac::HMAC_SHA256] {
        let key = hmac::Key::new(algorithm, auth_token.as_bytes());
        for variant in url_variants(url) {
            let input = signing_input(&variant, params);
            if hmac::verify(&key, input.as_bytes(), &signature).is_ok() {
                return Ok(());
            }
        }
    }
    Err(WebhookError::BadSignature)
}

/// Verifies a webhook and returns its parameters. `url` is the full URL Twilio called,
/// including its query string.
pub fn verify_webhook(
    auth_token: &str,
    url: &str,
    content_type: &str,
    header: Option<&str>,
    body: &[u8],
) -> Result<Vec<(String, String)>, WebhookError> {
    if content_type.starts_with("application/json") {
        // JSON: the URL (with bodySHA256) is signed, and the hash binds the body.
        verify(auth_token, url, &[], header)?;
        let query = url.split_once('?').map_or("", |(_, query)| query);
        let claimed = form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "bodySHA256")
            .map(|(_, value)| value.into_owned())
            .ok_or_else(|| WebhookError::Malformed("a JSON webhook needs bodySHA256".into()))?;
        let actual = crate::crypto::hex(ring::digest::digest(&ring::digest::SHA256, body).as_ref());
        if !claimed.eq_ignore_ascii_case(&actual) {
            return Err(WebhookError::BadSignature);
        }
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
        Ok(object
            .into_iter()
            .map(|(name, value)| {
                let value = match value {
                    serde_json::Value::String(text) => text,
                    other => other.to_string(),
                };
                (name, value)
            })
            .collect())
    } else {
        let params: Vec<(String, String)> = form_urlencoded::parse(body)
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        verify(auth_token, url, &params, header)?;
        Ok(params)
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Reads a verified webhook: an incoming message has a `MessageSid` (or `SmsSid`) and a
/// `Body`; a status callback has a `MessageStatus`.
pub fn parse(params: &[(String, String)]) -> Result<WebhookEvent, WebhookError> {
    let status = param(params, "MessageStatus").or(param(params, "SmsStatus"));
    let body = param(params, "Body");
    if let (Some(status), None) = (status, body) {
        let gateway_message_id = param(params, "MessageSid")
            .or(param(params, "SmsSid"))
            .ok_or_else(|| WebhookError::Malformed("a status without MessageSid".into()))?;
        let state = match status {
            "delivered" | "read" => super::DeliveryState::Delivered,
            "undelivered" => super::DeliveryState::Undelivered,
            "failed" => super::DeliveryState::Failed,
            _ => super::DeliveryState::InProgress,
        };
        return Ok(WebhookEvent::Status(super::DeliveryStatus {
            gateway_message_id: gateway_message_id.to_owned(),
            state,
            raw: status.to_owned(),
            error_code: param(params, "ErrorCode").map(str::to_owned),
        }));
    }
    let missing = |name: &str| WebhookError::Malformed(format!("no {name} parameter"));
    let gateway_id = param(params, "MessageSid")
        .or(param(params, "SmsSid"))
        .ok_or_else(|| missing("MessageSid"))?;
    Ok(WebhookEvent::Message(InboundMessage {
        gateway_id: gateway_id.to_owned(),
        from: param(params, "From")
            .ok_or_else(|| missing("From"))?
            .to_owned(),
        to: param(params, "To").ok_or_else(|| missing("To"))?.to_owned(),
        body: body.unwrap_or_default().to_owned(),
    }))
}

/// A TwiML answer that sends `replies` back to the recipient.
pub fn twiml(replies: &[String]) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>");
    for reply in replies {
        xml.push_str("<Message>");
        xml.push_str(&escape_xml(reply));
        xml.push_str("</Message>");
    }
    xml.push_str("</Response>");
    xml
}

fn escape_xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// `POST /2010-04-01/Accounts/{sid}/Messages.json`, form-encoded, HTTP Basic auth.
pub fn send_request(
    base_url: &str,
    account_sid: &str,
    auth_token: &str,
    status_url: Option<&str>,
    permit: &Permit,
) -> GatewayRequest {
    let message = permit.message();
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("To", message.to.e164())
        .append_pair("From", message.from.as_str())
        .append_pair("Body", message.body.as_str());
    for media in &message.media {
        form.append_pair("MediaUrl", media.as_str());
    }
    // With a public URL, Twilio reports delivery statuses to consentry's own webhook.
    if let Some(url) = status_url {
        form.append_pair("StatusCallback", url);
    }
    let body = form.finish();
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{account_sid}:{auth_token}"));
    GatewayRequest {
        url: format!(
            "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
            base_url.trim_end_matches('/')
        ),
        content_type: "application/x-www-form-urlencoded",
        authorization: format!("Basic {credentials}"),
        body: body.into_bytes(),
    }
}

/// The message SID in Twilio's answer.
pub fn message_id(answer: &serde_json::Value) -> Option<String> {
    answer
        .get("sid")
        .and_then(|sid| sid.as_str())
        .map(str::to_owned)
}

/// Twilio's error code (and HTTP status) for a consentry code: Twilio's own where one means the
/// same, else a documented consentry code in the 93xxx range.
pub fn front_error(code: &str) -> (u16, u32) {
    match code {
        "opted_out" => (400, 21610),
        "invalid_recipient" => (400, 21211),
        "missing_to" => (400, 21604),
        "missing_from" => (400, 21603),
        "missing_body" => (400, 21602),
        "invalid_body" => (400, 21617),
        "invalid_sender" => (400, 21212),
        "sender_not_allowed" => (400, 21606),
        "no_consent" => (400, 93001),
        "quiet_hours" => (400, 93002),
        "frequency_cap" => (400, 93003),
        "pending_review" => (400, 93004),
        "purpose_not_allowed" => (400, 93005),
        "unknown_time_zone" | "no_allowed_window" => (400, 93006),
        "unknown_scope" => (400, 93007),
        "number_reassigned" => (400, 93008),
        "invalid_purpose" => (400, 93009),
        "duplicate_parameter" => (400, 93100),
        "unsupported_parameter" => (400, 93101),
        "invalid_request" => (400, 93102),
        "message_not_found" => (404, 20404),
        "missing_send_at" => (400, 35111),
        "invalid_send_at" => (400, 35115),
        "schedule_needs_messaging_service" => (400, 35118),
        "unsupported_schedule_type" | "missing_schedule_type" => (400, 35126),
        "not_cancellable" => (400, 30409),
        "payload_too_large" => (413, 93413),
        "upstream_unavailable"
        | "upstream_timeout"
        | "upstream_rejected"
        | "upstream_bad_answer" => (502, 93500),
        "store_unavailable" | "encryption_unavailable" | "reassigned_lookup_unavailable" => {
            (503, 93503)
        }
        code if is_authentication(code) => (401, 20003),
        // Any other refusal: a documented consentry code, never mistaken for an auth failure.
        _ => (400, 93000),
    }
}

/// Whether a consentry code is about who is calling: a token, scope, tenant or account SID.
pub fn is_authentication(code: &str) -> bool {
    matches!(
        code,
        "missing_token"
            | "token_too_large"
            | "malformed_token"
            | "forbidden_header_parameter"
            | "invalid_issuer"
            | "unknown_key"
            | "algorithm_not_allowed"
            | "invalid_signature"
            | "token_expired"
            | "token_not_yet_valid"
            | "invalid_audience"
            | "missing_claim"
            | "invalid_claims"
            | "tenant_not_allowed"
            | "insufficient_scope"
            | "unknown_tenant"
            | "wrong_account"
    )
}

/// Twilio's error body: `{"code", "message", "more_info", "status"}`, and consentry's code.
pub fn error_body(code: &str, message: &str) -> (u16, serde_json::Value) {
    let (status, number) = front_error(code);
    let more_info = if number >= 90000 {
        format!("https://github.com/consentry/consentry#twilio-compatible-front ({code})")
    } else {
        format!("https://www.twilio.com/docs/errors/{number}")
    };
    (
        status,
        serde_json::json!({
            "code": number,
            "message": message,
            "more_info": more_info,
            "status": status,
            "consentry_code": code,
        }),
    )
}

/// A message SID for a consentry message id: `SM` and the same 32 hex digits.
pub fn message_sid(id: &crate::domain::MessageId) -> String {
    format!("SM{}", id.as_str().trim_start_matches("msg_"))
}

/// The consentry message id a message SID stands for.
pub fn message_id_of_sid(sid: &str) -> Option<crate::domain::MessageId> {
    crate::domain::MessageId::parse(&format!("msg_{}", sid.strip_prefix("SM")?))
}

/// Every status Twilio documents for a message (the Message resource's `status`).
pub const MESSAGE_STATUSES: [&str; 13] = [
    "queued",
    "sending",
    "sent",
    "failed",
    "delivered",
    "undelivered",
    "receiving",
    "received",
    "accepted",
    "scheduled",
    "read",
    "partially_delivered",
    "canceled",
];

/// The status a message fetched through the Twilio front shows, from where consentry's record
/// says it stands. Exhaustive, so a new consentry status has to be placed here.
///
/// - `accepted` (recorded, handed to the gateway, no answer yet) is Twilio's `sending`: "in the
///   process of dispatching your message to the nearest upstream carrier";
/// - a message denied at send time is `failed` ("could not be sent"), with the denial's code
///   as `error_code`, as Twilio shows a send to an opted-out number (21610);
/// - a deferred message is `scheduled`, and `canceled` once denied at its release.
///
/// Twilio's other words come from elsewhere or not at all: `queued` and `accepted` are what a
/// send answers (`From`, or `MessagingServiceSid`), before the fetch can say more; a gateway's
/// `read` is recorded as delivered (Twilio reports it for WhatsApp and RCS only, which consentry
/// does not send); `receiving` and `received` describe incoming messages, which the front's
/// fetch does not serve (replies go to the tenant's webhook); `partially_delivered` is
/// deprecated by Twilio and never reported for SMS.
pub fn message_status(status: crate::store::MessageStatus) -> &'static str {
    use crate::store::MessageStatus;
    match status {
        MessageStatus::Accepted => "sending",
        MessageStatus::Sent => "sent",
        MessageStatus::Delivered => "delivered",
        MessageStatus::Undelivered => "undelivered",
        MessageStatus::Failed | MessageStatus::Denied => "failed",
        MessageStatus::Scheduled => "scheduled",
        MessageStatus::Cancelled => "canceled",
    }
}

/// Whether a message in this Twilio status has left for the carrier (`date_sent` is set).
fn has_been_sent(status: &str) -> bool {
    matches!(
        status,
        "sent" | "delivered" | "undelivered" | "read" | "partially_delivered"
    )
}

/// Twilio's message resource.
#[allow(clippy::too_many_arguments)]
pub fn message_resource(
    account_sid: &str,
    id: &crate::domain::MessageId,
    to: &str,
    from: &str,
    body: &str,
    status: &str,
    created: jiff::Timestamp,
    error: Option<(u32, &str)>,
) -> serde_json::Value {
    let sid = message_sid(id);
    let date = created.strftime("%a, %d %b %Y %H:%M:%S +0000").to_string();
    let uri = format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json");
    serde_json::json!({
        "sid": sid,
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": date,
        "date_updated": date,
        "date_sent": if has_been_sent(status) { serde_json::json!(date) } else { serde_json::Value::Null },
        "direction": "outbound-api",
        "error_code": error.map(|(code, _)| code),
        "error_message": error.map(|(_, text)| text),
        "from": from,
        "messaging_service_sid": null,
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "status": status,
        "subresource_uris": { "media": uri.replace(".json", "/Media.json") },
        "to": to,
        "uri": uri,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The example of Twilio's webhook security documentation: auth token 12345.
    fn documented() -> (String, Vec<(String, String)>) {
        (
            "https://mycompany.com/myapp.php?foo=1&bar=2".into(),
            pairs(&[
                ("CallSid", "CA1234567890ABCDE"),
                ("Caller", "+14158675310"),
                ("Digits", "1234"),
                ("From", "+14158675310"),
                ("To", "+18005551212"),
            ]),
        )
    }

    #[test]
    fn the_documented_example_verifies() {
        let (url, params) = documented();
        assert_eq!(sign("12345", &url, &params), "GvWf1cFY/Q7PnoempGyD5oXAezc=");
        assert_eq!(
            verify("12345", &url, &params, Some("GvWf1cFY/Q7PnoempGyD5oXAezc=")),
            Ok(())
        );
    }

    #[test]
    fn anything_changed_fails() {
        let (url, params) = documented();
        let good = Some("GvWf1cFY/Q7PnoempGyD5oXAezc=");
        assert_eq!(
            verify("54321", &url, &params, good),
            Err(WebhookError::BadSignature)
        );
        let mut altered = params.clone();
        altered[2].1 = "1235".into();
        assert_eq!(
            verify("12345", &url, &altered, good),
            Err(WebhookError::BadSignature)
        );
        let mut extra = params.clone();
        extra.push(("Injected".into(), "1".into()));
        assert_eq!(
            verify("12345", &url, &extra, good),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify("12345", &url, &params, None),
            Err(WebhookError::MissingSignature)
        );
        assert_eq!(
            verify("12345", "https://mycompany.com/other.php", &params, good),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn the_url_verifies_with_and_without_its_default_port() {
        let params = pairs(&[("Body", "STOP"), ("From", "+14155550123")]);
        let with_port = "https://proxy.example.com:443/v1/inbound/tw";
        let without = "https://proxy.example.com/v1/inbound/tw";
        let signed_with = sign("token", with_port, &params);
        let signed_without = sign("token", without, &params);
        for configured in [with_port, without] {
            assert_eq!(
                verify("token", configured, &params, Some(&signed_with)),
                Ok(())
            );
            assert_eq!(
                verify("token", configured, &params, Some(&signed_without)),
                Ok(())
            );
        }
        let other_port = sign(
            "token",
            "https://proxy.example.com:8443/v1/inbound/tw",
            &params,
        );
        assert!(verify("token", without, &params, Some(&other_port)).is_err());
    }

    #[test]
    fn the_sha256_variant_verifies() {
        let (url, params) = documented();
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"12345");
        let tag = hmac::sign(&key, signing_input(&url, &params).as_bytes());
        let header = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        assert_eq!(verify("12345", &url, &params, Some(&header)), Ok(()));
    }

    #[test]
    fn json_webhooks_bind_the_body_by_its_hash() {
        let body =
            br#"{"MessageSid":"SM1","From":"+14155550123","To":"+12025550100","Body":"STOP"}"#;
        let hash = crate::crypto::hex(ring::digest::digest(&ring::digest::SHA256, body).as_ref());
        let url = format!("https://proxy.example.com/v1/inbound/tw?bodySHA256={hash}");
        let header = sign("token", &url, &[]);
        let params =
            verify_webhook("token", &url, "application/json", Some(&header), body).unwrap();
        assert!(matches!(parse(&params), Ok(WebhookEvent::Message(m)) if m.body == "STOP"));
        let altered =
            br#"{"MessageSid":"SM1","From":"+14155550123","To":"+12025550100","Body":"START"}"#;
        assert_eq!(
            verify_webhook("token", &url, "application/json", Some(&header), altered),
            Err(WebhookError::BadSignature)
        );
    }

    /// Every status Twilio documents, and where the front gets it from.
    #[test]
    fn every_documented_twilio_status_is_placed() {
        use crate::store::MessageStatus::*;
        enum From {
            /// What a fetch shows for a record in this consentry status.
            Fetch(crate::store::MessageStatus),
            /// Only the answer to a send (before the gateway has been heard from).
            SendAnswer,
            /// Never, for the reason given.
            Never(&'static str),
        }
        let table: [(&str, From); 14] = [
            ("queued", From::SendAnswer),
            ("accepted", From::SendAnswer),
            ("sending", From::Fetch(Accepted)),
            ("sent", From::Fetch(Sent)),
            ("failed", From::Fetch(Failed)),
            ("failed", From::Fetch(Denied)),
            ("delivered", From::Fetch(Delivered)),
            ("undelivered", From::Fetch(Undelivered)),
            ("scheduled", From::Fetch(Scheduled)),
            ("canceled", From::Fetch(Cancelled)),
            (
                "read",
                From::Never("WhatsApp and RCS only; recorded as delivered"),
            ),
            (
                "receiving",
                From::Never("incoming messages are not served by the fetch"),
            ),
            (
                "received",
                From::Never("incoming messages are not served by the fetch"),
            ),
            ("partially_delivered", From::Never("deprecated by Twilio")),
        ];
        let mut named: Vec<&str> = table.iter().map(|(status, _)| *status).collect();
        named.sort();
        named.dedup();
        let mut documented = MESSAGE_STATUSES.to_vec();
        documented.sort();
        assert_eq!(
            named, documented,
            "the table names every documented status once"
        );
        let mut placed = Vec::new();
        for (twilio, from) in &table {
            match from {
                From::Fetch(status) => {
                    assert_eq!(message_status(*status), *twilio, "{status:?}");
                    placed.push(*status);
                }
                From::SendAnswer | From::Never(_) => {
                    let why = match from {
                        From::Never(why) => why,
                        _ => "a send's answer only",
                    };
                    assert!(
                        crate::store::MessageStatus::ALL
                            .iter()
                            .all(|status| message_status(*status) != *twilio),
                        "{twilio} is not what a fetch shows: {why}"
                    );
                }
            }
        }
        for status in crate::store::MessageStatus::ALL {
            assert!(
                placed.contains(&status),
                "{status:?} has a row in the table"
            );
        }
    }

    #[test]
    fn date_sent_is_set_once_the_message_has_left() {
        let id = crate::domain::MessageId::new();
        let now = jiff::Timestamp::UNIX_EPOCH;
        for status in MESSAGE_STATUSES {
            let resource = message_resource("AC1", &id, "+1", "+2", "", status, now, None);
            let left = [
                "sent",
                "delivered",
                "undelivered",
                "read",
                "partially_delivered",
            ]
            .contains(&status);
            assert_eq!(resource["date_sent"].is_string(), left, "{status}");
        }
    }

    #[test]
    fn twiml_escapes_its_text() {
        assert_eq!(
            twiml(&["A & B <ok>".into()]),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>A &amp; B &lt;ok&gt;</Message></Response>"
        );
    }
}
