//! Configuration: one TOML file, read into [`Config`] and checked into the runtime types the rest
//! of the program uses. Unknown keys are errors; every value has a safe default; secrets are
//! given by reference (`{ env = "NAME" }` or `{ file = "path" }`) and never reach `Debug`.
//!
//! With no file, consentry runs on [`EMBEDDED_DEFAULTS`]: a `demo` tenant on the built-in
//! `sandbox` gateway and the development token issuer, ready to try.
//!
//! Relative paths in a file are read relative to the directory of that file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::domain::{Purpose, Region, Scope, Sender, TenantId, TenantRules};

/// The configuration used when `serve` is given no `--config`.
pub const EMBEDDED_DEFAULTS: &str = r#"
data_dir = "./consentry-data"

[jwt]
dev_issuer = true

[[tenants]]
id = "demo"
senders = ["+12025550100"]
upstream = "sandbox"
purposes = ["marketing", "informational", "transactional"]
default_region = "US"
"#;

/// The issuer and audience of tokens minted by `consentry token`.
pub const DEV_ISSUER: &str = "consentry-dev";
pub const DEFAULT_AUDIENCE: &str = "consentry";
/// The name of the built-in simulated gateway.
pub const SANDBOX: &str = "sandbox";

/// A configuration error, naming the field (and for syntax errors, the line).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn field_error(field: impl fmt::Display, message: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{field}: {message}"))
}

/// The file as written. See docs/operators.md, "Configuration", for every key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub crypto: CryptoConfig,
    #[serde(default)]
    pub jwt: JwtConfig,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub policies: PoliciesConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// An optional reassigned-numbers lookup before marketing and informational sends on an
    /// old consent (`reassigned`).
    #[serde(default)]
    pub reassigned_numbers: Option<ReassignedNumbersConfig>,
    /// An optional SMPP 3.4 front for applications that submit over SMPP (`smpp`).
    #[serde(default)]
    pub smpp: Option<SmppConfig>,
}

/// The SMPP front: where it listens and who may bind (docs/operators.md, "SMPP").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmppConfig {
    /// The SMPP listener.
    #[serde(default = "default_smpp_listen")]
    pub listen: SocketAddr,
    /// TLS with the API's certificate (default); plain SMPP only on a loopback address,
    /// since a bind carries its password in the clear.
    #[serde(default = "default_true")]
    pub tls: bool,
    /// The most `submit_sm` of one session being decided at once; more get `ESME_RTHROTTLED`.
    #[serde(default = "default_smpp_window")]
    pub window: usize,
    /// A session on which no PDU arrives for this long is unbound and closed.
    #[serde(default = "default_smpp_idle")]
    pub idle_timeout_seconds: u64,
    /// How long the parts of a concatenated message wait for the rest before they are refused.
    #[serde(default = "default_smpp_reassembly")]
    pub reassembly_timeout_seconds: u64,
    /// A submit over the upstream's or the sender's pace: `queue` (default: accepted, recorded
    /// and released at the rate, as the HTTP API does) or `throttle` (answered
    /// `ESME_RTHROTTLED`, nothing recorded: the ESME sends it again later, as an SMSC's limit
    /// asks).
    #[serde(default)]
    pub when_paced: WhenPaced,
    /// Who may bind: one entry per `system_id`.
    #[serde(default)]
    pub accounts: Vec<SmppAccountConfig>,
}

/// What the SMPP front does with a submit over its pace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenPaced {
    #[default]
    Queue,
    Throttle,
}

/// One SMPP `system_id`, the tenant it sends for, and what narrows it (as a token's claims do).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmppAccountConfig {
    pub system_id: String,
    pub tenant: String,
    /// The password's hash, as `consentry smpp-password` prints it (`pbkdf2-sha256$...`).
    pub password_hash: String,
    /// The purpose of its messages (SMPP has no field for it); default: the tenant's.
    pub purpose: Option<String>,
    /// Senders it may use; default: all of the tenant's.
    pub senders: Option<Vec<String>>,
}

fn default_smpp_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 2775))
}
fn default_smpp_window() -> usize {
    64
}
fn default_smpp_idle() -> u64 {
    120
}
fn default_smpp_reassembly() -> u64 {
    60
}

impl SmppConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if !self.tls && !self.listen.ip().is_loopback() {
            return Err(field_error(
                "smpp.tls",
                "plain SMPP (tls = false) is only allowed on a loopback address: a bind carries its password in the clear",
            ));
        }
        if !(1..=10_000).contains(&self.window) {
            return Err(field_error("smpp.window", "must be between 1 and 10000"));
        }
        if !(1..=86_400).contains(&self.idle_timeout_seconds) {
            return Err(field_error(
                "smpp.idle_timeout_seconds",
                "must be between 1 and 86400",
            ));
        }
        if !(1..=3_600).contains(&self.reassembly_timeout_seconds) {
            return Err(field_error(
                "smpp.reassembly_timeout_seconds",
                "must be between 1 and 3600",
            ));
        }
        let mut ids = BTreeSet::new();
        for (index, account) in self.accounts.iter().enumerate() {
            let field = format!("smpp.accounts[{index}]");
            // SMPP 3.4 carries system_id in at most 15 characters.
            if account.system_id.is_empty()
                || account.system_id.len() > 15
                || !account.system_id.is_ascii()
                || !ids.insert(account.system_id.as_str())
            {
                return Err(field_error(
                    format!("{field}.system_id"),
                    "must be 1-15 ASCII characters and unique",
                ));
            }
            TenantId::parse(&account.tenant)
                .map_err(|e| field_error(format!("{field}.tenant"), e))?;
        }
        Ok(())
    }
}

