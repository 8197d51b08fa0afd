//! A send request, as every front gives it (the native API, a batch's line, the Twilio, Telnyx
//! and Vonage fronts, the SMPP front), read into a [`CanonicalMessage`]: each bad field with its
//! own stable code. The fronts call this and then `flow::send::process`.

use serde::Deserialize;

use crate::auth::Principal;
use crate::config::Tenant;
use crate::domain::{Body, CanonicalMessage, MessageId, PhoneNumber, Purpose, Sender};
use crate::policy::SenderBounds;
use crate::state::AppState;

/// A field of a request that does not read: its stable code (`invalid_recipient`...), what is
/// wrong, and the field's name. Answered 400 by the HTTP API, with a status by the SMPP front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub code: &'static str,
    pub message: String,
    pub field: Option<&'static str>,
}

impl RequestError {
    fn new(code: &'static str, message: impl Into<String>) -> RequestError {
        RequestError {
            code,
            message: message.into(),
            field: None,
        }
    }

    fn field(mut self, field: &'static str) -> RequestError {
        self.field = Some(field);
        self
    }
}

/// The native send request; the gateway-compatible fronts fill the same fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub to: String,
    pub from: String,
    pub body: String,
    pub purpose: String,
    /// The brand and campaign the message is for: consent is checked at that scope.
    pub brand: Option<String>,
    pub campaign: Option<String>,
    /// When to send it (RFC 3339), up to [`MAX_HOLD`] ahead; now if absent.
    #[serde(default)]
    pub send_at: Option<String>,
    /// An MMS's media: absolute URLs, at most 10; the body may then be empty.
    #[serde(default)]
    pub media_urls: Vec<String>,
}

/// How far ahead a message may be scheduled: 35 days, as Twilio's scheduling allows.
pub const MAX_HOLD: jiff::SignedDuration = jiff::SignedDuration::from_hours(35 * 24);

/// Reads a requested send time: an RFC 3339 instant more than `lead` after `now` and at most
/// [`MAX_HOLD`] after it. `field` names it in the error (`invalid_send_at`).
pub fn send_at(
    text: &str,
    now: jiff::Timestamp,
    lead: jiff::SignedDuration,
    field: &'static str,
) -> Result<jiff::Timestamp, RequestError> {
    let invalid = |message: String| {
        RequestError::new("invalid_send_at", format!("{field}: {message}")).field(field)
    };
    let at = crate::rfc3339::parse(text)
        .map_err(|error| invalid(format!("not an RFC 3339 time: {error}")))?;
    let earliest = now + lead;
    if at <= earliest {
        return Err(invalid(if lead.is_zero() {
            format!("{at} is not in the future (now is {now})")
        } else {
            format!("{at} is less than {} s after now ({now})", lead.as_secs())
        }));
    }
    if at > now + MAX_HOLD {
        return Err(invalid(format!(
            "{at} is more than 35 days after now ({now})"
        )));
    }
    Ok(at)
}

/// Parses the request's fields into the canonical message, each bad field with its own code;
/// `now` bounds `send_at`.
pub fn canonical_message(
    state: &AppState,
    request: SendRequest,
    tenant: &Tenant,
    now: jiff::Timestamp,
) -> Result<CanonicalMessage, RequestError> {
    let media = crate::domain::MediaUrl::parse_all(&request.media_urls).map_err(|error| {
        RequestError::new("invalid_media_url", format!("media_urls: {error}")).field("media_urls")
    })?;
    if !media.is_empty() && !state.upstreams.takes_media(&tenant.upstream) {
        return Err(RequestError::new(
            "media_not_supported",
            format!(
                "the tenant's gateway ({}) sends text only; a message with media_urls cannot go through it",
                tenant.upstream
            ),
        )
        .field("media_urls"));
    }
    let send_at = request
        .send_at
        .as_deref()
        .map(|text| send_at(text, now, jiff::SignedDuration::ZERO, "send_at"))
        .transpose()?;
    let to = PhoneNumber::parse(&request.to, tenant.default_region).map_err(|error| {
        RequestError::new("invalid_recipient", format!("to: {error}")).field("to")
    })?;
    let from = Sender::parse(&request.from, tenant.default_region).map_err(|error| {
        RequestError::new("invalid_sender", format!("from: {error}")).field("from")
    })?;
    let purpose: Purpose = request.purpose.parse().map_err(|error: String| {
        RequestError::new("invalid_purpose", format!("purpose: {error}")).field("purpose")
    })?;
    let body = if media.is_empty() {
        Body::parse(request.body)
    } else {
        Body::parse_caption(request.body)
    }
    .map_err(|error| RequestError::new("invalid_body", format!("body: {error}")).field("body"))?;
    let scope = tenant
        .scope(request.brand.as_deref(), request.campaign.as_deref())
        .map_err(|error| {
            RequestError::new(
                "unknown_scope",
                format!("{}: {}", error.field, error.message),
            )
            .field(error.field)
        })?;
    // A sender that sends for one brand only sends at that brand's scope: a STOP to it (an
    // opt-out of the brand) must block what it sends, whether or not the request names it.
    let sender_scope = tenant.scope_of_sender(&from);
    let scope = match (&sender_scope.brand, &scope.brand) {
        (Some(_), None) => sender_scope,
        (Some(own), Some(named)) if own != named => {
            return Err(RequestError::new(
                "unknown_scope",
                format!("from: this sender sends for brand {own} only, not {named}"),
            )
            .field("brand"));
        }
        _ => scope,
    };
    Ok(CanonicalMessage {
        id: MessageId::new(),
        tenant: tenant.id.clone(),
        to,
        from,
        body,
        purpose,
        scope,
        reply: None,
        status_callback: None,
        send_at,
        media,
    })
}

/// The token's narrowing of the tenant's senders and purposes. A sender in the token that does
/// not parse matches nothing, so it can only narrow.
pub fn sender_bounds(principal: &Principal, tenant: &Tenant) -> SenderBounds {
    SenderBounds {
        senders: principal.senders.as_ref().map(|senders| {
            senders
                .iter()
                .filter_map(|sender| Sender::parse(sender, tenant.default_region).ok())
                .collect()
        }),
        purposes: principal.purposes.clone(),
    }
}
