//! `auth::Verifier::verify` and `verify_header`, built by `Verifier::from_config` from a small
//! configuration: the development issuer (Ed25519, a key made here) and an HS256 issuer.
//!
//! Modes (first byte):
//! - 0: the rest is a token, given to `verify`;
//! - 1: the rest is an `Authorization` header value, given to `verify_header`;
//! - 2 and 3: the rest is a JOSE header and a claims set (fields split at 0xFF), encoded and
//!   signed with the HS256 secret (2) or the development key (3), so that the claims checks
//!   after the signature are reached too; any other byte: signed with a wrong key.
//!
//! Properties: never a panic; a refused token is refused again with the same error (only
//! accepted tokens are cached); `verify_header("Bearer <token>")` answers as `verify(token)`;
//! an accepted token's principal names a valid tenant and a non-empty subject.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use consentry::auth::{AuthError, Principal, Verifier};
use consentry::config::Config;
use fuzz_common::Fields;
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

const SECRET_ENV: &str = "CONSENTRY_FUZZ_HS256_SECRET";
const SECRET: &str = "fuzzing-secret-of-at-least-32-bytes-0123456789";

const CONFIG: &str = r#"
data_dir = "/nonexistent/consentry-fuzz"

[jwt]
dev_issuer = true
leeway_seconds = 30
max_token_lifetime_seconds = 86400

[[jwt.issuers]]
issuer = "https://issuer.example"
audience = "consentry-api"
tenants = ["demo", "acme"]

[[jwt.issuers.keys]]
kid = "hs1"
algorithm = "HS256"
secret = { env = "CONSENTRY_FUZZ_HS256_SECRET" }

[[tenants]]
id = "demo"
senders = ["+12025550100"]
upstream = "sandbox"
purposes = ["marketing", "informational", "transactional"]
default_region = "US"
"#;

struct Setup {
    verifier: Verifier,
    dev_key: Ed25519KeyPair,
    other_key: Ed25519KeyPair,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    std::env::set_var(SECRET_ENV, SECRET);
    let random = ring::rand::SystemRandom::new();
    let pair = |_| {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&random).expect("an Ed25519 key");
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("the key reads back")
    };
    let dev_key = pair(());
    let other_key = pair(());
    let config = Config::parse(CONFIG, std::path::Path::new(".")).expect("the fuzz config parses");
    let verifier = Verifier::from_config(&config, Some(dev_key.public_key().as_ref()))
        .expect("the fuzz verifier builds");
    Setup {
        verifier,
        dev_key,
        other_key,
    }
});

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn check_principal(principal: &Principal) {
    assert!(!principal.subject.is_empty(), "an accepted token has an empty sub");
    assert!(
        consentry::domain::TenantId::parse(principal.tenant.as_str()).is_ok(),
        "an accepted token names an invalid tenant"
    );
}

fn verify_twice(verifier: &Verifier, token: &str) -> Result<Principal, AuthError> {
    let first = verifier.verify(token);
    let second = verifier.verify(token);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            check_principal(a);
            assert_eq!(a.subject, b.subject, "the cache changed the subject");
            assert_eq!(a.tenant, b.tenant, "the cache changed the tenant");
            assert_eq!(a.scopes, b.scopes, "the cache changed the scopes");
        }
        // The same error, detail included (jsonwebtoken looks for missing claims in a
        // HashSet's order; `auth` names the first missing one in a fixed order).
        (Err(a), Err(b)) => assert_eq!(a, b, "a refused token is refused differently"),
        // An accepted token may expire between the two calls (exp at the second edge).
        (Ok(_), Err(AuthError::Expired)) => {}
        _ => panic!("{token:?}: first {first:?}, then {second:?}"),
    }
    first
}

fn same_answer(a: &Result<Principal, AuthError>, b: &Result<Principal, AuthError>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a.subject == b.subject && a.tenant == b.tenant,
        (Err(a), Err(b)) => a.code() == b.code(),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let setup = &*SETUP;
    let verifier = &setup.verifier;
    let mut fields = Fields::new(data);
    match fields.byte() % 4 {
        0 => {
            if let Ok(token) = std::str::from_utf8(fields.rest()) {
                verify_twice(verifier, token).ok();
            }
        }
        1 => {
            if let Ok(value) = std::str::from_utf8(fields.rest()) {
                if let Ok(principal) = verifier.verify_header(Some(value)) {
                    check_principal(&principal);
                }
            }
        }
        mode => {
            let key_choice = fields.byte();
            let header = fields.field();
            let claims = fields.field();
            let signing_input = format!("{}.{}", b64(header), b64(claims));
            let signature = match (mode, key_choice % 4) {
                (2, 0..=2) => {
                    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
                    ring::hmac::sign(&key, signing_input.as_bytes()).as_ref().to_vec()
                }
                (2, _) => {
                    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another secret");
                    ring::hmac::sign(&key, signing_input.as_bytes()).as_ref().to_vec()
                }
                (_, 0..=2) => setup.dev_key.sign(signing_input.as_bytes()).as_ref().to_vec(),
                _ => setup
                    .other_key
                    .sign(signing_input.as_bytes())
                    .as_ref()
                    .to_vec(),
            };
            let token = format!("{signing_input}.{}", b64(&signature));
            let direct = verify_twice(verifier, &token);
            let through_header = verifier.verify_header(Some(&format!("Bearer {token}")));
            assert!(
                same_answer(&direct, &through_header),
                "verify gave {direct:?}, verify_header gave {through_header:?}"
            );
        }
    }
});
