//! JWT authentication: a bearer token in, a [`Principal`] out, or a reason with a stable code.
//!
//! The rules (RFC 7519, RFC 8725 "JWT Best Current Practices"):
//! - the token is at most [`MAX_TOKEN_BYTES`];
//! - its header holds only `alg`, `typ` and `kid`: `crit`, `jku`, `x5u`, `jwk`, `x5c` and every
//!   other parameter are refused, so no token can point at its own key;
//! - the issuer (`iss`) picks the configured key set, `kid` picks the key, and each key is pinned
//!   to one algorithm: `alg: none`, or an HS256 token made with an RSA public key as secret,
//!   never matches;
//! - `iss`, `aud`, `exp` are required, `nbf` is honoured, with a leeway of at most 60 s;
//!   `exp`, `nbf` and `iat` must be NumericDates (a number of seconds, 0 to year 9999), a
//!   token issued in the future is refused, and `jwt.max_token_lifetime_seconds` bounds how
//!   long a token may live;
//! - `sub`, `tenant` and `scope` (space-separated) say who is sending, for which tenant, with
//!   which permissions; optional `senders` and `purposes` narrow the tenant's configuration.
//!
//! All the cryptography is jsonwebtoken 9 on ring.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr as _;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, DEFAULT_AUDIENCE, DEV_ISSUER, KeyConfig};
use crate::domain::{Purpose, TenantId};

/// The largest token accepted. Real tokens are well under 2 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
const ALLOWED_HEADER_PARAMETERS: [&str; 3] = ["alg", "typ", "kid"];

/// Scopes (permissions) a token may carry.
pub mod scope {
    pub const SEND: &str = "messages:send";
    pub const READ_MESSAGES: &str = "messages:read";
    pub const CONSENTS_WRITE: &str = "consents:write";
    pub const CONSENTS_READ: &str = "consents:read";
    pub const ADMIN: &str = "admin";
    /// Audit metadata: lists, checkpoints, proofs, bundles. Never bodies.
    pub const AUDIT_READ: &str = "audit:read";
    /// Message bodies, each read recorded in the log.
    pub const AUDIT_DECRYPT: &str = "audit:decrypt";
}

/// Who is calling, once the token is verified.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub tenant: TenantId,
    pub scopes: BTreeSet<String>,
    /// Senders the token is limited to, if it names any (raw strings, parsed per tenant).
    pub senders: Option<Vec<String>>,
    /// Purposes the token is limited to, if it names any.
    pub purposes: Option<BTreeSet<Purpose>>,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

/// Why a token was refused. Each maps to a stable code (`code()`), answered with 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token in the Authorization header")]
    Missing,
    #[error("the token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token header carries a parameter that is not allowed: {0}")]
    ForbiddenHeader(String),
    #[error("the token's issuer is not trusted")]
    UnknownIssuer,
    #[error("no key of the issuer matches the token's kid")]
    UnknownKey,
    #[error("the token's algorithm is not the one its key is pinned to")]
    AlgorithmNotAllowed,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for this audience")]
    WrongAudience,
    #[error("the token lacks the claim {0}")]
    MissingClaim(String),
    #[error("the token's claims are not valid: {0}")]
    BadClaims(String),
    #[error("the issuer may not issue tokens for this tenant")]
    TenantNotAllowed,
    #[error("the token lives longer than this server accepts ({0} s)")]
    LifetimeTooLong(u64),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::TooLarge => "token_too_large",
            AuthError::Malformed => "malformed_token",
            AuthError::ForbiddenHeader(_) => "forbidden_header_parameter",
            AuthError::UnknownIssuer => "invalid_issuer",
            AuthError::UnknownKey => "unknown_key",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::BadSignature => "invalid_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongAudience => "invalid_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::BadClaims(_) => "invalid_claims",
            AuthError::TenantNotAllowed => "tenant_not_allowed",
            AuthError::LifetimeTooLong(_) => "token_lifetime_too_long",
        }
    }
}

struct VerifyKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

struct Issuer {
    audience: String,
    tenants: Option<BTreeSet<String>>,
    keys: Vec<VerifyKey>,
}

/// Verifies bearer tokens against the configured issuers.
pub struct Verifier {
    issuers: HashMap<String, Issuer>,
    leeway_seconds: u64,
    max_lifetime_seconds: Option<u64>,
    /// Tokens verified before, by the SHA-256 of the token, until their `exp`: a client sends
    /// the same token with every request, and checking its signature again each time was the
    /// largest CPU cost of a send. Lives as long as this verifier: a new configuration (new
    /// keys, a key taken out) builds a new verifier, with an empty cache.
    verified: std::sync::Mutex<HashMap<[u8; 32], Verified>>,
}

