//! Upstreams: the gateways consentry forwards allowed messages to.
//!
//! Forwarding takes a [`Permit`], the value only `policy::decide` makes, and builds the gateway's
//! request from scratch from the message inside it: no header or credential of the client ever
//! reaches a gateway, and the gateway's credential never leaves consentry except to that gateway.
//!
//! - `sandbox`: built in; keeps the last [`SANDBOX_CAPACITY`] messages in memory, where
//!   `GET /v1/sandbox/messages` shows them. For trying consentry without a gateway.
//! - `http-json`, `twilio`, `telnyx`: real gateways over HTTPS; each builds its own request
//!   from the message (see `dialect`), any 2xx is success, and the gateway's message id is kept
//!   from its answer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Serialize;

use crate::config::{Config, ConfigError, SANDBOX, Secret, UpstreamConfig, UpstreamKind};
use crate::dialect::{self, GatewayRequest};
use crate::domain::TenantId;
use crate::policy::Permit;
use crate::smpp::client::{Refusal, SmppGateway};

/// How many messages the sandbox keeps.
pub const SANDBOX_CAPACITY: usize = 1000;
/// The largest gateway answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What a gateway answered to an accepted message.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    pub name: String,
    pub message_id: Option<String>,
}

/// Why a forward failed. The message is recorded as failed and the client gets 502.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the gateway could not be reached: {0}")]
    Unavailable(String),
    #[error("the gateway did not answer in time")]
    Timeout,
    #[error("the gateway refused the message with HTTP {status}{}", gateway_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    Rejected {
        status: u16,
        /// The gateway's own error code and message, read from its error shape.
        gateway_error: Option<String>,
    },
    #[error("the gateway's answer could not be read: {0}")]
    BadAnswer(String),
    #[error("the gateway refused the message: status {status}, {text}")]
    Refused { status: String, text: String },
    /// The gateway asked to be sent less (HTTP 429, Twilio's 20429, Vonage's status 1): the
    /// message is not failed but queued again after the pause (`flow::send::deliver`).
    #[error("the gateway is throttling: too many requests")]
    Throttled {
        /// From `Retry-After` (seconds), when the gateway said.
        retry_after: Option<std::time::Duration>,
    },
}

impl UpstreamError {
    pub fn code(&self) -> &'static str {
        match self {
            UpstreamError::Unavailable(_) => "upstream_unavailable",
            UpstreamError::Timeout => "upstream_timeout",
            UpstreamError::Rejected { .. } => "upstream_rejected",
            UpstreamError::BadAnswer(_) => "upstream_bad_answer",
            UpstreamError::Refused { .. } => "upstream_rejected",
            UpstreamError::Throttled { .. } => "upstream_throttled",
        }
    }
}

/// Every configured upstream, by name; `sandbox` is always there.
#[derive(Debug)]
pub struct Upstreams {
    by_name: HashMap<String, Upstream>,
    sandbox: Arc<Sandbox>,
}

impl Upstreams {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Upstreams::from_config_with_sandbox(config, Arc::new(Sandbox::default()))
    }

    /// The upstreams of `config`, with `sandbox` as the built-in one (a reload keeps the
    /// sandbox's messages).
    pub fn from_config_with_sandbox(
        config: &Config,
        sandbox: Arc<Sandbox>,
    ) -> Result<Self, ConfigError> {
        Upstreams::build(config, sandbox, None)
    }

    /// The upstreams of `config` as the running server has them: SMPP upstreams connect, and
    /// hand what their SMSCs deliver to `events`.
    pub fn start(
        config: &Config,
        sandbox: Arc<Sandbox>,
        events: &crate::smpp::client::Events,
    ) -> Result<Self, ConfigError> {
        Upstreams::build(config, sandbox, Some(events))
    }

    fn build(
        config: &Config,
        sandbox: Arc<Sandbox>,
        events: Option<&crate::smpp::client::Events>,
    ) -> Result<Self, ConfigError> {
        let public_url = config
            .server
            .public_url
            .as_deref()
            .map(|url| url.trim_end_matches('/'));
        let mut by_name = HashMap::new();
        by_name.insert(SANDBOX.to_owned(), Upstream::Sandbox(sandbox.clone()));
        for (index, upstream) in config.upstreams.iter().enumerate() {
            let field = format!("upstreams[{index}]");
            let built = match upstream.kind {
                UpstreamKind::Sandbox => Upstream::Sandbox(sandbox.clone()),
                UpstreamKind::Smpp => Upstream::Smpp(Arc::new(SmppGateway::start(
                    smpp_settings(upstream, &field)?,
                    events,
                ))),
                UpstreamKind::HttpJson
                | UpstreamKind::Twilio
                | UpstreamKind::Telnyx
                | UpstreamKind::Vonage => {
                    let status_url =
                        public_url.map(|base| format!("{base}/v1/inbound/{}", upstream.name));
                    Upstream::Gateway(Box::new(Gateway::new(upstream, &field, status_url)?))
                }
            };
            by_name.insert(upstream.name.clone(), built);
        }
        Ok(Upstreams { by_name, sandbox })
    }

    pub fn get(&self, name: &str) -> Option<&Upstream> {
        self.by_name.get(name)
    }

    /// Whether the upstream forwards an MMS's media: every kind but `vonage` (its SMS API
    /// sends text only).
    pub fn takes_media(&self, name: &str) -> bool {
        match self.get(name) {
            Some(Upstream::Sandbox(_)) => true,
            Some(Upstream::Gateway(gateway)) => gateway.kind != UpstreamKind::Vonage,
            // SMPP carries text only.
            Some(Upstream::Smpp(_)) | None => false,
        }
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }
}

