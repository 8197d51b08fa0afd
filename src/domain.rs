//! Parsed domain types. Each is built by a `parse` function at the edge and cannot hold an
//! invalid value afterwards: once code holds a [`PhoneNumber`], it is a valid E.164 number.
//!
//! Nothing here does IO. Phone numbers never print in full through `Debug` or `Display`
//! (see [`PhoneNumber::masked`]): a full number must not reach logs or metrics.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A valid phone number in E.164 form (`+14155550123`), with its country.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber {
    e164: String,
    /// ISO 3166-1 alpha-2, when the country code names one country.
    country: Option<String>,
    /// The country calling code (`1`, `44`).
    calling_code: u16,
    /// Whether its prefix says where it is (a fixed line, not a nationwide mobile or toll-free).
    geographic: bool,
}

/// Why a phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("not a phone number")]
    Unparseable,
    #[error("not a valid number for its country")]
    Invalid,
}

impl PhoneNumber {
    /// Parses any common written form: `(415) 555-0123`, `415.555.0123`, `+1 415 555 0123`,
    /// `14155550123`. National forms are read in `default_region` (ISO 3166 alpha-2).
    pub fn parse(input: &str, default_region: Region) -> Result<Self, NumberError> {
        let trimmed = input.trim();
        if trimmed.is_empty() || trimmed.len() > 64 {
            return Err(NumberError::Unparseable);
        }
        let parsed =
            crate::numbering::parse(trimmed, default_region.0).map_err(
                |refusal| match refusal {
                    crate::numbering::Refusal::Unparseable => NumberError::Unparseable,
                    crate::numbering::Refusal::Invalid => NumberError::Invalid,
                },
            )?;
        Ok(PhoneNumber {
            e164: parsed.e164,
            country: parsed.country,
            calling_code: parsed.calling_code,
            geographic: parsed.geographic,
        })
    }

    /// The E.164 string. Only for building upstream requests and for encryption: never log it.
    pub fn e164(&self) -> &str {
        &self.e164
    }

    /// The country calling code: `1` for `+14155550123`.
    pub fn calling_code(&self) -> u16 {
        self.calling_code
    }

    /// Whether the number's leading digits say where it is, in libphonenumber's sense: fixed
    /// lines, and mobiles only where mobile numbers carry an area code (Brazil, Mexico...).
    pub fn is_geographic(&self) -> bool {
        self.geographic
    }

    /// The ISO 3166-1 alpha-2 code of the number's country, if the country code names one.
    pub fn country(&self) -> Option<&str> {
        self.country.as_deref()
    }

    /// The number with its last four digits hidden (`+1415555****`): safe for logs and the
    /// database's readable columns.
    pub fn masked(&self) -> String {
        mask_tail(&self.e164)
    }
}

