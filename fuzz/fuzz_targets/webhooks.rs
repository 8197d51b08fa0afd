//! Gateway webhooks: signature checks and payload parsers of `dialect::twilio`,
//! `dialect::telnyx` and `dialect::generic`.
//!
//! First byte: the dialect (low 2 bits) and whether the input is signed here with the right
//! key (bit 2), so that both the refusal paths and the parsers behind a valid signature are
//! reached. Fields (split at 0xFF) are the URL, content type, signature or timestamp headers;
//! the rest is the body.
//!
//! Properties: no panic; a body signed with the right key verifies (Twilio form and JSON,
//! Telnyx within the tolerance, generic HMAC); `twilio::url_variants` always keeps the URL as
//! given first.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use consentry::dialect::{generic, telnyx, twilio, WebhookError};
use fuzz_common::Fields;
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

const TOKEN: &str = "twilio-auth-token";
const SECRET: &[u8] = b"generic-webhook-secret";

static TELNYX_KEY: LazyLock<(Ed25519KeyPair, [u8; 32])> = LazyLock::new(|| {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
    (pair, public)
});

fn sha256_hex(body: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut fields = Fields::new(data);
    let selector = fields.byte();
    let signed = selector & 4 != 0;
    match selector & 3 {
        0 => {
            // Twilio.
            let url = fields.text();
            let content_type = fields.text();
            let header = fields.text();
            let body = fields.rest();
            let variants = twilio::url_variants(&url);
            assert_eq!(variants.first(), Some(&url), "url_variants drops the URL");
            let json = content_type.starts_with("application/json");
            // A URL that already carries a bodySHA256 (or a fragment) cannot be signed over the
            // body by appending one: the first is the one read.
            let signed = signed && !(json && (url.contains("bodySHA256") || url.contains('#')));
            let (url, header) = if signed {
                if json {
                    let separator = if url.contains('?') { '&' } else { '?' };
                    let url = format!("{url}{separator}bodySHA256={}", sha256_hex(body));
                    let signature = twilio::sign(TOKEN, &url, &[]);
                    (url, signature)
                } else {
                    let params: Vec<(String, String)> = form_urlencoded::parse(body)
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    let signature = twilio::sign(TOKEN, &url, &params);
                    (url, signature)
                }
            } else {
                (url, header)
            };
            let verified =
                twilio::verify_webhook(TOKEN, &url, &content_type, Some(&header), body);
            if signed {
                match &verified {
                    Ok(_) => {}
                    // A JSON body that is not an object, or a URL whose query Twilio's
                    // bodySHA256 cannot be found in (a `#` fragment), is malformed, not forged.
                    Err(WebhookError::Malformed(_)) if json => {}
                    Err(error) => panic!(
                        "a webhook signed with the right token is refused: {error:?} \
                         (url {url:?}, content type {content_type:?})"
                    ),
                }
            }
            if let Ok(params) = verified {
                let _ = twilio::parse(&params);
            }
        }
        1 => {
            // Telnyx.
            let (pair, public) = &*TELNYX_KEY;
            let timestamp = fields.text();
            let signature = fields.text();
            let body = fields.rest();
            let now: i64 = 1_700_000_000;
            let (timestamp, signature) = if signed {
                let timestamp = format!("{}", now + (timestamp.len() as i64 % 600) - 300);
                let mut message = timestamp.clone().into_bytes();
                message.push(b'|');
                message.extend_from_slice(body);
                let signature =
                    base64::engine::general_purpose::STANDARD.encode(pair.sign(&message));
                (timestamp, signature)
            } else {
                (timestamp, signature)
            };
            let verified =
                telnyx::verify(public, Some(&timestamp), Some(&signature), body, now, 300);
            if signed {
                assert_eq!(verified, Ok(()), "a Telnyx webhook signed right is refused");
            }
            let _ = telnyx::parse(body);
        }
        _ => {
            // Generic HMAC-SHA256.
            let header = fields.text();
            let body = fields.rest();
            let header = if signed {
                generic::sign(SECRET, body)
            } else {
                header
            };
            let verified = generic::verify(SECRET, Some(&header), body);
            if signed {
                assert_eq!(verified, Ok(()), "a generic webhook signed right is refused");
            }
            let _ = generic::parse(body);
        }
    }
});
