//! The reassigned-numbers lookup: has this number been permanently disconnected since a date?
//! It is the question of the FCC's Reassigned Numbers Database (47 CFR 64.1200(m)), whose
//! answer is yes, no or no data; a caller who asked and was told "no" has the rule's safe
//! harbor, one who was told "yes" is about to reach a stranger.
//!
//! consentry asks an HTTP service configured under `[reassigned_numbers]` (the database's own
//! API behind an adapter, or a provider's):
//!
//! ```text
//! POST <url>   Authorization: Bearer <credential>
//! {"number": "+14155550123", "since": "2026-01-15"}
//! 200 {"answer": "yes" | "no" | "no_data"}
//! ```
//!
//! An answer is kept for `cache_seconds` per number and date. Any other status, body or a
//! timeout is an error: the send it was for is not made (fail closed) and may be retried.
//! When to ask, and what a "yes" does, is `flow::send`'s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};

use crate::config::{ConfigError, ReassignedNumbersConfig, Secret};
use crate::domain::PhoneNumber;
use crate::upstream::HttpClient;

/// The most answers kept; past it, expired ones go, then all.
const MAX_CACHED: usize = 100_000;
/// The largest answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// What the lookup said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Disconnected since the date: the consent was not given by the number's owner now.
    Yes,
    No,
    NoData,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Yes => "yes",
            Answer::No => "no",
            Answer::NoData => "no_data",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("the reassigned-numbers lookup cannot be reached: {0}")]
    Unavailable(String),
    #[error("the reassigned-numbers lookup did not answer in time")]
    Timeout,
    #[error("the reassigned-numbers lookup answered {0}")]
    BadAnswer(String),
}

/// The configured lookup, with its cache.
pub struct Lookup {
    url: String,
    credential: Option<Secret>,
    client: HttpClient,
    request_timeout: Duration,
    /// A consent at least this old is checked.
    pub min_consent_age: jiff::SignedDuration,
    cache_for: Duration,
    cache: Mutex<HashMap<(String, jiff::civil::Date), (Answer, Instant)>>,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Lookup {
    pub fn from_config(config: &ReassignedNumbersConfig) -> Result<Lookup, ConfigError> {
        let error = |message: String| ConfigError(format!("reassigned_numbers: {message}"));
        crate::config::check_upstream_url(&config.url)
            .map_err(|message| error(format!("url {message}")))?;
        let credential = config
            .credential
            .as_ref()
            .map(|secret| secret.resolve("reassigned_numbers.credential"))
            .transpose()?;
        let client = crate::upstream::https_client(
            config.ca_file.as_deref(),
            Duration::from_millis(config.connect_timeout_ms),
        )
        .map_err(error)?;
        Ok(Lookup {
            url: config.url.clone(),
            credential,
            client,
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            min_consent_age: jiff::SignedDuration::from_hours(
                i64::from(config.min_consent_age_days) * 24,
            ),
            cache_for: Duration::from_secs(config.cache_seconds),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `number` (whose keyed hash is `key`) was disconnected since `since`.
    pub async fn ask(
        &self,
        number: &PhoneNumber,
        key: &str,
        since: jiff::civil::Date,
    ) -> Result<Answer, LookupError> {
        let cache_key = (key.to_owned(), since);
        if let Some((answer, at)) = self.cache.lock().expect("lookup cache").get(&cache_key)
            && at.elapsed() < self.cache_for
        {
            return Ok(*answer);
        }
        let answer = self.query(number, since).await?;
        let mut cache = self.cache.lock().expect("lookup cache");
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, at)| at.elapsed() < self.cache_for);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(cache_key, (answer, Instant::now()));
        Ok(answer)
    }

    async fn query(
        &self,
        number: &PhoneNumber,
        since: jiff::civil::Date,
    ) -> Result<Answer, LookupError> {
        let body = serde_json::json!({ "number": number.e164(), "since": since.to_string() });
        let mut request = http::Request::post(self.url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("consentry/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(credential) = &self.credential {
            request = request.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", credential.expose()),
            );
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| LookupError::Unavailable(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| LookupError::Unavailable(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| LookupError::BadAnswer(e.to_string()))?
                .to_bytes();
            Ok::<_, LookupError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| LookupError::Timeout)??;
        if !status.is_success() {
            return Err(LookupError::BadAnswer(format!("HTTP {status}")));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| LookupError::BadAnswer("a body that is not JSON".into()))?;
        match answer["answer"].as_str() {
            Some("yes") => Ok(Answer::Yes),
            Some("no") => Ok(Answer::No),
            Some("no_data") => Ok(Answer::NoData),
            other => Err(LookupError::BadAnswer(format!("answer {other:?}"))),
        }
    }
}
