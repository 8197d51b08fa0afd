//! Gateway-compatible fronts: an application keeps its Twilio, Telnyx or Vonage SDK and changes
//! only its base URL. Each front parses the gateway's own request into the native send request,
//! runs the one send flow (`flow::send::process`), and answers in the gateway's own shapes —
//! denials with the gateway's error codes where one means the same, documented consentry codes
//! otherwise.
//!
//! - Twilio: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (form), and
//!   `GET .../Messages/{Sid}.json`; the JWT is the Basic-auth password (the username must be the
//!   account SID of the path) or a Bearer token.
//! - Telnyx: `POST /v2/messages` (JSON), `DELETE /v2/messages/{id}` (cancel), Bearer JWT.
//! - Vonage: `POST /sms/json` (form or JSON); the JWT as `api_secret`, as the Basic-auth
//!   password (the current Vonage SDKs), or Bearer.
//!
//! The purpose comes from the `X-Consentry-Purpose` header, else from the token when its
//! `purposes` claim names exactly one, else the tenant's `default_purpose`;
//! `X-Consentry-Brand` and `X-Consentry-Campaign` give the scope. The JWT bounds all of them. A
//! field given twice is refused, never guessed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body as RequestBody;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::auth::{Principal, scope};
use crate::config::Tenant;
use crate::config::UpstreamKind;
use crate::dialect::{telnyx, twilio, vonage};
use crate::domain::MessageId;
use crate::flow::request::{SendRequest, canonical_message, sender_bounds};
use crate::flow::{
    self,
    send::{Delivery, Processed},
};
use crate::http::error::ApiError;
use crate::http::extract::Path;
use crate::http::idempotency::{self, Begun};
use crate::http::messages::read_body_any;
use crate::state::AppState;
use crate::store::MessageStatus;
use crate::upstream::Upstream;

/// What a front's send came to, before it is rendered in the dialect.
enum Outcome {
    Accepted { id: MessageId, status: &'static str },
    Refused(ApiError),
}

fn json_response(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

/// Parses a form body, refusing a field given twice.
fn form_fields(bytes: &[u8]) -> Result<BTreeMap<String, String>, ApiError> {
    Ok(form_fields_with_list(bytes, "")?.0)
}

/// Parses a form body in which `list` may be given many times (Twilio's `MediaUrl`): its
/// values in order, and every other field once.
fn form_fields_with_list(
    bytes: &[u8],
    list: &str,
) -> Result<(BTreeMap<String, String>, Vec<String>), ApiError> {
    let mut fields = BTreeMap::new();
    let mut listed = Vec::new();
    for (name, value) in form_urlencoded::parse(bytes) {
        if !list.is_empty() && name == list {
            listed.push(value.into_owned());
            continue;
        }
        if fields
            .insert(name.to_string(), value.into_owned())
            .is_some()
        {
            return Err(ApiError::bad_request(
                "duplicate_parameter",
                format!("{name} is given more than once"),
            )
            .with("field", name.to_string()));
        }
    }
    Ok((fields, listed))
}

/// A number field of a form: a leading space is a `+` that was not URL-encoded.
fn number_field(value: &str, code: &'static str, name: &str) -> Result<String, ApiError> {
    if value.starts_with(' ') && value.trim_start().starts_with(|c: char| c.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            code,
            format!("{name} begins with a space: a '+' sent unencoded in a form decodes to a space; send it as %2B"),
        )
        .with("field", name.to_owned()));
    }
    Ok(value.to_owned())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// What a front's request may add to the text: the Twilio front's status callback, scheduled
/// time and media, Telnyx's media.
#[derive(Default)]
struct Extras {
    status_callback: Option<crate::domain::StatusCallback>,
    send_at: Option<jiff::Timestamp>,
    media_urls: Vec<String>,
}

/// Builds the native request from a front's fields and runs the send flow.
#[allow(clippy::too_many_arguments)]
async fn send(
    state: &Arc<AppState>,
    principal: &Principal,
    tenant: &Tenant,
    headers: &HeaderMap,
    to: String,
    from: String,
    body: String,
    extras: Extras,
    recipient: &mut Option<String>,
) -> Outcome {
    let purpose = match header(headers, "x-consentry-purpose") {
        Some(purpose) => purpose.to_owned(),
        None => front_purpose(principal, tenant).as_str().to_owned(),
    };
    let request = SendRequest {
        to,
        from,
        body,
        purpose,
        brand: header(headers, "x-consentry-brand").map(str::to_owned),
        campaign: header(headers, "x-consentry-campaign").map(str::to_owned),
        send_at: None,
        media_urls: extras.media_urls,
    };
    let mut message = match canonical_message(state, request, tenant, state.clock.now()) {
        Ok(message) => message,
        Err(error) => return Outcome::Refused(error.into()),
    };
    message.status_callback = extras.status_callback;
    message.send_at = extras.send_at;
    *recipient = Some(state.numbers.hash(&message.to));
    let bounds = sender_bounds(principal, tenant);
    match flow::send::process(state, tenant, &bounds, message, Delivery::Upstream).await {
        Ok(Processed::Sent { id, .. }) => Outcome::Accepted {
            id,
            status: "queued",
        },
        // Waiting for the gateway's throughput is what a gateway calls queued; a message held
        // for a time (its own, or a window's) is scheduled.
        Ok(Processed::Scheduled(deferral)) => Outcome::Accepted {
            status: match deferral.reasons.first().map(|reason| reason.code) {
                Some(crate::policy::ReasonCode::Paced) => "queued",
                _ => "scheduled",
            },
            id: deferral.message.id,
        },
        Ok(Processed::Requeued { id, .. }) => Outcome::Accepted {
            id,
            status: "queued",
        },
        Ok(Processed::Denied(denial)) => {
            let headline = &denial.reasons[0];
            Outcome::Refused(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    headline.code.as_str(),
                    headline.detail.clone(),
                )
                .with("id", denial.message.id.as_str()),
            )
        }
        Ok(Processed::Failed { id, error }) => {
            Outcome::Refused(ApiError::from(error).with("id", id.as_str()))
        }
        Ok(Processed::Answered { id, .. }) => Outcome::Accepted {
            id,
            status: "queued",
        },
        Err(error) => Outcome::Refused(error.into()),
    }
}