/// Where to ask whether a number was disconnected since a date (the question of the FCC's
/// Reassigned Numbers Database), and when to ask (`reassigned`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReassignedNumbersConfig {
    /// The lookup's URL (https, or http to loopback): `POST {"number", "since"}`.
    pub url: String,
    /// Sent as `Authorization: Bearer <credential>`, if given.
    pub credential: Option<SecretRef>,
    /// A consent at least this old is checked before a marketing or informational send.
    #[serde(default = "default_min_consent_age_days")]
    pub min_consent_age_days: u32,
    /// How long an answer is reused for the same number and date.
    #[serde(default = "default_reassigned_cache_seconds")]
    pub cache_seconds: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_reassigned_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A CA bundle to trust instead of the public roots.
    pub ca_file: Option<PathBuf>,
}

fn default_min_consent_age_days() -> u32 {
    30
}
fn default_reassigned_cache_seconds() -> u64 {
    24 * 3600
}
fn default_reassigned_timeout_ms() -> u64 {
    2_000
}

/// The process's own logs (on stderr), not the verifiable log (`[log]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `text` (for people) or `json` (one object a line, for collectors).
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The verifiable log's checkpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Sign a checkpoint once this many leaves were added since the last one...
    #[serde(default = "default_checkpoint_leaves")]
    pub checkpoint_leaves: u64,
    /// ...or once this long has passed with any leaf added.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// The Ed25519 key that signs checkpoints, PKCS#8 DER in base64. Default:
    /// `keys/log-signing.pk8` in the data folder, generated on first start.
    pub signing_key: Option<SecretRef>,
    /// Whether this instance runs the sequencer. Instances sharing a database take turns
    /// (one at a time); at least one must run it, or rows stay out of the audit lists.
    #[serde(default = "default_true")]
    pub sequencer: bool,
    /// The log's name in its C2SP checkpoints, the ones witnesses cosign: a schema-less URL
    /// such as `sms.example.com/consentry`. Default: `consentry/<the signing key's id>`.
    pub origin: Option<String>,
    /// The witnesses each new checkpoint is sent to for a cosignature (C2SP tlog-witness).
    #[serde(default)]
    pub witnesses: Vec<WitnessEndpoint>,
}

/// A witness the log asks to cosign its checkpoints.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WitnessEndpoint {
    /// Its submission prefix: `add-checkpoint` is posted under it.
    pub url: String,
    /// Its verifier key, `name+keyid+base64`, as `consentry witness vkey` prints it.
    pub key: String,
}

fn default_true() -> bool {
    true
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            checkpoint_leaves: default_checkpoint_leaves(),
            checkpoint_interval_ms: default_checkpoint_interval_ms(),
            signing_key: None,
            sequencer: true,
            origin: None,
            witnesses: Vec::new(),
        }
    }
}

fn default_checkpoint_leaves() -> u64 {
    1_000
}
fn default_checkpoint_interval_ms() -> u64 {
    10_000
}

/// Delivery of inbound messages to tenants' webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// The first retry's delay; each next one doubles, up to `retry_max_ms`.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// How long one delivery attempt may take.
    #[serde(default = "default_delivery_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            retry_base_ms: default_retry_base_ms(),
            retry_max_ms: default_retry_max_ms(),
            timeout_ms: default_delivery_timeout_ms(),
        }
    }
}

fn default_retry_base_ms() -> u64 {
    1_000
}
fn default_retry_max_ms() -> u64 {
    300_000
}
fn default_delivery_timeout_ms() -> u64 {
    10_000
}

/// Where the policy files are, and overrides of their values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
    /// A folder whose files replace the shipped `policies/` files of the same name.
    pub dir: Option<PathBuf>,
    /// Overrides `opt_out.revoke_all` of `consent.toml`.
    pub revoke_all: Option<bool>,
    /// Jurisdiction rules in the format of `policies/jurisdictions/*.toml`: one with the id of
    /// a shipped rule replaces it, any other is added.
    #[serde(default)]
    pub rules: Vec<toml::Table>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./consentry-data")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The TLS API listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The plain-HTTP admin listener (health, readiness). Keep it on loopback.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// The largest request body accepted, in bytes; larger requests get 413.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// consentry's own URL as gateways reach it (`https://sms-proxy.example.com`). With it,
    /// sends through Twilio and Telnyx ask for delivery statuses at
    /// `<public_url>/v1/inbound/<upstream>`.
    pub public_url: Option<String>,
    /// How long a client has for the TLS handshake and, on HTTP/1.1, for each request head.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_seconds: u64,
    /// A connection on which nothing is read or written for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// After a grace of 5 s, a request body must arrive at least this fast (bytes a second of
    /// the time consentry waits for it), or the request gets 408.
    #[serde(default = "default_min_body_rate")]
    pub min_body_rate: u64,
    /// The most connections open at once on the API listener; default: three quarters of the
    /// open-file limit. Beyond it, the oldest connection that has not yet authenticated a
    /// request is closed to make room, or the new one is refused.
    pub max_connections: Option<usize>,
    /// The most connections open at once from one client address.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            max_request_bytes: default_max_request_bytes(),
            public_url: None,
            header_timeout_seconds: default_header_timeout(),
            idle_timeout_seconds: default_idle_timeout(),
            min_body_rate: default_min_body_rate(),
            max_connections: None,
            max_connections_per_client: default_max_connections_per_client(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_request_bytes() -> usize {
    64 * 1024
}
fn default_header_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_min_body_rate() -> u64 {
    1024
}
fn default_max_connections_per_client() -> usize {
    1024
}

/// Certificate and key in PEM. Both or neither: neither means a self-signed certificate
/// generated in the data folder on first start and reused afterwards.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://...`; default: `consentry.db` in the data folder.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoConfig {
    /// The key-encryption key: 32 bytes (AES-256-GCM) that wrap the data keys, base64 in an
    /// environment variable or raw/base64 in a file. Default: `keys/payload.key` in the data
    /// folder, generated on first start.
    pub payload_key: Option<SecretRef>,
    /// The 32-byte key of the keyed hash that indexes phone numbers. Default: generated in the
    /// data folder.
    pub number_key: Option<SecretRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accept tokens minted by `consentry token` with the data folder's development key.
    #[serde(default)]
    pub dev_issuer: bool,
    /// Clock leeway for `exp` and `nbf`, at most 60 seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// The longest a token may live: one whose `exp` is further than this from its `iat`, or
    /// from now, is refused (`token_lifetime_too_long`). Unset: no limit.
    pub max_token_lifetime_seconds: Option<u64>,
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            dev_issuer: false,
            leeway_seconds: default_leeway(),
            max_token_lifetime_seconds: None,
            issuers: Vec::new(),
        }
    }
}

fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` claim.
    pub issuer: String,
    /// The `aud` claim required.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// If set, the only tenants this issuer may name in the `tenant` claim.
    pub tenants: Option<Vec<String>>,
    /// Keys written out one by one.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// A JWKS file; each of its keys must carry `kid` and `alg`.
    pub jwks_file: Option<PathBuf>,
}

fn default_audience() -> String {
    DEFAULT_AUDIENCE.to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Picks this key when a token's header names it; optional when the issuer has one key.
    pub kid: Option<String>,
    /// The one algorithm this key verifies: HS256, HS384, HS512, RS256, PS256, ES256, ES384,
    /// EdDSA.
    pub algorithm: String,
    /// A PEM public key, for the asymmetric algorithms.
    pub public_key_file: Option<PathBuf>,
    /// The shared secret, for the HS algorithms.
    pub secret: Option<SecretRef>,
}

impl KeyConfig {
    /// Checks a key entry's shape without reading files: used while loading the configuration.
    pub fn check(&self) -> Result<(), String> {
        use std::str::FromStr as _;
        let algorithm = jsonwebtoken::Algorithm::from_str(&self.algorithm)
            .map_err(|_| format!("algorithm {:?} is not supported", self.algorithm))?;
        match (is_hmac(algorithm), &self.public_key_file, &self.secret) {
            (true, None, Some(_)) | (false, Some(_), None) => Ok(()),
            (true, _, _) => Err(format!(
                "{} needs a secret, and no public_key_file",
                self.algorithm
            )),
            (false, _, _) => Err(format!(
                "{} needs a public_key_file, and no secret",
                self.algorithm
            )),
        }
    }
}

fn is_hmac(algorithm: jsonwebtoken::Algorithm) -> bool {
    use jsonwebtoken::Algorithm;
    matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    )
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// E.164 numbers, short codes or alphanumeric sender IDs.
    pub senders: Vec<String>,
    /// The name of an upstream, or `sandbox`.
    pub upstream: String,
    /// The purposes the tenant may send for. Default: all three (later rules say what each
    /// needs).
    #[serde(default = "default_purposes")]
    pub purposes: Vec<Purpose>,
    /// The region national number forms are read in.
    #[serde(default = "default_region")]
    pub default_region: String,
    /// The tenant's brands and their campaigns: the scopes consent can be given for.
    #[serde(default)]
    pub brands: Vec<BrandConfig>,
    /// The program name replies use (STOP, HELP and START answers). Default: the tenant id.
    pub program_name: Option<String>,
    /// How to reach the sender, for the HELP answer ("Call 800-555-0100 or visit ...").
    pub help_contact: Option<String>,
    /// How often messages come, for the HELP answer. Default "Msg frequency varies".
    pub message_frequency: Option<String>,
    /// The purpose of messages sent through a gateway-compatible front that do not say one
    /// (no `X-Consentry-Purpose`, and a token whose `purposes` claim does not name exactly
    /// one). Default: marketing, the purpose that needs the most.
    #[serde(default = "default_front_purpose")]
    pub default_purpose: Purpose,
    /// The language of replies when the keyword does not tell one: en, es or fr.
    #[serde(default = "default_reply_language")]
    pub reply_language: String,
    /// Where every inbound message is passed on, signed (HMAC-SHA256) by consentry.
    pub webhook: Option<TenantWebhook>,
    /// The auth token the tenant's applications validate Twilio-style status callbacks with:
    /// consentry signs the `StatusCallback` requests it makes with it. Without it, a
    /// `StatusCallback` in a Twilio-front request is refused.
    pub status_callback_secret: Option<SecretRef>,
    /// Whether the Twilio front's `GET .../Messages/{Sid}.json` shows the message's body and
    /// full numbers to a token with `messages:read` alone, as Twilio does. Default false: only
    /// a token that also has `audit:decrypt` sees them. Every such read is logged either way.
    #[serde(default)]
    pub twilio_fetch_body: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantWebhook {
    /// `https://`, or `http://` to a loopback address only.
    pub url: String,
    /// The key of the `X-Consentry-Signature` HMAC.
    pub secret: SecretRef,
}

fn default_front_purpose() -> Purpose {
    Purpose::Marketing
}