/// A verified token's principal and the second its `exp` (with the leeway) ends.
#[derive(Debug, Clone)]
struct Verified {
    principal: Principal,
    valid_until: i64,
}

/// The most tokens the cache keeps; beyond, expired ones are dropped, then all.
const MAX_CACHED_TOKENS: usize = 10_000;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn decoding_key_from_pem(
    algorithm: Algorithm,
    pem: &[u8],
) -> jsonwebtoken::errors::Result<DecodingKey> {
    match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            Err(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into())
        }
    }
}

impl Verifier {
    /// Builds the verifier, reading key files and secrets. `dev_public_key` is the development
    /// issuer's Ed25519 public key, trusted only when `jwt.dev_issuer` is on.
    pub fn from_config(
        config: &Config,
        dev_public_key: Option<&[u8]>,
    ) -> Result<Self, ConfigError> {
        let mut issuers = HashMap::new();
        for (index, issuer) in config.jwt.issuers.iter().enumerate() {
            let field = format!("jwt.issuers[{index}]");
            let mut keys = Vec::new();
            for (key_index, key) in issuer.keys.iter().enumerate() {
                let key_field = format!("{field}.keys[{key_index}]");
                keys.push(load_key(key, &key_field)?);
            }
            if let Some(path) = &issuer.jwks_file {
                keys.extend(load_jwks(path, &format!("{field}.jwks_file"))?);
            }
            issuers.insert(
                issuer.issuer.clone(),
                Issuer {
                    audience: issuer.audience.clone(),
                    tenants: issuer.tenants.as_ref().map(|t| t.iter().cloned().collect()),
                    keys,
                },
            );
        }
        if config.jwt.dev_issuer {
            let public = dev_public_key.ok_or_else(|| {
                ConfigError("jwt.dev_issuer: the development key is not available".into())
            })?;
            issuers.insert(
                DEV_ISSUER.to_owned(),
                Issuer {
                    audience: DEFAULT_AUDIENCE.to_owned(),
                    tenants: None,
                    keys: vec![VerifyKey {
                        kid: Some(DEV_KID.to_owned()),
                        algorithm: Algorithm::EdDSA,
                        key: DecodingKey::from_ed_der(public),
                    }],
                },
            );
        }
        Ok(Verifier {
            issuers,
            leeway_seconds: config.jwt.leeway_seconds.min(60),
            max_lifetime_seconds: config.jwt.max_token_lifetime_seconds,
            verified: Default::default(),
        })
    }

    /// Verifies the value of an `Authorization` header.
    pub fn verify_header(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        self.verify(token.trim())
    }