/// The purpose of a front message that names none (no `X-Consentry-Purpose`): the token's, if
/// its `purposes` claim names exactly one (an SDK that cannot set a header still sends for the
/// one purpose it is allowed), else the tenant's `default_purpose`.
fn front_purpose(principal: &Principal, tenant: &Tenant) -> crate::domain::Purpose {
    let mut named = principal.purposes.iter().flatten();
    match (named.next(), named.next()) {
        (Some(only), None) => *only,
        _ => tenant.default_purpose,
    }
}

/// What a front request's `Authorization` header carries.
enum HeaderCredential {
    /// `Bearer <JWT>`.
    Bearer(String),
    /// `Basic base64(user:password)` (RFC 7617): the gateway's account id or API key as the
    /// user, the JWT as the password.
    Basic { user: String, password: String },
}

/// Reads the `Authorization` header: `None` when there is none. A scheme other than Bearer or
/// Basic is a missing token, as on the native API; Basic that does not decode is malformed.
fn header_credential(headers: &HeaderMap) -> Result<Option<HeaderCredential>, ApiError> {
    use crate::auth::AuthError;
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, rest) = value.trim().split_once(' ').ok_or(AuthError::Missing)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(HeaderCredential::Bearer(rest.trim().to_owned())));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::Missing.into());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(AuthError::Malformed)?;
    let (user, password) = decoded.split_once(':').ok_or(AuthError::Malformed)?;
    Ok(Some(HeaderCredential::Basic {
        user: user.to_owned(),
        password: password.to_owned(),
    }))
}

/// The principal of a Twilio request: Basic (username = the path's account SID, password = the
/// JWT) or Bearer.
fn twilio_principal(
    state: &AppState,
    headers: &HeaderMap,
    account_sid: &str,
) -> Result<Principal, ApiError> {
    match header_credential(headers)? {
        Some(HeaderCredential::Basic { user, password }) => {
            if user != account_sid {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "wrong_account",
                    "the account SID in the path is not the one the request authenticates as",
                ));
            }
            Ok(state.verifier.verify(&password)?)
        }
        Some(HeaderCredential::Bearer(token)) => Ok(state.verifier.verify(&token)?),
        None => Err(crate::auth::AuthError::Missing.into()),
    }
}