fn default_reply_language() -> String {
    "en".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrandConfig {
    pub id: String,
    /// The brand's name in replies ("Shop Shoes: you are unsubscribed"). Default: the id.
    pub name: Option<String>,
    /// Campaign ids, unique within the tenant.
    #[serde(default)]
    pub campaigns: Vec<String>,
    /// The tenant's senders that send for this brand only: a STOP to one of them opts out of
    /// this brand. A STOP to any other sender opts out of the whole tenant.
    #[serde(default)]
    pub senders: Vec<String>,
}

fn default_purposes() -> Vec<Purpose> {
    Purpose::ALL.to_vec()
}
fn default_region() -> String {
    "US".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamKind {
    /// A generic gateway: a JSON POST of the message to `url`.
    HttpJson,
    /// Twilio's Messages API; webhooks signed with the auth token.
    Twilio,
    /// Telnyx's Messaging API; webhooks signed with Ed25519.
    Telnyx,
    /// Vonage's SMS API (`/sms/json`).
    Vonage,
    /// The built-in simulated gateway.
    Sandbox,
    /// An SMSC, over SMPP 3.4: consentry binds to it as a transceiver (`smpp://` or
    /// `smpps://host:port`, `system_id`, the password in `credential`).
    Smpp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub kind: UpstreamKind,
    /// Where messages are posted (`http-json`), or the API's base URL (`twilio`: default
    /// `https://api.twilio.com`, `telnyx`: default `https://api.telnyx.com`). `https://`, or
    /// `http://` to a loopback address only.
    pub url: Option<String>,
    /// The gateway's credential: the bearer token (`http-json`), the auth token (`twilio`, which
    /// also signs its webhooks), the API key (`telnyx`).
    pub credential: Option<SecretRef>,
    /// Twilio's account SID, or Vonage's API key.
    pub account_sid: Option<String>,
    /// The HMAC-SHA256 secret that signs `http-json` webhooks.
    pub webhook_secret: Option<SecretRef>,
    /// Telnyx's Ed25519 public key (base64) that signs its webhooks.
    pub webhook_public_key: Option<String>,
    /// How old a signed webhook may be, in seconds (Telnyx).
    #[serde(default = "default_webhook_tolerance")]
    pub webhook_tolerance_seconds: u64,
    /// The public URL the gateway calls for this upstream's webhook, as the gateway sees it
    /// (consentry usually sits behind a load balancer). Twilio signs it. Default: built from
    /// the request's Host header.
    pub public_url: Option<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Trust only this CA (PEM) for the gateway's certificate, instead of the public roots.
    pub ca_file: Option<PathBuf>,
    /// The most this upstream may be sent, all senders together (`pacing`).
    pub rate: Option<RateConfig>,
    /// The most each sender may be sent through this upstream (a 10DLC campaign's or a
    /// toll-free number's throughput).
    pub sender_rate: Option<RateConfig>,
    /// `smpp`: the `system_id` consentry binds with.
    pub system_id: Option<String>,
    /// `smpp`: the most `submit_sm` outstanding at once (default 10).
    pub window: Option<usize>,
}

/// A throughput: `per_second` or `per_minute` (one of them), and how many may go at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub per_second: Option<u32>,
    pub per_minute: Option<u32>,
    /// Default 1: messages leave evenly spaced.
    pub burst: Option<u32>,
}

impl RateConfig {
    fn check(&self) -> Result<(), String> {
        match (self.per_second, self.per_minute) {
            (Some(n), None) | (None, Some(n)) if n > 0 => {}
            (Some(_), Some(_)) => return Err("give per_second or per_minute, not both".into()),
            _ => return Err("per_second or per_minute must be given, above 0".into()),
        }
        if self.burst == Some(0) {
            return Err("burst must be at least 1".into());
        }
        Ok(())
    }
}

fn default_webhook_tolerance() -> u64 {
    300
}
fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_request_timeout_ms() -> u64 {
    10_000
}

/// A secret given by reference. The value is read by [`SecretRef::resolve`].
#[derive(Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// A secret's value. `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl SecretRef {
    /// Reads the secret. A file's trailing newline is dropped; an empty secret is an error.
    pub fn resolve(&self, field: &str) -> Result<Secret, ConfigError> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name).map_err(|_| {
                field_error(field, format!("environment variable {name} is not set"))
            })?,
            SecretRef::File(path) => std::fs::read_to_string(path).map_err(|error| {
                field_error(field, format!("cannot read {}: {error}", path.display()))
            })?,
        };
        let value = value.trim_end_matches(['\r', '\n']).to_owned();
        if value.is_empty() {
            return Err(field_error(field, "the secret is empty"));
        }
        Ok(Secret(value))
    }

    fn rebase(&mut self, base: &Path) {
        if let SecretRef::File(path) = self
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
    }
}

/// A tenant as the running proxy sees it.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: TenantId,
    pub upstream: String,
    pub default_region: Region,
    pub rules: TenantRules,
    /// Brand id -> its campaigns.
    pub brands: BTreeMap<String, BTreeSet<String>>,
    /// Brand id -> its name in replies.
    pub brand_names: BTreeMap<String, String>,
    /// Sender -> the brand it sends for, for senders that belong to exactly one brand.
    pub sender_brands: Vec<(Sender, String)>,
    pub program_name: String,
    pub help_contact: String,
    pub message_frequency: String,
    pub reply_language: String,
    pub webhook: Option<TenantWebhook>,
    pub default_purpose: Purpose,
    pub status_callback_secret: Option<SecretRef>,
    /// The Twilio front's fetch shows bodies to `messages:read` ([`TenantConfig::twilio_fetch_body`]).
    pub twilio_fetch_body: bool,
}

/// A scope that names no brand or campaign of the tenant: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownScope {
    pub field: &'static str,
    pub message: String,
}

impl Tenant {
    /// The scope a recipient's reply to `sender` opts out of: the sender's brand, or the
    /// whole tenant for a sender shared by several brands or by none.
    pub fn scope_of_sender(&self, sender: &Sender) -> Scope {
        Scope {
            brand: self
                .sender_brands
                .iter()
                .find(|(known, _)| known == sender)
                .map(|(_, brand)| brand.clone()),
            campaign: None,
        }
    }