#[derive(Debug)]
pub enum Upstream {
    Sandbox(Arc<Sandbox>),
    Gateway(Box<Gateway>),
    Smpp(Arc<SmppGateway>),
}

impl Upstream {
    /// Sends the permitted message.
    pub async fn forward(&self, permit: Permit) -> Result<Receipt, UpstreamError> {
        match self {
            Upstream::Sandbox(sandbox) => Ok(sandbox.accept(&permit)),
            Upstream::Gateway(gateway) => gateway.send(&permit).await,
            Upstream::Smpp(gateway) => smpp_send(gateway, &permit).await,
        }
    }

    /// Whether replies to this gateway's webhooks ride in the webhook's answer (TwiML).
    pub fn replies_in_webhook_answer(&self) -> bool {
        matches!(self, Upstream::Gateway(gateway) if gateway.kind == UpstreamKind::Twilio)
    }
}

/// A message as the sandbox received it.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxMessage {
    pub sandbox_id: String,
    pub message_id: String,
    #[serde(skip)]
    pub tenant: TenantId,
    pub to: String,
    pub from: String,
    pub body: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub media_urls: Vec<String>,
    pub purpose: &'static str,
    pub received_at: Timestamp,
}

/// The built-in simulated gateway.
#[derive(Debug, Default)]
pub struct Sandbox {
    messages: Mutex<VecDeque<SandboxMessage>>,
    counter: AtomicU64,
}

impl Sandbox {
    fn accept(&self, permit: &Permit) -> Receipt {
        let message = permit.message();
        let sandbox_id = format!("sbx_{}", self.counter.fetch_add(1, Ordering::Relaxed) + 1);
        let received = SandboxMessage {
            sandbox_id: sandbox_id.clone(),
            message_id: message.id.to_string(),
            tenant: message.tenant.clone(),
            to: message.to.e164().to_owned(),
            from: message.from.as_str().to_owned(),
            body: message.body.as_str().to_owned(),
            media_urls: message
                .media
                .iter()
                .map(|m| m.as_str().to_owned())
                .collect(),
            purpose: message.purpose.as_str(),
            received_at: Timestamp::now(),
        };
        let mut messages = self.messages.lock().expect("sandbox lock poisoned");
        if messages.len() == SANDBOX_CAPACITY {
            messages.pop_front();
        }
        messages.push_back(received);
        Receipt {
            name: SANDBOX.to_owned(),
            message_id: Some(sandbox_id),
        }
    }

    /// Forgets a tenant's messages to the numbers `erased` picks (an erasure): the sandbox holds
    /// bodies in clear, and must not keep what the database can no longer open.
    pub fn forget(&self, tenant: &TenantId, erased: impl Fn(&str) -> bool) -> usize {
        let mut messages = self.messages.lock().expect("sandbox lock poisoned");
        let before = messages.len();
        messages.retain(|message| &message.tenant != tenant || !erased(&message.to));
        before - messages.len()
    }

    /// The tenant's messages, oldest first.
    pub fn messages(&self, tenant: &TenantId) -> Vec<SandboxMessage> {
        let messages = self.messages.lock().expect("sandbox lock poisoned");
        messages
            .iter()
            .filter(|message| &message.tenant == tenant)
            .cloned()
            .collect()
    }
}

/// How a gateway's webhooks are verified.
pub enum WebhookKey {
    /// `http-json`: HMAC-SHA256 of the body; `None` refuses every webhook.
    Generic(Option<Secret>),
    /// Twilio: the auth token, and the public URL Twilio calls, if configured.
    Twilio {
        auth_token: Secret,
        public_url: Option<String>,
    },
    /// Telnyx: the Ed25519 public key and the timestamp tolerance.
    Telnyx {
        public_key: [u8; 32],
        tolerance_seconds: u64,
    },
}