/// The JWT of a Vonage request, from the form's `api_secret` (Vonage's SMS API in the body) or
/// the `Authorization` header: Basic, as Vonage's current SDKs send the key and secret (the
/// JWT as the password; the user, Vonage's API key, is not read, as the form's `api_key` is
/// not), or Bearer. Two different tokens are refused, never chosen between.
fn vonage_token(headers: &HeaderMap, form_secret: Option<String>) -> Result<String, ApiError> {
    let from_header = header_credential(headers)?.map(|credential| match credential {
        HeaderCredential::Bearer(token) => token,
        HeaderCredential::Basic { password, .. } => password,
    });
    match (form_secret, from_header) {
        (Some(form), Some(header)) if form != header => Err(ApiError::bad_request(
            "duplicate_parameter",
            "credentials are given twice, in api_secret and in the Authorization header, and differ",
        )
        .with("field", "api_secret")),
        (Some(token), _) | (None, Some(token)) => Ok(token),
        (None, None) => Err(crate::auth::AuthError::Missing.into()),
    }
}

pub async fn twilio_create(
    State(state): State<Arc<AppState>>,
    account_sid: Path<String>,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let mut held = None;
    let mut recipient = None;
    let rendered = async {
        let account_sid = account_sid.get()?;
        let principal = twilio_principal(&state, &headers, &account_sid)?;
        let (principal, tenant) = state.admit(principal, scope::SEND)?;
        let bytes = read_body_any(&headers, body, state.max_request_bytes).await?;
        match idempotency::begin(
            &state,
            tenant,
            &headers,
            &["i-twilio-idempotency-token"],
            &format!("twilio {account_sid}"),
            &bytes,
        )
        .await?
        {
            Begun::Answer(answer) => return Ok(answer),
            Begun::Held(key) => held = Some(key),
            Begun::Unkeyed => {}
        }
        let (mut fields, media_urls) = form_fields_with_list(&bytes, "MediaUrl")?;
        let status_callback = match fields.remove("StatusCallback") {
            None => None,
            Some(url) => {
                if tenant.status_callback_secret.is_none() {
                    return Err(ApiError::bad_request(
                        "unsupported_parameter",
                        "StatusCallback needs the tenant's status_callback_secret, which signs the callbacks",
                    )
                    .with("field", "StatusCallback"));
                }
                crate::config::check_upstream_url(&url).map_err(|message| {
                    ApiError::bad_request("invalid_request", format!("StatusCallback: {message}"))
                        .with("field", "StatusCallback")
                })?;
                Some(crate::domain::StatusCallback {
                    url,
                    account_sid: account_sid.clone(),
                })
            }
        };
        let send_at = twilio_schedule(&mut fields, state.clock.now())?;
        for unsupported in ["ContentSid"] {
            if fields.contains_key(unsupported) {
                return Err(ApiError::bad_request(
                    "unsupported_parameter",
                    format!("{unsupported} is not supported by consentry"),
                )
                .with("field", unsupported));
            }
        }
        let to = fields.remove("To").ok_or_else(|| {
            ApiError::bad_request("missing_to", "A 'To' phone number is required.")
        })?;
        let to = number_field(&to, "invalid_recipient", "To")?;
        let mut messaging_service = false;
        let from = match (fields.remove("From"), fields.remove("MessagingServiceSid")) {
            (Some(from), _) => number_field(&from, "invalid_sender", "From")?,
            // A messaging service sends from the tenant's first sender.
            (None, Some(_)) => {
                messaging_service = true;
                tenant.rules.senders[0].as_str().to_owned()
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "missing_from",
                    "A 'From' phone number or a 'MessagingServiceSid' is required.",
                ));
            }
        };
        // Body, MediaUrl or both, as on Twilio.
        let text = fields
            .remove("Body")
            .filter(|body| !body.is_empty() || !media_urls.is_empty())
            .or_else(|| (!media_urls.is_empty()).then(String::new))
            .ok_or_else(|| ApiError::bad_request("missing_body", "Message body is required."))?;
        let num_media = media_urls.len();
        if send_at.is_some() && !messaging_service {
            return Err(ApiError::bad_request(
                "schedule_needs_messaging_service",
                "A scheduled message is sent through a MessagingServiceSid, as on Twilio.",
            )
            .with("field", "MessagingServiceSid"));
        }
        Ok::<_, ApiError>(
            match send(
                &state,
                &principal,
                tenant,
                &headers,
                to.clone(),
                from.clone(),
                text.clone(),
                Extras {
                    status_callback,
                    send_at,
                    media_urls,
                },
                &mut recipient,
            )
            .await
            {
                Outcome::Accepted { id, status } => {
                    // Twilio answers a send through a messaging service `accepted`.
                    let status = match status {
                        "queued" if messaging_service => "accepted",
                        other => other,
                    };
                    let canonical_to =
                        crate::domain::PhoneNumber::parse(&to, tenant.default_region)
                            .map(|n| n.e164().to_owned())
                            .unwrap_or(to);
                    let mut resource = twilio::message_resource(
                        &account_sid,
                        &id,
                        &canonical_to,
                        &from,
                        &text,
                        status,
                        state.clock.now(),
                        None,
                    );
                    resource["num_media"] = num_media.to_string().into();
                    json_response(201, resource)
                }
                Outcome::Refused(error) => twilio_error(&error),
            },
        )
    }
    .await;
    let response = rendered.unwrap_or_else(|error| twilio_error(&error));
    finish(&state, held, response, recipient).await
}