    /// The name replies use for a scope: the brand's name, or the tenant's program name.
    pub fn program_for(&self, scope: &Scope) -> &str {
        scope
            .brand
            .as_ref()
            .and_then(|brand| self.brand_names.get(brand))
            .map_or(self.program_name.as_str(), String::as_str)
    }

    /// Resolves a brand and campaign named in a request. A campaign alone finds its brand.
    pub fn scope(
        &self,
        brand: Option<&str>,
        campaign: Option<&str>,
    ) -> Result<Scope, UnknownScope> {
        let brand = match (brand, campaign) {
            (Some(brand), _) => {
                if !self.brands.contains_key(brand) {
                    return Err(UnknownScope {
                        field: "brand",
                        message: format!("tenant {} has no brand {brand:?}", self.id),
                    });
                }
                Some(brand.to_owned())
            }
            (None, Some(campaign)) => self
                .brands
                .iter()
                .find(|(_, campaigns)| campaigns.contains(campaign))
                .map(|(brand, _)| brand.clone()),
            (None, None) => None,
        };
        if let Some(campaign) = campaign {
            let known = brand
                .as_ref()
                .is_some_and(|brand| self.brands[brand].contains(campaign));
            if !known {
                return Err(UnknownScope {
                    field: "campaign",
                    message: format!("{campaign:?} is not a campaign of this brand or tenant"),
                });
            }
        }
        Ok(Scope {
            brand,
            campaign: campaign.map(str::to_owned),
        })
    }
}