/// A real gateway over HTTPS (or HTTP on loopback).
pub struct Gateway {
    pub name: String,
    pub kind: UpstreamKind,
    url: String,
    credential: Secret,
    account_sid: String,
    /// Where the gateway reports delivery statuses (consentry's own webhook), if known.
    status_url: Option<String>,
    pub webhook: WebhookKey,
    request_timeout: Duration,
    client: HttpClient,
}

/// The HTTP client consentry calls gateways and tenants with.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled HTTPS (or loopback HTTP) client on ring, trusting the public roots or `ca_file`.
pub fn https_client(
    ca_file: Option<&std::path::Path>,
    connect_timeout: Duration,
) -> Result<HttpClient, String> {
    let tls = client_tls_config(ca_file)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector))
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    fn new(
        config: &UpstreamConfig,
        field: &str,
        status_url: Option<String>,
    ) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError(format!("{field}: {message}"));
        let url = match (&config.kind, &config.url) {
            (_, Some(url)) => url.clone(),
            (UpstreamKind::Twilio, None) => dialect::twilio::DEFAULT_BASE_URL.to_owned(),
            (UpstreamKind::Telnyx, None) => dialect::telnyx::DEFAULT_BASE_URL.to_owned(),
            (UpstreamKind::Vonage, None) => dialect::vonage::DEFAULT_BASE_URL.to_owned(),
            _ => return Err(error("url is required".into())),
        };
        url.parse::<http::Uri>()
            .map_err(|e| error(format!("url: {e}")))?;
        let credential = config
            .credential
            .as_ref()
            .ok_or_else(|| error("credential is required".into()))?
            .resolve(&format!("{field}.credential"))?;
        let webhook = match config.kind {
            UpstreamKind::Twilio => WebhookKey::Twilio {
                auth_token: credential.clone(),
                public_url: config.public_url.clone(),
            },
            UpstreamKind::Telnyx => WebhookKey::Telnyx {
                public_key: crate::crypto::decode_public_key(
                    config.webhook_public_key.as_deref().unwrap_or_default(),
                )
                .map_err(|e| error(format!("webhook_public_key: {e}")))?,
                tolerance_seconds: config.webhook_tolerance_seconds,
            },
            _ => WebhookKey::Generic(
                config
                    .webhook_secret
                    .as_ref()
                    .map(|secret| secret.resolve(&format!("{field}.webhook_secret")))
                    .transpose()?,
            ),
        };
        let client = https_client(
            config.ca_file.as_deref(),
            Duration::from_millis(config.connect_timeout_ms),
        )
        .map_err(error)?;
        Ok(Gateway {
            name: config.name.clone(),
            kind: config.kind.clone(),
            url,
            credential,
            account_sid: config.account_sid.clone().unwrap_or_default(),
            status_url,
            webhook,
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            client,
        })
    }

    /// The gateway's own request for the permitted message.
    fn request_for(&self, permit: &Permit) -> GatewayRequest {
        let credential = self.credential.expose();
        match self.kind {
            UpstreamKind::Twilio => dialect::twilio::send_request(
                &self.url,
                &self.account_sid,
                credential,
                self.status_url.as_deref(),
                permit,
            ),
            UpstreamKind::Telnyx => dialect::telnyx::send_request(
                &self.url,
                credential,
                self.status_url.as_deref(),
                permit,
            ),
            UpstreamKind::Vonage => {
                dialect::vonage::send_request(&self.url, &self.account_sid, credential, permit)
            }
            // An HTTP gateway is never of the other kinds (`Upstreams::build`).
            UpstreamKind::HttpJson | UpstreamKind::Sandbox | UpstreamKind::Smpp => {
                dialect::generic::send_request(&self.url, credential, permit)
            }
        }
    }

    async fn send(&self, permit: &Permit) -> Result<Receipt, UpstreamError> {
        let built = self.request_for(permit);
        let mut request = http::Request::post(built.url.as_str())
            .header(http::header::CONTENT_TYPE, built.content_type)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("consentry/", env!("CARGO_PKG_VERSION")),
            );
        if !built.authorization.is_empty() {
            request = request.header(http::header::AUTHORIZATION, built.authorization);
        }
        let request = request
            .body(Full::new(Bytes::from(built.body)))
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;

        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| UpstreamError::Unavailable(error_chain(&e)))?;
            let status = response.status();
            // Retry-After in seconds (RFC 9110, 10.2.3); an HTTP date is not read.
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(|seconds| std::time::Duration::from_secs(seconds.min(3600)));
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| UpstreamError::BadAnswer(e.to_string()))?
                .to_bytes();
            Ok::<_, UpstreamError>((status, retry_after, body))
        };
        let (status, retry_after, body) = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        if status == http::StatusCode::TOO_MANY_REQUESTS {
            return Err(UpstreamError::Throttled { retry_after });
        }
        if !status.is_success() {
            let answer = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
            return Err(UpstreamError::Rejected {
                status: status.as_u16(),
                gateway_error: dialect::gateway_error(&answer),
            });
        }
        let answer = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
        let message_id = match self.kind {
            UpstreamKind::Twilio => dialect::twilio::message_id(&answer),
            UpstreamKind::Telnyx => dialect::telnyx::message_id(&answer),
            UpstreamKind::Vonage => {
                dialect::vonage::read_answer(&answer).map_err(|(status, text)| {
                    // Vonage's status 1: "Throttled".
                    if status == "1" {
                        UpstreamError::Throttled { retry_after: None }
                    } else {
                        UpstreamError::Refused { status, text }
                    }
                })?
            }
            UpstreamKind::HttpJson | UpstreamKind::Sandbox | UpstreamKind::Smpp => {
                dialect::generic::message_id(&answer)
            }
        };
        Ok(Receipt {
            name: self.name.clone(),
            message_id,
        })
    }
}