/// Keeps a keyed request's answer for its retries (`http::idempotency`).
async fn finish(
    state: &AppState,
    held: Option<idempotency::Held>,
    response: Response,
    recipient: Option<String>,
) -> Response {
    match held {
        Some(key) => key.finish(state, response, recipient).await,
        None => response,
    }
}

/// Twilio's scheduling fields: `ScheduleType=fixed` with `SendAt`, more than 300 s and at
/// most 35 days ahead (Twilio's own window), or neither.
fn twilio_schedule(
    fields: &mut BTreeMap<String, String>,
    now: jiff::Timestamp,
) -> Result<Option<jiff::Timestamp>, ApiError> {
    match (fields.remove("ScheduleType"), fields.remove("SendAt")) {
        (None, None) => Ok(None),
        (Some(kind), _) if kind != "fixed" => Err(ApiError::bad_request(
            "unsupported_schedule_type",
            format!("ScheduleType {kind} is not supported; the only one is 'fixed'"),
        )
        .with("field", "ScheduleType")),
        (Some(_), None) => Err(ApiError::bad_request(
            "missing_send_at",
            "SendAt is required when ScheduleType is 'fixed'.",
        )
        .with("field", "SendAt")),
        (None, Some(_)) => Err(ApiError::bad_request(
            "missing_schedule_type",
            "SendAt needs ScheduleType=fixed; without it the message would not be held.",
        )
        .with("field", "ScheduleType")),
        (Some(_), Some(at)) => crate::flow::request::send_at(
            &at,
            now,
            jiff::SignedDuration::from_secs(TWILIO_MIN_LEAD_SECONDS),
            "SendAt",
        )
        .map(Some)
        .map_err(ApiError::from),
    }
}

/// How far ahead Twilio requires `SendAt` to be.
const TWILIO_MIN_LEAD_SECONDS: i64 = 300;

fn twilio_error(error: &ApiError) -> Response {
    let (status, body) = twilio::error_body(error.code, &error.message);
    error.mark(json_response(status, body))
}

pub async fn twilio_fetch(
    State(state): State<Arc<AppState>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let rendered = async {
        let (account_sid, file) = path.get()?;
        let principal = twilio_principal(&state, &headers, &account_sid)?;
        let (principal, tenant) = state.admit(principal, scope::READ_MESSAGES)?;
        let id = twilio_message_id(&file)?;
        let view = state
            .messages()
            .message(&principal.tenant, &id)
            .await?
            .ok_or_else(twilio_not_found)?;
        twilio_resource(&state, &principal, tenant, &account_sid, &id, view).await
    }
    .await;
    rendered.unwrap_or_else(|error| twilio_error(&error))
}