    /// Verifies a compact JWT, or finds it verified before and not yet expired. A refused
    /// token is never cached: it is checked again, and refused again, each time.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        let now = jiff::Timestamp::now().as_second();
        if let Some(verified) = self.cached(&digest)
            && now < verified.valid_until
        {
            return Ok(verified.principal);
        }
        let (principal, exp) = self.verify_signed(token)?;
        let valid_until = exp.saturating_add(self.leeway_seconds as i64);
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= MAX_CACHED_TOKENS {
                verified.retain(|_, entry| entry.valid_until > now);
                if verified.len() >= MAX_CACHED_TOKENS {
                    verified.clear();
                }
            }
            verified.insert(
                digest,
                Verified {
                    principal: principal.clone(),
                    valid_until,
                },
            );
        }
        Ok(principal)
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Verified> {
        self.verified.lock().ok()?.get(digest).cloned()
    }

    /// Verifies a compact JWT's signature and claims; returns its principal and its `exp`.
    fn verify_signed(&self, token: &str) -> Result<(Principal, i64), AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };

        let header = decode_segment(header)?;
        if let Some(parameter) = header
            .keys()
            .find(|name| !ALLOWED_HEADER_PARAMETERS.contains(&name.as_str()))
        {
            return Err(AuthError::ForbiddenHeader(parameter.clone()));
        }
        let algorithm = header
            .get("alg")
            .and_then(|alg| alg.as_str())
            .ok_or(AuthError::Malformed)?;
        let kid = match header.get("kid") {
            None => None,
            Some(serde_json::Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(AuthError::Malformed),
        };

        // The issuer is read before the signature is checked only to pick the key set; nothing
        // else of the payload is trusted until the signature verifies.
        let unverified = decode_segment(payload)?;
        let issuer_name = unverified
            .get("iss")
            .and_then(|iss| iss.as_str())
            .ok_or_else(|| AuthError::MissingClaim("iss".into()))?;
        let issuer = self
            .issuers
            .get(issuer_name)
            .ok_or(AuthError::UnknownIssuer)?;
        let key = match kid {
            Some(kid) => issuer
                .keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid)),
            None if issuer.keys.len() == 1 => issuer.keys.first(),
            None => None,
        }
        .ok_or(AuthError::UnknownKey)?;
        if Algorithm::from_str(algorithm).ok() != Some(key.algorithm) {
            return Err(AuthError::AlgorithmNotAllowed);
        }

        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer_name]);
        validation.set_audience(&[issuer.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|error| match error.kind() {
                // jsonwebtoken looks for the required claims in a HashSet's order; name the
                // first missing one in a fixed order, so that a token is refused the same way
                // every time (found by fuzzing). The signature verified before this check.
                jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => {
                    let missing = ["exp", "iss", "aud"]
                        .into_iter()
                        .find(|claim| !unverified.contains_key(*claim))
                        .unwrap_or("exp");
                    AuthError::MissingClaim(missing.into())
                }
                _ => map_jwt_error(error),
            })?
            .claims;

        let subject = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| AuthError::MissingClaim("sub".into()))?;
        let tenant = claims
            .tenant
            .ok_or_else(|| AuthError::MissingClaim("tenant".into()))?;
        if let Some(allowed) = &issuer.tenants
            && !allowed.contains(&tenant)
        {
            return Err(AuthError::TenantNotAllowed);
        }
        let tenant = TenantId::parse(&tenant).map_err(AuthError::BadClaims)?;
        let purposes = claims
            .purposes
            .map(|list| {
                list.iter()
                    .map(|p| p.parse::<Purpose>())
                    .collect::<Result<BTreeSet<_>, _>>()
            })
            .transpose()
            .map_err(AuthError::BadClaims)?;
        let exp = numeric_date("exp", claims.exp.as_ref())?
            .ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
        // jsonwebtoken checks `nbf` only when it is a number: any other type is refused here.
        numeric_date("nbf", claims.nbf.as_ref())?;
        let iat = numeric_date("iat", claims.iat.as_ref())?;
        let now = jiff::Timestamp::now().as_second();
        let leeway = self.leeway_seconds as i64;
        if iat.is_some_and(|iat| iat > now + leeway) {
            return Err(AuthError::BadClaims(
                "iat: the token was issued in the future".into(),
            ));
        }
        if let Some(max) = self.max_lifetime_seconds {
            let max = i64::try_from(max).unwrap_or(i64::MAX);
            let from = iat.unwrap_or(now).min(now);
            if exp.saturating_sub(from) > max.saturating_add(leeway) {
                return Err(AuthError::LifetimeTooLong(max as u64));
            }
        }
        let principal = Principal {
            subject,
            tenant,
            scopes: claims
                .scope
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            senders: claims.senders,
            purposes,
        };
        Ok((principal, exp))
    }
}

/// The latest NumericDate accepted: the end of year 9999.
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// A NumericDate claim (RFC 7519 section 2) in whole seconds, absent, or refused.
fn numeric_date(name: &str, value: Option<&serde_json::Value>) -> Result<Option<i64>, AuthError> {
    let Some(value) = value else { return Ok(None) };
    match value.as_f64() {
        Some(seconds) if seconds.is_finite() && (0.0..=MAX_NUMERIC_DATE).contains(&seconds) => {
            Ok(Some(seconds as i64))
        }
        _ => Err(AuthError::BadClaims(format!(
            "{name}: not a NumericDate (seconds since 1970, up to year 9999)"
        ))),
    }
}

fn decode_segment(segment: &str) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

fn map_jwt_error(error: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::UnknownIssuer,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::AlgorithmNotAllowed
        }
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
        ErrorKind::Json(error) => AuthError::BadClaims(error.to_string()),
        _ => AuthError::Malformed,
    }
}