fn mask_tail(text: &str) -> String {
    let keep = text.chars().count().saturating_sub(4);
    text.chars()
        .enumerate()
        .map(|(index, c)| if index < keep { c } else { '*' })
        .collect()
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

/// A region for reading national number forms, e.g. `US`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Region(phonenumber::country::Id);

impl Region {
    pub const US: Region = Region(phonenumber::country::Id::US);

    pub fn code(&self) -> String {
        format!("{:?}", self.0)
    }
}

impl FromStr for Region {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        phonenumber::country::Id::from_str(&s.to_ascii_uppercase())
            .map(Region)
            .map_err(|_| format!("unknown region {s:?} (expected an ISO 3166 code such as US)"))
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Who a message is from, in one of the forms gateways accept.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Sender {
    /// A long code in E.164 form.
    Number(PhoneNumber),
    /// A short code: 3 to 8 digits.
    ShortCode(String),
    /// An alphanumeric sender ID: 1 to 11 of `A-Z a-z 0-9 space - . _ &`, at least one letter.
    Alphanumeric(String),
}

impl Sender {
    /// Parses a sender. A `+` or a form with 9 or more digits is a number (read in
    /// `default_region`); 3 to 8 bare digits are a short code; otherwise an alphanumeric ID.
    pub fn parse(input: &str, default_region: Region) -> Result<Self, String> {
        let text = input.trim();
        let digits = text.chars().filter(char::is_ascii_digit).count();
        let only_digits = !text.is_empty() && text.chars().all(|c| c.is_ascii_digit());
        if only_digits && (3..=8).contains(&digits) {
            return Ok(Sender::ShortCode(text.to_owned()));
        }
        let has_letter = text.chars().any(|c| c.is_ascii_alphabetic());
        if !has_letter && (text.starts_with('+') || digits >= 9) {
            return PhoneNumber::parse(text, default_region)
                .map(Sender::Number)
                .map_err(|error| format!("sender is not a valid number: {error}"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || " -._&".contains(c);
        if has_letter && (1..=11).contains(&text.len()) && text.chars().all(allowed) {
            return Ok(Sender::Alphanumeric(text.to_owned()));
        }
        Err("sender must be an E.164 number, a short code or an alphanumeric ID of at most 11 characters".into())
    }

    /// The form sent to a gateway.
    pub fn as_str(&self) -> &str {
        match self {
            Sender::Number(number) => number.e164(),
            Sender::ShortCode(code) | Sender::Alphanumeric(code) => code,
        }
    }

    /// A form safe for logs and readable database columns.
    pub fn masked(&self) -> String {
        match self {
            Sender::Number(number) => number.masked(),
            Sender::ShortCode(code) | Sender::Alphanumeric(code) => code.clone(),
        }
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sender({})", self.masked())
    }
}

/// Why a message is sent. Each policy says what each purpose needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Marketing,
    Informational,
    Transactional,
}

impl Purpose {
    pub const ALL: [Purpose; 3] = [
        Purpose::Marketing,
        Purpose::Informational,
        Purpose::Transactional,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Purpose::Marketing => "marketing",
            Purpose::Informational => "informational",
            Purpose::Transactional => "transactional",
        }
    }
}

impl FromStr for Purpose {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Purpose::ALL
            .into_iter()
            .find(|purpose| purpose.as_str() == s)
            .ok_or_else(|| {
                format!("unknown purpose {s:?} (marketing, informational or transactional)")
            })
    }
}

/// A tenant's identifier: 1 to 64 of `a-z 0-9 - _`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(input: &str) -> Result<Self, String> {
        let valid = (1..=64).contains(&input.len())
            && input
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if valid {
            Ok(TenantId(input.to_owned()))
        } else {
            Err(format!(
                "tenant id {input:?} must be 1 to 64 characters of a-z, 0-9, '-' and '_'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a tenant's configuration allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRules {
    pub senders: Vec<Sender>,
    pub purposes: BTreeSet<Purpose>,
}

/// A message's identifier, `msg_` followed by a time-ordered UUID (v7) in hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct MessageId(String);

impl MessageId {
    pub fn new() -> Self {
        MessageId(format!("msg_{}", uuid::Uuid::now_v7().simple()))
    }

    pub fn parse(input: &str) -> Option<Self> {
        let hex = input.strip_prefix("msg_")?;
        uuid::Uuid::try_parse(hex).ok()?;
        Some(MessageId(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The largest body accepted, in characters: ten concatenated GSM segments, as gateways allow.
pub const MAX_BODY_CHARS: usize = 1600;

/// A message body of 1 to [`MAX_BODY_CHARS`] characters. Never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Body(String);

impl Body {
    pub fn parse(input: String) -> Result<Self, String> {
        let count = input.chars().count();
        if count == 0 || input.trim().is_empty() {
            return Err("body must not be empty".into());
        }
        if count > MAX_BODY_CHARS {
            return Err(format!(
                "body has {count} characters; at most {MAX_BODY_CHARS} are allowed"
            ));
        }
        Ok(Body(input))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Body {
    /// The text of an MMS, which may be empty when it carries media (at most
    /// [`MAX_BODY_CHARS`] characters all the same).
    pub fn parse_caption(input: String) -> Result<Self, String> {
        if input.is_empty() {
            return Ok(Body(input));
        }
        Body::parse(input)
    }
}

/// The most media one message carries (Twilio's limit).
pub const MAX_MEDIA: usize = 10;
/// The longest media URL accepted.
pub const MAX_MEDIA_URL_BYTES: usize = 2048;

/// A media URL of an MMS: an absolute `https://` or `http://` URL with a host, at most
/// [`MAX_MEDIA_URL_BYTES`]. consentry forwards it and never fetches it. Sealed with the body.
#[derive(Clone, PartialEq, Eq)]
pub struct MediaUrl(String);

impl MediaUrl {
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.len() > MAX_MEDIA_URL_BYTES {
            return Err(format!(
                "a media URL has at most {MAX_MEDIA_URL_BYTES} bytes"
            ));
        }
        let uri: http::Uri = input
            .parse()
            .map_err(|_| format!("{input:?} is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() {
            return Err("a media URL is an absolute https:// or http:// URL".into());
        }
        Ok(MediaUrl(input.to_owned()))
    }

    /// A message's media, from the request's list: at most [`MAX_MEDIA`].
    pub fn parse_all(inputs: &[String]) -> Result<Vec<MediaUrl>, String> {
        if inputs.len() > MAX_MEDIA {
            return Err(format!(
                "{} media URLs; at most {MAX_MEDIA} are allowed",
                inputs.len()
            ));
        }
        inputs.iter().map(|input| MediaUrl::parse(input)).collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MediaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MediaUrl(..)")
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Body({} chars)", self.0.chars().count())
    }
}

/// Where a consent event applies, or where a message is sent from: the whole tenant, a brand,
/// or a campaign of a brand. Scopes nest: the tenant contains its brands, a brand its campaigns.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Scope {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
}

impl Scope {
    pub fn tenant_wide() -> Scope {
        Scope::default()
    }

    /// Whether `inner` is this scope or inside it.
    pub fn contains(&self, inner: &Scope) -> bool {
        match (&self.brand, &self.campaign) {
            (None, _) => true,
            (Some(brand), None) => inner.brand.as_ref() == Some(brand),
            (Some(brand), Some(campaign)) => {
                inner.brand.as_ref() == Some(brand) && inner.campaign.as_ref() == Some(campaign)
            }
        }
    }

    /// A readable name: `tenant`, `brand:b`, `campaign:b/c`.
    pub fn label(&self) -> String {
        match (&self.brand, &self.campaign) {
            (None, _) => "tenant".into(),
            (Some(brand), None) => format!("brand:{brand}"),
            (Some(brand), Some(campaign)) => format!("campaign:{brand}/{campaign}"),
        }
    }
}

/// A message in the one form every dialect is turned into before it is decided on.
#[derive(Debug, Clone)]
pub struct CanonicalMessage {
    pub id: MessageId,
    pub tenant: TenantId,
    pub to: PhoneNumber,
    pub from: Sender,
    pub body: Body,
    pub purpose: Purpose,
    /// The brand and campaign the message is sent for; tenant-wide if neither is given.
    pub scope: Scope,
    /// Set when consentry answers a recipient's reply (STOP, START, HELP).
    pub reply: Option<Reply>,
    /// Where the application wants this message's delivery statuses (a Twilio-front
    /// `StatusCallback`), with the account SID it used. Not part of any decision.
    pub status_callback: Option<StatusCallback>,
    /// When the sender asked for it to leave (`send_at`, Twilio's `SendAt`): until then it is
    /// held, and every rule that depends on the time is applied at its release.
    pub send_at: Option<jiff::Timestamp>,
    /// An MMS's media, forwarded to gateways that take them; empty for an SMS.
    pub media: Vec<MediaUrl>,
}

/// An application's own status-callback URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCallback {
    pub url: String,
    pub account_sid: String,
}

/// The answer to a recipient's reply. Each has its own rule in `decide`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The one confirmation of the opt-out event with this id.
    OptOutConfirmation {
        opt_out_event: String,
    },
    OptInConfirmation,
    Help,
}

impl Reply {
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::OptOutConfirmation { .. } => "opt_out_confirmation",
            Reply::OptInConfirmation => "opt_in_confirmation",
            Reply::Help => "help",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_written_form_of_a_number_is_the_same_e164() {
        for form in [
            "(415) 555-0123",
            "415.555.0123",
            "+1 415 555 0123",
            "14155550123",
            " +1-415-555-0123 ",
        ] {
            let number = PhoneNumber::parse(form, Region::US).unwrap();
            assert_eq!(number.e164(), "+14155550123", "{form}");
        }
    }

    #[test]
    fn what_fuzzing_found_in_the_number_parser_stays_fixed() {
        // A French number with its country code, read by a US tenant: it was refused.
        let region = |code: &str| code.parse::<Region>().unwrap();
        let french = PhoneNumber::parse("100000000", region("FR")).unwrap();
        assert_eq!(french.e164(), "+33100000000");
        assert_eq!(
            PhoneNumber::parse(french.e164(), Region::US)
                .unwrap()
                .e164(),
            "+33100000000"
        );
        // More digits than E.164 allows, although the metadata calls them valid: refused.
        assert_eq!(
            PhoneNumber::parse("0303042690426910", region("DE")),
            Err(NumberError::Invalid)
        );
        assert_eq!(
            PhoneNumber::parse("+628006777777877778", Region::US),
            Err(NumberError::Invalid)
        );
    }

    #[test]
    fn invalid_numbers_are_refused() {
        assert_eq!(
            PhoneNumber::parse("12", Region::US),
            Err(NumberError::Unparseable)
        );
        assert!(PhoneNumber::parse("not a number", Region::US).is_err());
        assert!(PhoneNumber::parse("+1 000 000 0000", Region::US).is_err());
        assert!(PhoneNumber::parse("", Region::US).is_err());
    }

    #[test]
    fn numbers_never_print_in_full() {
        let number = PhoneNumber::parse("+14155550123", Region::US).unwrap();
        assert_eq!(number.masked(), "+1415555****");
        assert!(!format!("{number:?}").contains("0123"));
    }

    #[test]
    fn senders_take_the_forms_gateways_allow() {
        assert_eq!(
            Sender::parse("+1 202 555 0100", Region::US)
                .unwrap()
                .as_str(),
            "+12025550100"
        );
        assert!(matches!(
            Sender::parse("12345", Region::US),
            Ok(Sender::ShortCode(_))
        ));
        assert!(matches!(
            Sender::parse("ACME Shop", Region::US),
            Ok(Sender::Alphanumeric(_))
        ));
        assert!(Sender::parse("A much too long sender", Region::US).is_err());
        assert!(Sender::parse("", Region::US).is_err());
        assert!(Sender::parse("12", Region::US).is_err());
    }

    #[test]
    fn bodies_are_bounded() {
        assert!(Body::parse(String::new()).is_err());
        assert!(Body::parse("   ".into()).is_err());
        assert!(Body::parse("é".repeat(MAX_BODY_CHARS)).is_ok());
        assert!(Body::parse("a".repeat(MAX_BODY_CHARS + 1)).is_err());
    }

    #[test]
    fn message_ids_round_trip() {
        let id = MessageId::new();
        assert_eq!(MessageId::parse(id.as_str()), Some(id));
        assert_eq!(MessageId::parse("msg_nothex"), None);
    }
}