/// Twilio's update of a message: `Status=canceled` calls off a scheduled message (scope
/// `messages:send`) and answers the message resource, `canceled`; a message past `scheduled`
/// is Twilio's 30409. Redacting a body (`Body=""`) is not supported: consentry keeps it sealed.
pub async fn twilio_update(
    State(state): State<Arc<AppState>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let rendered = async {
        let (account_sid, file) = path.get()?;
        let principal = twilio_principal(&state, &headers, &account_sid)?;
        let (principal, tenant) = state.admit(principal, scope::SEND)?;
        let id = twilio_message_id(&file)?;
        let bytes = read_body_any(&headers, body, state.max_request_bytes).await?;
        let mut fields = form_fields(&bytes)?;
        match fields.remove("Status").as_deref() {
            Some("canceled") => {}
            Some(other) => {
                return Err(ApiError::bad_request(
                    "unsupported_parameter",
                    format!("Status {other}: the only update is Status=canceled"),
                )
                .with("field", "Status"));
            }
            None => {
                return Err(ApiError::bad_request(
                    "unsupported_parameter",
                    "the only update is Status=canceled",
                )
                .with("field", "Status"));
            }
        }
        if let Some(name) = fields.keys().next() {
            return Err(ApiError::bad_request(
                "unsupported_parameter",
                format!("{name} is not supported in an update"),
            )
            .with("field", name.clone()));
        }
        let view = flow::send::cancel(&state, &principal.tenant, &id)
            .await?
            .ok_or_else(twilio_not_found)?;
        let view = crate::http::messages::cancelled(view)?;
        twilio_resource(&state, &principal, tenant, &account_sid, &id, view).await
    }
    .await;
    rendered.unwrap_or_else(|error| twilio_error(&error))
}

fn twilio_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "message_not_found",
        "The requested resource was not found",
    )
}

/// The message id of a Twilio message path's last segment (`<Sid>.json`).
fn twilio_message_id(file: &str) -> Result<MessageId, ApiError> {
    let sid = file.strip_suffix(".json").ok_or_else(twilio_not_found)?;
    twilio::message_id_of_sid(sid).ok_or_else(twilio_not_found)
}

/// A message as Twilio's message resource.
async fn twilio_resource(
    state: &AppState,
    principal: &Principal,
    tenant: &Tenant,
    account_sid: &str,
    id: &MessageId,
    view: crate::store::MessageView,
) -> Result<Response, ApiError> {
    // The body and the full numbers are sealed together; they are opened (and the read
    // logged, before it happens) for a token that may decrypt bodies, or for any reader
    // where the tenant chose Twilio's behaviour. Otherwise, and once the recipient was
    // erased, the masked numbers and an empty body.
    let sealed = || (view.recipient.clone(), view.sender.clone(), String::new());
    let (to, from, body) = if principal.has_scope(scope::AUDIT_DECRYPT) || tenant.twilio_fetch_body
    {
        flow::send::message_content(state, &principal.tenant, id, &principal.subject)
            .await?
            .unwrap_or_else(sealed)
    } else {
        sealed()
    };
    let status = twilio::message_status(view.status);
    let created = jiff::Timestamp::from_microsecond(view.created_at_us).unwrap_or_default();
    // Twilio gives an error code with a failed or undelivered message only: for a denial
    // the headline reason's, else the outcome's. A Twilio gateway's own numeric code is
    // passed on as it is; consentry's codes (a failed forward) are translated.
    let from_twilio = view
        .upstream
        .as_deref()
        .and_then(|name| state.upstreams.get(name))
        .is_some_and(|upstream| {
            matches!(upstream, Upstream::Gateway(gateway) if gateway.kind == UpstreamKind::Twilio)
        });
    let error = match view.status {
        MessageStatus::Denied => view.reasons[0]["code"].as_str(),
        MessageStatus::Failed | MessageStatus::Undelivered => view.error_code.as_deref(),
        _ => None,
    }
    .map(|code| match code.parse::<u32>() {
        Ok(number) if from_twilio => (number, code),
        _ => (twilio::front_error(code).1, code),
    });
    Ok(json_response(
        200,
        twilio::message_resource(account_sid, id, &to, &from, &body, status, created, error),
    ))
}

/// The Telnyx send request: the fields consentry reads; a field given twice is refused.
#[derive(Debug, serde::Deserialize)]
struct TelnyxSend {
    from: Option<String>,
    to: Option<String>,
    text: Option<String>,
    media_urls: Option<Vec<String>>,
    messaging_profile_id: Option<String>,
    /// Telnyx's scheduled send (ISO 8601): held until then, like the native `send_at`.
    send_at: Option<String>,
}