impl Config {
    /// Reads a file. Relative paths inside it are taken relative to its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError(format!("cannot read {}: {error}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base)
            .map_err(|ConfigError(message)| ConfigError(format!("{}: {message}", path.display())))
    }

    /// The embedded defaults, with the data folder relative to the working directory.
    pub fn embedded() -> Config {
        Config::parse(EMBEDDED_DEFAULTS, Path::new(".")).expect("embedded defaults are valid")
    }

    /// Parses TOML text and checks it; relative paths are taken relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|error| ConfigError(error.to_string()))?;
        config.rebase(base);
        config.check()?;
        Ok(config)
    }

    fn rebase(&mut self, base: &Path) {
        if base == Path::new(".") {
            return;
        }
        let join = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        join(&mut self.data_dir);
        let mut secrets: Vec<&mut SecretRef> = Vec::new();
        secrets.extend(self.crypto.payload_key.as_mut());
        secrets.extend(self.crypto.number_key.as_mut());
        secrets.extend(self.log.signing_key.as_mut());
        for path in [&mut self.tls.cert_file, &mut self.tls.key_file]
            .into_iter()
            .flatten()
        {
            join(path);
        }
        for issuer in &mut self.jwt.issuers {
            if let Some(path) = &mut issuer.jwks_file {
                join(path);
            }
            for key in &mut issuer.keys {
                if let Some(path) = &mut key.public_key_file {
                    join(path);
                }
                secrets.extend(key.secret.as_mut());
            }
        }
        for upstream in &mut self.upstreams {
            if let Some(path) = &mut upstream.ca_file {
                join(path);
            }
            secrets.extend(upstream.credential.as_mut());
            secrets.extend(upstream.webhook_secret.as_mut());
        }
        if let Some(lookup) = &mut self.reassigned_numbers {
            if let Some(path) = &mut lookup.ca_file {
                join(path);
            }
            secrets.extend(lookup.credential.as_mut());
        }
        for secret in secrets {
            secret.rebase(base);
        }
        if let Some(dir) = &mut self.policies.dir {
            join(dir);
        }
        for tenant in &mut self.tenants {
            if let Some(webhook) = &mut tenant.webhook {
                webhook.secret.rebase(base);
            }
            if let Some(secret) = &mut tenant.status_callback_secret {
                secret.rebase(base);
            }
        }
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}",
                self.data_dir.join("consentry.db").to_string_lossy()
            ),
        }
    }

    /// Checks everything that can be checked without reading secrets or keys. The policy files
    /// `policies` names are checked by loading them (`policy::rules::PolicySet::load`), which
    /// `consentry` does right after reading this file.
    fn check(&self) -> Result<(), ConfigError> {
        for (i, witness) in self.log.witnesses.iter().enumerate() {
            let field = format!("log.witnesses[{i}]");
            crate::audit::note::WitnessKey::from_vkey(&witness.key)
                .map_err(|why| field_error(format!("{field}.key"), &why))?;
            if !witness.url.starts_with("http://") && !witness.url.starts_with("https://") {
                return Err(field_error(
                    format!("{field}.url"),
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if !(1..=300).contains(&self.server.header_timeout_seconds) {
            return Err(field_error(
                "server.header_timeout_seconds",
                "must be between 1 and 300",
            ));
        }
        if !(1..=86_400).contains(&self.server.idle_timeout_seconds) {
            return Err(field_error(
                "server.idle_timeout_seconds",
                "must be between 1 and 86400",
            ));
        }
        if self.server.min_body_rate == 0 {
            return Err(field_error("server.min_body_rate", "must be at least 1"));
        }
        if self.server.max_connections == Some(0) || self.server.max_connections_per_client == 0 {
            return Err(field_error(
                "server.max_connections",
                "connection limits must be at least 1",
            ));
        }
        if self.server.max_request_bytes < 1024 || self.server.max_request_bytes > 16 << 20 {
            return Err(field_error(
                "server.max_request_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(field_error(
                "tls",
                "give both cert_file and key_file, or neither",
            ));
        }
        if let Some(url) = &self.database.url
            && !["sqlite:", "postgres:", "postgresql:"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
        {
            return Err(field_error(
                "database.url",
                "must be a sqlite:, postgres: or postgresql: URL",
            ));
        }
        if let Some(smpp) = &self.smpp {
            smpp.check()?;
        }
        if self.jwt.leeway_seconds > 60 {
            return Err(field_error("jwt.leeway_seconds", "must be at most 60"));
        }
        let mut issuer_names = BTreeSet::new();
        for (index, issuer) in self.jwt.issuers.iter().enumerate() {
            let field = format!("jwt.issuers[{index}]");
            if issuer.issuer.is_empty() || !issuer_names.insert(issuer.issuer.as_str()) {
                return Err(field_error(
                    format!("{field}.issuer"),
                    "must be non-empty and unique",
                ));
            }
            if issuer.issuer == DEV_ISSUER {
                return Err(field_error(
                    format!("{field}.issuer"),
                    format!("{DEV_ISSUER} is reserved for jwt.dev_issuer"),
                ));
            }
            if issuer.audience.is_empty() {
                return Err(field_error(
                    format!("{field}.audience"),
                    "must be non-empty",
                ));
            }
            if issuer.keys.is_empty() && issuer.jwks_file.is_none() {
                return Err(field_error(field, "needs keys or a jwks_file"));
            }
            for tenant in issuer.tenants.iter().flatten() {
                TenantId::parse(tenant).map_err(|e| field_error(format!("{field}.tenants"), e))?;
            }
            let mut kids = BTreeSet::new();
            for (key_index, key) in issuer.keys.iter().enumerate() {
                let key_field = format!("{field}.keys[{key_index}]");
                if issuer.keys.len() > 1 && key.kid.is_none() {
                    return Err(field_error(
                        format!("{key_field}.kid"),
                        "is required when an issuer has several keys",
                    ));
                }
                if let Some(kid) = &key.kid
                    && !kids.insert(kid.as_str())
                {
                    return Err(field_error(format!("{key_field}.kid"), "is not unique"));
                }
                key.check()
                    .map_err(|message| field_error(&key_field, message))?;
            }
        }

        let mut upstream_names = BTreeSet::from([SANDBOX.to_owned()]);
        for (index, upstream) in self.upstreams.iter().enumerate() {
            let field = format!("upstreams[{index}]");
            if upstream.name.is_empty() || !upstream_names.insert(upstream.name.clone()) {
                return Err(field_error(
                    format!("{field}.name"),
                    "must be non-empty, unique and not \"sandbox\"",
                ));
            }
            if upstream.connect_timeout_ms == 0 || upstream.request_timeout_ms == 0 {
                return Err(field_error(&field, "timeouts must be above zero"));
            }
            for (name, rate) in [
                ("rate", &upstream.rate),
                ("sender_rate", &upstream.sender_rate),
            ] {
                if let Some(rate) = rate {
                    rate.check()
                        .map_err(|message| field_error(format!("{field}.{name}"), message))?;
                }
            }
            match upstream.kind {
                UpstreamKind::Sandbox => {}
                UpstreamKind::Smpp => {
                    let url = upstream.url.as_deref().ok_or_else(|| {
                        field_error(format!("{field}.url"), "is required (smpps://host:port)")
                    })?;
                    smpp_address(url)
                        .map_err(|message| field_error(format!("{field}.url"), message))?;
                    match upstream.system_id.as_deref() {
                        Some(id) if !id.is_empty() && id.len() <= 15 && id.is_ascii() => {}
                        _ => {
                            return Err(field_error(
                                format!("{field}.system_id"),
                                "is required for smpp: 1-15 ASCII characters",
                            ));
                        }
                    }
                    if upstream.credential.is_none() {
                        return Err(field_error(
                            format!("{field}.credential"),
                            "is required for smpp (the bind's password)",
                        ));
                    }
                    if !(1..=1000).contains(&upstream.window.unwrap_or(10)) {
                        return Err(field_error(format!("{field}.window"), "must be 1 to 1000"));
                    }
                }
                UpstreamKind::HttpJson
                | UpstreamKind::Twilio
                | UpstreamKind::Telnyx
                | UpstreamKind::Vonage => {
                    let url = match (&upstream.kind, upstream.url.as_deref()) {
                        (_, Some(url)) => url,
                        (UpstreamKind::HttpJson, None) => {
                            return Err(field_error(format!("{field}.url"), "is required"));
                        }
                        _ => "https://gateway.invalid",
                    };
                    check_upstream_url(url)
                        .map_err(|message| field_error(format!("{field}.url"), message))?;
                    if upstream.credential.is_none() {
                        return Err(field_error(format!("{field}.credential"), "is required"));
                    }
                }
            }
            match upstream.kind {
                UpstreamKind::Twilio | UpstreamKind::Vonage if upstream.account_sid.is_none() => {
                    return Err(field_error(
                        format!("{field}.account_sid"),
                        "is required for twilio (the account SID) and vonage (the API key)",
                    ));
                }
                UpstreamKind::Telnyx => {
                    let key = upstream.webhook_public_key.as_deref().ok_or_else(|| {
                        field_error(
                            format!("{field}.webhook_public_key"),
                            "is required for telnyx",
                        )
                    })?;
                    crate::crypto::decode_public_key(key).map_err(|message| {
                        field_error(format!("{field}.webhook_public_key"), message)
                    })?;
                }
                _ => {}
            }
            if let Some(url) = &upstream.public_url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err(field_error(
                    format!("{field}.public_url"),
                    "must be an absolute http(s) URL",
                ));
            }
        }

        let mut tenant_ids = BTreeSet::new();
        for (index, tenant) in self.tenants.iter().enumerate() {
            let field = format!("tenants[{index}]");
            let id =
                TenantId::parse(&tenant.id).map_err(|e| field_error(format!("{field}.id"), e))?;
            if !tenant_ids.insert(id) {
                return Err(field_error(format!("{field}.id"), "is not unique"));
            }
            if !upstream_names.contains(&tenant.upstream) {
                return Err(field_error(
                    format!("{field}.upstream"),
                    format!("no upstream is named {:?}", tenant.upstream),
                ));
            }
        }
        self.tenants()?;
        Ok(())
    }

    /// The tenants, parsed.
    pub fn tenants(&self) -> Result<BTreeMap<TenantId, Tenant>, ConfigError> {
        let mut tenants = BTreeMap::new();
        for (index, tenant) in self.tenants.iter().enumerate() {
            let field = format!("tenants[{index}]");
            let id =
                TenantId::parse(&tenant.id).map_err(|e| field_error(format!("{field}.id"), e))?;
            let region: Region = tenant
                .default_region
                .parse()
                .map_err(|e| field_error(format!("{field}.default_region"), e))?;
            if tenant.senders.is_empty() {
                return Err(field_error(
                    format!("{field}.senders"),
                    "needs at least one sender",
                ));
            }
            let senders = tenant
                .senders
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    Sender::parse(s, region)
                        .map_err(|e| field_error(format!("{field}.senders[{i}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if tenant.purposes.is_empty() {
                return Err(field_error(
                    format!("{field}.purposes"),
                    "needs at least one purpose",
                ));
            }
            let mut brands: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let mut brand_names = BTreeMap::new();
            let mut sender_brands: Vec<(Sender, String)> = Vec::new();
            let mut campaigns = BTreeSet::new();
            for (brand_index, brand) in tenant.brands.iter().enumerate() {
                let brand_field = format!("{field}.brands[{brand_index}]");
                check_scope_id(&brand.id)
                    .map_err(|e| field_error(format!("{brand_field}.id"), e))?;
                if brands.contains_key(&brand.id) {
                    return Err(field_error(format!("{brand_field}.id"), "is not unique"));
                }
                for (campaign_index, campaign) in brand.campaigns.iter().enumerate() {
                    let campaign_field = format!("{brand_field}.campaigns[{campaign_index}]");
                    check_scope_id(campaign).map_err(|e| field_error(&campaign_field, e))?;
                    if !campaigns.insert(campaign.clone()) {
                        return Err(field_error(
                            campaign_field,
                            "is not unique within the tenant",
                        ));
                    }
                }
                for (sender_index, sender) in brand.senders.iter().enumerate() {
                    let sender_field = format!("{brand_field}.senders[{sender_index}]");
                    let sender =
                        Sender::parse(sender, region).map_err(|e| field_error(&sender_field, e))?;
                    if !senders.contains(&sender) {
                        return Err(field_error(
                            sender_field,
                            "is not one of the tenant's senders",
                        ));
                    }
                    if sender_brands.iter().any(|(known, _)| known == &sender) {
                        return Err(field_error(sender_field, "already sends for another brand"));
                    }
                    sender_brands.push((sender, brand.id.clone()));
                }
                brand_names.insert(
                    brand.id.clone(),
                    brand.name.clone().unwrap_or_else(|| brand.id.clone()),
                );
                brands.insert(brand.id.clone(), brand.campaigns.iter().cloned().collect());
            }
            if !["en", "es", "fr"].contains(&tenant.reply_language.as_str()) {
                return Err(field_error(
                    format!("{field}.reply_language"),
                    "must be en, es or fr",
                ));
            }
            if let Some(webhook) = &tenant.webhook {
                check_upstream_url(&webhook.url)
                    .map_err(|message| field_error(format!("{field}.webhook.url"), message))?;
            }
            tenants.insert(
                id.clone(),
                Tenant {
                    brands,
                    brand_names,
                    sender_brands,
                    program_name: tenant
                        .program_name
                        .clone()
                        .unwrap_or_else(|| tenant.id.clone()),
                    help_contact: tenant
                        .help_contact
                        .clone()
                        .unwrap_or_else(|| "Contact the sender for help".to_owned()),
                    message_frequency: tenant
                        .message_frequency
                        .clone()
                        .unwrap_or_else(|| "Msg frequency varies".to_owned()),
                    reply_language: tenant.reply_language.clone(),
                    default_purpose: tenant.default_purpose,
                    status_callback_secret: tenant.status_callback_secret.clone(),
                    twilio_fetch_body: tenant.twilio_fetch_body,
                    webhook: tenant.webhook.clone(),
                    id,
                    upstream: tenant.upstream.clone(),
                    default_region: region,
                    rules: TenantRules {
                        senders,
                        purposes: tenant.purposes.iter().copied().collect(),
                    },
                },
            );
        }
        Ok(tenants)
    }
}

/// Brand and campaign ids: 1 to 64 of `A-Z a-z 0-9 - _ .`.
fn check_scope_id(id: &str) -> Result<(), String> {
    let valid = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{id:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'"
        ))
    }
}

/// An SMSC's address from `smpps://host:port` (TLS) or `smpp://host:port` (plain, to a
/// loopback address only: a bind carries its password in clear text): host, port, and
/// whether it is TLS.
pub fn smpp_address(url: &str) -> Result<(String, u16, bool), String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("smpps://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("smpp://") {
        (false, rest)
    } else {
        return Err("must be smpps://host:port (or smpp:// to a loopback address)".into());
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or("needs a port: smpps://host:port")?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("has no host".into());
    }
    let loopback = bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !tls && !loopback {
        return Err("smpp:// (plain) is allowed only to a loopback address; use smpps://".into());
    }
    Ok((bare.to_owned(), port, tls))
}

/// An upstream URL must be `https://`, or `http://` to a loopback address: a gateway credential
/// never crosses a network in clear text.
pub(crate) fn check_upstream_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let host = uri.host().ok_or("has no host")?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err("http:// is allowed only to a loopback address; use https://".into())
            }
        }
        _ => Err("must start with https:// (or http:// to a loopback address)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid() {
        let config = Config::embedded();
        assert!(config.jwt.dev_issuer);
        let tenants = config.tenants().unwrap();
        assert_eq!(tenants.len(), 1);
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(config.server.admin_listen.to_string(), "127.0.0.1:9090");
    }

    #[test]
    fn an_empty_file_is_a_safe_configuration() {
        let config = Config::parse("", Path::new(".")).unwrap();
        assert!(!config.jwt.dev_issuer);
        assert!(config.tenants.is_empty());
    }

    /// Parses `text` and returns the error message.
    fn error_of(text: &str) -> String {
        Config::parse(text, Path::new("."))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_bad_field() {
        let cases = [
            ("colour = 1", "unknown field `colour`"),
            ("[server]\nlisten = \"nowhere\"", "listen"),
            ("[jwt]\nleeway_seconds = 120", "jwt.leeway_seconds"),
            (
                "[[tenants]]\nid = \"Bad Id\"\nsenders = [\"+12025550100\"]\nupstream = \"sandbox\"",
                "tenants[0].id",
            ),
            (
                "[[tenants]]\nid = \"a\"\nsenders = [\"+1202\"]\nupstream = \"sandbox\"",
                "tenants[0].senders[0]",
            ),
            (
                "[[tenants]]\nid = \"a\"\nsenders = [\"+12025550100\"]\nupstream = \"nope\"",
                "tenants[0].upstream",
            ),
            (
                "[[tenants]]\nid = \"a\"\nsenders = [\"+12025550100\"]\nupstream = \"sandbox\"\npurposes = [\"spam\"]",
                "purposes",
            ),
            (
                "[[upstreams]]\nname = \"gw\"\nkind = \"http-json\"\nurl = \"http://gateway.example.com/\"\ncredential = { env = \"X\" }",
                "upstreams[0].url",
            ),
            (
                "[[upstreams]]\nname = \"gw\"\nkind = \"http-json\"\nurl = \"https://gateway.example.com/\"",
                "upstreams[0].credential",
            ),
            (
                "[[upstreams]]\nname = \"gw\"\nkind = \"http-json\"\nurl = \"https://g.example/\"\ncredential = { vault = \"X\" }",
                "unknown variant `vault`",
            ),
            (
                "[[jwt.issuers]]\nissuer = \"i\"\n[[jwt.issuers.keys]]\nalgorithm = \"none\"\nsecret = { env = \"X\" }",
                "jwt.issuers[0].keys[0]",
            ),
            (
                "[[jwt.issuers]]\nissuer = \"i\"\n[[jwt.issuers.keys]]\nalgorithm = \"HS256\"",
                "jwt.issuers[0].keys[0]",
            ),
            ("[tls]\ncert_file = \"a.pem\"", "tls"),
            (
                "[[tenants]]\nid = \"a\"\nsenders = [\"ACME\"]\nupstream = \"sandbox\"\n[[tenants.brands]]\nid = \"b\"\ncampaigns = [\"c\"]\n[[tenants.brands]]\nid = \"d\"\ncampaigns = [\"c\"]",
                "tenants[0].brands[1].campaigns[0]",
            ),
            ("[policies]\nrevoke_all = \"yes\"", "revoke_all"),
        ];
        for (text, expected) in cases {
            let message = error_of(text);
            assert!(message.contains(expected), "{text:?} gave {message:?}");
        }
    }

    #[test]
    fn scopes_resolve_against_the_tenants_brands() {
        let text = "[[tenants]]\nid = \"a\"\nsenders = [\"ACME\"]\nupstream = \"sandbox\"\n[[tenants.brands]]\nid = \"shoes\"\ncampaigns = [\"spring\"]\n[[tenants.brands]]\nid = \"hats\"\n";
        let config = Config::parse(text, Path::new(".")).unwrap();
        let tenants = config.tenants().unwrap();
        let tenant = tenants.values().next().unwrap();
        assert_eq!(tenant.scope(None, None).unwrap(), Scope::tenant_wide());
        let spring = tenant.scope(None, Some("spring")).unwrap();
        assert_eq!(spring.brand.as_deref(), Some("shoes"));
        assert_eq!(tenant.scope(Some("shoes"), Some("spring")).unwrap(), spring);
        assert_eq!(
            tenant.scope(Some("hats"), None).unwrap().label(),
            "brand:hats"
        );
        assert_eq!(
            tenant.scope(Some("socks"), None).unwrap_err().field,
            "brand"
        );
        assert_eq!(
            tenant
                .scope(Some("hats"), Some("spring"))
                .unwrap_err()
                .field,
            "campaign"
        );
        assert_eq!(
            tenant.scope(None, Some("autumn")).unwrap_err().field,
            "campaign"
        );
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let secret = Secret::new("hunter2".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn http_upstreams_are_loopback_only() {
        assert!(check_upstream_url("http://127.0.0.1:9000/send").is_ok());
        assert!(check_upstream_url("http://[::1]:9000/send").is_ok());
        assert!(check_upstream_url("http://localhost/send").is_ok());
        assert!(check_upstream_url("https://gateway.example.com/send").is_ok());
        assert!(check_upstream_url("http://10.0.0.1/send").is_err());
        assert!(check_upstream_url("ftp://127.0.0.1/").is_err());
    }
}