fn load_key(key: &KeyConfig, field: &str) -> Result<VerifyKey, ConfigError> {
    let error = |message: String| ConfigError(format!("{field}: {message}"));
    key.check().map_err(error)?;
    let algorithm = Algorithm::from_str(&key.algorithm).map_err(|e| error(e.to_string()))?;
    let decoding = if let Some(secret) = &key.secret {
        let secret = secret.resolve(&format!("{field}.secret"))?;
        if secret.expose().len() < 32 {
            return Err(error(
                "an HMAC secret must be at least 32 bytes (RFC 7518 section 3.2)".into(),
            ));
        }
        DecodingKey::from_secret(secret.expose().as_bytes())
    } else {
        let path = key.public_key_file.as_ref().expect("checked above");
        let pem = std::fs::read(path)
            .map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
        decoding_key_from_pem(algorithm, &pem).map_err(|e| {
            error(format!(
                "{} is not a {} public key in PEM: {e}",
                path.display(),
                key.algorithm
            ))
        })?
    };
    Ok(VerifyKey {
        kid: key.kid.clone(),
        algorithm,
        key: decoding,
    })
}

fn load_jwks(path: &std::path::Path, field: &str) -> Result<Vec<VerifyKey>, ConfigError> {
    let error = |message: String| ConfigError(format!("{field}: {message}"));
    let text =
        std::fs::read(path).map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(&text).map_err(|e| error(format!("not a JWKS: {e}")))?;
    set.keys
        .iter()
        .enumerate()
        .map(|(index, jwk)| {
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or_else(|| error(format!("key {index} has no kid")))?;
            let algorithm = jwk
                .common
                .key_algorithm
                .and_then(|alg| Algorithm::from_str(&alg.to_string()).ok())
                .ok_or_else(|| error(format!("key {kid:?} has no usable alg")))?;
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| error(format!("key {kid:?} does not load: {e}")))?;
            Ok(VerifyKey {
                kid: Some(kid),
                algorithm,
                key,
            })
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct Claims {
    /// Checked by jsonwebtoken (a number, required); read here to know how long to cache.
    #[serde(default, deserialize_with = "present")]
    exp: Option<serde_json::Value>,
    /// Checked by jsonwebtoken when a number; its type is checked here (`null` included).
    #[serde(default, deserialize_with = "present")]
    nbf: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    iat: Option<serde_json::Value>,
    sub: Option<String>,
    tenant: Option<String>,
    scope: Option<String>,
    senders: Option<Vec<String>>,
    purposes: Option<Vec<String>>,
}

/// A claim that is there, whatever its value (`null` too): `Some`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// The `kid` of the development key.
pub const DEV_KID: &str = "dev";

/// The claims of a development token.
#[derive(Debug, Serialize)]
pub struct DevClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub tenant: String,
    pub scope: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// Signs a development token with the data folder's Ed25519 key.
pub fn mint_dev_token(pkcs8: &[u8], claims: &DevClaims) -> anyhow::Result<String> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(DEV_KID.to_owned());
    Ok(jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_ed_der(pkcs8),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An ES256 key pair: the PKCS#8 private key and its JWK (public part).
    fn es256_key(kid: &str) -> (Vec<u8>, serde_json::Value) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        (pair.serialize_der(), jwk)
    }

    fn sign(pkcs8: &[u8], kid: &str, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(pkcs8)).unwrap()
    }

    #[test]
    fn verified_tokens_are_cached_until_they_expire_and_refused_ones_never() {
        let folder = tempfile::tempdir().unwrap();
        let (private, public) = es256_key("k1");
        std::fs::write(
            folder.path().join("jwks.json"),
            json!({ "keys": [public] }).to_string(),
        )
        .unwrap();
        let text = "[jwt]\nleeway_seconds = 0\n[[jwt.issuers]]\nissuer = \"https://idp\"\njwks_file = \"jwks.json\"\n";
        let config = Config::parse(text, folder.path()).unwrap();
        let verifier = Verifier::from_config(&config, None).unwrap();
        let now = jiff::Timestamp::now().as_second();
        let claims = |exp: i64| {
            json!({
                "iss": "https://idp", "aud": "consentry", "sub": "app", "tenant": "acme",
                "scope": "messages:send", "exp": exp,
            })
        };
        let cached = || verifier.verified.lock().unwrap().len();

        let token = sign(&private, "k1", &claims(now + 600));
        assert_eq!(verifier.verify(&token).unwrap().subject, "app");
        assert_eq!(verifier.verify(&token).unwrap().subject, "app");
        assert_eq!(
            cached(),
            1,
            "one entry for the token, whatever the number of uses"
        );

        let expired = sign(&private, "k1", &claims(now - 10));
        assert_eq!(verifier.verify(&expired).unwrap_err(), AuthError::Expired);
        assert_eq!(verifier.verify("a.b.c").unwrap_err(), AuthError::Malformed);
        assert_eq!(cached(), 1, "refused tokens are not cached");

        // An entry past its `exp` is not served: the token is verified again.
        let digest = |token: &str| -> [u8; 32] {
            ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
                .as_ref()
                .try_into()
                .unwrap()
        };
        let principal = verifier.verify(&token).unwrap();
        verifier.verified.lock().unwrap().insert(
            digest("x.y.z"),
            Verified {
                principal: principal.clone(),
                valid_until: now - 1,
            },
        );
        assert_eq!(verifier.verify("x.y.z").unwrap_err(), AuthError::Malformed);
        verifier.verified.lock().unwrap().insert(
            digest("x.y.z"),
            Verified {
                principal,
                valid_until: now + 60,
            },
        );
        assert!(
            verifier.verify("x.y.z").is_ok(),
            "a live entry is served by its hash"
        );

        // Bounded: when full, the expired entries go first, then all of them.
        {
            let mut entries = verifier.verified.lock().unwrap();
            let live = entries.values().next().unwrap().clone();
            for index in 0..MAX_CACHED_TOKENS as u32 {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&index.to_be_bytes());
                entries.insert(key, live.clone());
            }
        }
        let fresh = sign(&private, "k1", &claims(now + 601));
        verifier.verify(&fresh).unwrap();
        assert!(cached() <= MAX_CACHED_TOKENS, "{} entries", cached());
    }

    #[test]
    fn jwks_keys_verify_with_the_algorithm_they_declare() {
        let folder = tempfile::tempdir().unwrap();
        let (first_private, first_public) = es256_key("k1");
        let (second_private, second_public) = es256_key("k2");
        std::fs::write(
            folder.path().join("jwks.json"),
            json!({ "keys": [first_public, second_public] }).to_string(),
        )
        .unwrap();
        let text = "[[jwt.issuers]]\nissuer = \"https://idp\"\njwks_file = \"jwks.json\"\ntenants = [\"acme\"]\n";
        let config = Config::parse(text, folder.path()).unwrap();
        let verifier = Verifier::from_config(&config, None).unwrap();

        let now = jiff::Timestamp::now().as_second();
        let claims = json!({
            "iss": "https://idp", "aud": "consentry", "sub": "app", "tenant": "acme",
            "scope": "messages:send admin", "exp": now + 60,
        });
        let principal = verifier
            .verify(&sign(&first_private, "k1", &claims))
            .unwrap();
        assert_eq!(principal.tenant.as_str(), "acme");
        assert!(principal.has_scope("admin"));
        assert!(
            verifier
                .verify(&sign(&second_private, "k2", &claims))
                .is_ok()
        );
        // A key signing under another key's kid does not verify.
        assert_eq!(
            verifier
                .verify(&sign(&second_private, "k1", &claims))
                .unwrap_err(),
            AuthError::BadSignature
        );
        // The issuer may not speak for another tenant.
        let other = json!({
            "iss": "https://idp", "aud": "consentry", "sub": "app", "tenant": "beta",
            "scope": "messages:send", "exp": now + 60,
        });
        assert_eq!(
            verifier
                .verify(&sign(&first_private, "k1", &other))
                .unwrap_err(),
            AuthError::TenantNotAllowed
        );
    }

    #[test]
    fn claims_are_checked_after_the_signature() {
        let folder = tempfile::tempdir().unwrap();
        let (private, public) = es256_key("k1");
        std::fs::write(
            folder.path().join("jwks.json"),
            json!({ "keys": [public] }).to_string(),
        )
        .unwrap();
        let text = "[[jwt.issuers]]\nissuer = \"https://idp\"\njwks_file = \"jwks.json\"\n";
        let config = Config::parse(text, folder.path()).unwrap();
        let verifier = Verifier::from_config(&config, None).unwrap();
        let now = jiff::Timestamp::now().as_second();
        let base = json!({ "iss": "https://idp", "aud": "consentry", "exp": now + 60 });
        let cases = [
            (
                json!({ "tenant": "acme" }),
                AuthError::MissingClaim("sub".into()),
            ),
            (
                json!({ "sub": "app" }),
                AuthError::MissingClaim("tenant".into()),
            ),
            (
                json!({ "sub": "app", "tenant": "Not Valid" }),
                AuthError::BadClaims(String::new()),
            ),
        ];
        for (extra, expected) in cases {
            let mut claims = base.clone();
            claims
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let error = verifier.verify(&sign(&private, "k1", &claims)).unwrap_err();
            assert_eq!(error.code(), expected.code(), "{claims}");
        }
    }
}