pub async fn telnyx_send(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let mut held = None;
    let mut recipient = None;
    let rendered = async {
        let (principal, tenant) = state.authorize(&headers, scope::SEND)?;
        let bytes = read_body_any(&headers, body, state.max_request_bytes).await?;
        match idempotency::begin(&state, tenant, &headers, &[], "telnyx", &bytes).await? {
            Begun::Answer(answer) => return Ok(answer),
            Begun::Held(key) => held = Some(key),
            Begun::Unkeyed => {}
        }
        let request: TelnyxSend = serde_json::from_slice(&bytes).map_err(|e| {
            let code = if e.to_string().contains("duplicate field") {
                "duplicate_parameter"
            } else {
                "invalid_request"
            };
            ApiError::bad_request(code, format!("the request is not valid: {e}"))
        })?;
        let media_urls = request.media_urls.unwrap_or_default();
        // Never ignored: a send_at dropped would send the message early.
        let send_at = request
            .send_at
            .as_deref()
            .map(|text| {
                crate::flow::request::send_at(
                    text,
                    state.clock.now(),
                    jiff::SignedDuration::ZERO,
                    "send_at",
                )
            })
            .transpose()?;
        let to = request
            .to
            .ok_or_else(|| ApiError::bad_request("missing_to", "to is required"))?;
        let from = match (request.from, request.messaging_profile_id) {
            (Some(from), _) => from,
            (None, Some(_)) => tenant.rules.senders[0].as_str().to_owned(),
            (None, None) => {
                return Err(ApiError::bad_request(
                    "missing_from",
                    "from or messaging_profile_id is required",
                ));
            }
        };
        // An MMS may have no text.
        let text = request
            .text
            .filter(|text| !text.is_empty() || !media_urls.is_empty())
            .or_else(|| (!media_urls.is_empty()).then(String::new))
            .ok_or_else(|| ApiError::bad_request("missing_body", "text is required"))?;
        Ok::<_, ApiError>(
            match send(
                &state,
                &principal,
                tenant,
                &headers,
                to.clone(),
                from.clone(),
                text.clone(),
                Extras {
                    media_urls,
                    send_at,
                    ..Extras::default()
                },
                &mut recipient,
            )
            .await
            {
                Outcome::Accepted { id, status } => {
                    let to = crate::domain::PhoneNumber::parse(&to, tenant.default_region)
                        .map(|n| n.e164().to_owned())
                        .unwrap_or(to);
                    json_response(
                        200,
                        telnyx::message_resource(
                            &telnyx_id(&id),
                            &from,
                            &to,
                            &text,
                            status,
                            state.clock.now(),
                        ),
                    )
                }
                Outcome::Refused(error) => telnyx_error(&error),
            },
        )
    }
    .await;
    let response = rendered.unwrap_or_else(|error| telnyx_error(&error));
    finish(&state, held, response, recipient).await
}

/// Telnyx's cancellation of a scheduled message, `DELETE /v2/messages/{id}` (scope
/// `messages:send`): the native cancel, answered as Telnyx's message with the recipient's
/// status `cancelled`; a message past `scheduled` is refused (`not_cancellable`).
pub async fn telnyx_cancel(
    State(state): State<Arc<AppState>>,
    id: Path<String>,
    headers: HeaderMap,
) -> Response {
    let rendered = async {
        let (principal, _tenant) = state.authorize(&headers, scope::SEND)?;
        let not_found = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "message_not_found",
                "Resource not found",
            )
        };
        let uuid = uuid::Uuid::try_parse(&id.get()?).map_err(|_| not_found())?;
        let id = MessageId::parse(&format!("msg_{}", uuid.simple())).ok_or_else(not_found)?;
        let view = flow::send::cancel(&state, &principal.tenant, &id)
            .await?
            .ok_or_else(not_found)?;
        let view = crate::http::messages::cancelled(view)?;
        let created = jiff::Timestamp::from_microsecond(view.created_at_us).unwrap_or_default();
        Ok::<_, ApiError>(json_response(
            200,
            telnyx::message_resource(
                &telnyx_id(&id),
                &view.sender,
                &view.recipient,
                "",
                "cancelled",
                created,
            ),
        ))
    }
    .await;
    rendered.unwrap_or_else(|error| telnyx_error(&error))
}