/// The connection settings of an SMPP upstream (its configuration was checked by `Config`).
fn smpp_settings(
    config: &UpstreamConfig,
    field: &str,
) -> Result<crate::smpp::client::Settings, ConfigError> {
    let error = |message: String| ConfigError(format!("{field}: {message}"));
    let url = config.url.as_deref().unwrap_or_default();
    let (host, port, tls) =
        crate::config::smpp_address(url).map_err(|e| error(format!("url: {e}")))?;
    let password = config
        .credential
        .as_ref()
        .ok_or_else(|| error("credential is required".into()))?
        .resolve(&format!("{field}.credential"))?;
    if password.expose().len() > 8 || !password.expose().is_ascii() {
        return Err(error(
            "credential: an SMPP 3.4 password is at most 8 ASCII characters".into(),
        ));
    }
    let tls = if tls {
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| error(format!("url: {e}")))?;
        let client = client_tls_config(config.ca_file.as_deref()).map_err(error)?;
        Some((name, Arc::new(client)))
    } else {
        None
    };
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(crate::smpp::client::Settings {
        name: config.name.clone(),
        address,
        tls,
        system_id: config.system_id.clone().unwrap_or_default(),
        password,
        window: config.window.unwrap_or(10),
        connect_timeout: Duration::from_millis(config.connect_timeout_ms),
        request_timeout: Duration::from_millis(config.request_timeout_ms),
    })
}

/// Sends a permitted message to an SMSC: its `submit_sm_resp`'s message id is the receipt.
/// `ESME_RTHROTTLED` and `ESME_RMSGQFUL` say "later" (the message is queued again); any other
/// status refuses it.
async fn smpp_send(gateway: &SmppGateway, permit: &Permit) -> Result<Receipt, UpstreamError> {
    let message = permit.message();
    let submit = crate::smpp::pdu::submit_for(
        message.to.e164(),
        message.from.as_str(),
        message.body.as_str(),
    )
    .map_err(UpstreamError::BadAnswer)?;
    match gateway.submit(submit).await {
        Ok(id) => Ok(Receipt {
            name: gateway.name().to_owned(),
            message_id: Some(id),
        }),
        Err(Refusal::Unavailable(why)) => Err(UpstreamError::Unavailable(why)),
        Err(Refusal::Timeout) => Err(UpstreamError::Timeout),
        Err(Refusal::Status(0x58 | 0x14)) => Err(UpstreamError::Throttled { retry_after: None }),
        Err(Refusal::Status(status)) => Err(UpstreamError::Refused {
            status: format!("0x{status:08x}"),
            text: "the SMSC's submit_sm_resp".into(),
        }),
    }
}

/// A TLS client configuration on ring: the public web roots, or only the CA in `ca_file`.
pub fn client_tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?;
    let builder = match ca_file {
        None => builder.with_webpki_roots(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certificates = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            for certificate in certificates {
                let certificate =
                    certificate.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(certificate)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("ca_file {} holds no certificate", path.display()));
            }
            builder.with_root_certificates(roots)
        }
    };
    Ok(builder.with_no_client_auth())
}

/// An error and its sources in one line ("client error (Connect): tcp connect error: ...").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