/// Telnyx ids are UUIDs: the same 128 bits as the consentry id.
fn telnyx_id(id: &MessageId) -> String {
    uuid::Uuid::try_parse(id.as_str().trim_start_matches("msg_"))
        .map(|uuid| uuid.hyphenated().to_string())
        .unwrap_or_else(|_| id.to_string())
}

fn telnyx_error(error: &ApiError) -> Response {
    let (status, body) = telnyx::error_body(error.code, &error.message);
    error.mark(json_response(status, body))
}

/// The Vonage JSON request: the fields consentry reads.
#[derive(Debug, serde::Deserialize)]
struct VonageJson {
    api_key: Option<String>,
    api_secret: Option<String>,
    from: Option<String>,
    to: Option<String>,
    text: Option<String>,
}

pub async fn vonage_send(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let mut recipient = String::new();
    let mut held = None;
    let mut recipient_hash = None;
    let rendered = async {
        // Credentials in the header are checked before the body is read; only a client that
        // puts them in the body (Vonage's API allows api_secret there) has its body read first.
        if let Some(credential) = header_credential(&headers)? {
            let token = match credential {
                HeaderCredential::Bearer(token) => token,
                HeaderCredential::Basic { password, .. } => password,
            };
            let principal = state.verifier.verify(&token)?;
            state.admit(principal, scope::SEND)?;
        }
        let bytes = read_body_any(&headers, body, state.max_request_bytes).await?;
        let is_json = header(&headers, "content-type").is_some_and(crate::http::messages::is_json);
        let mut fields = if is_json {
            // Typed, so that a field given twice is an error, as in a form.
            let request: VonageJson = serde_json::from_slice(&bytes).map_err(|e| {
                let code = if e.to_string().contains("duplicate field") {
                    "duplicate_parameter"
                } else {
                    "invalid_request"
                };
                ApiError::bad_request(code, format!("the request is not valid: {e}"))
            })?;
            [
                ("api_key", request.api_key),
                ("api_secret", request.api_secret),
                ("from", request.from),
                ("to", request.to),
                ("text", request.text),
            ]
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_owned(), value?)))
            .collect()
        } else {
            form_fields(&bytes)?
        };
        let token = vonage_token(&headers, fields.remove("api_secret"))?;
        let principal = state.verifier.verify(&token)?;
        let (principal, tenant) = state.admit(principal, scope::SEND)?;
        match idempotency::begin(&state, tenant, &headers, &[], "vonage", &bytes).await? {
            Begun::Answer(answer) => return Ok(answer),
            Begun::Held(key) => held = Some(key),
            Begun::Unkeyed => {}
        }
        let to = fields
            .remove("to")
            .ok_or_else(|| ApiError::bad_request("missing_to", "Missing to param"))?;
        recipient = to.clone();
        let to = number_field(&to, "invalid_recipient", "to")?;
        // Vonage numbers come without '+'; read them as international.
        let to = if to.starts_with('+') {
            to
        } else {
            format!("+{to}")
        };
        let from = fields
            .remove("from")
            .ok_or_else(|| ApiError::bad_request("missing_from", "Missing from param"))?;
        let from = if from.chars().all(|c| c.is_ascii_digit()) && from.len() > 8 {
            format!("+{from}")
        } else {
            from
        };
        let text = fields
            .remove("text")
            .filter(|text| !text.is_empty())
            .ok_or_else(|| ApiError::bad_request("missing_body", "Missing text param"))?;
        Ok::<_, ApiError>(
            match send(
                &state,
                &principal,
                tenant,
                &headers,
                to.clone(),
                from,
                text,
                Extras::default(),
                &mut recipient_hash,
            )
            .await
            {
                Outcome::Accepted { id, status } => json_response(
                    200,
                    vonage::front_answer(&to, Some(id.as_str()), "0", None, status),
                ),
                Outcome::Refused(error) => vonage_error(&to, &error),
            },
        )
    }
    .await;
    let response = rendered.unwrap_or_else(|error| vonage_error(&recipient, &error));
    finish(&state, held, response, recipient_hash).await
}

fn vonage_error(to: &str, error: &ApiError) -> Response {
    let status = vonage::status_for(error.code);
    let text = format!("{}: {}", error.code, error.message);
    error.mark(json_response(
        200,
        vonage::front_answer(to, None, status, Some(&text), error.code),
    ))
}
