//! The small parsers of API fields and audit files (first byte picks):
//! - 0: `rfc3339::parse` (`occurred_at`, audit filters), `domain::TenantId::parse`,
//!   `domain::MessageId::parse`, `domain::Body::parse`, `consent::Action::parse`,
//!   `consent::Level::parse`, `Purpose` and `Region` from text, `crypto::decode_public_key`,
//!   `crypto::decode_key`, `audit::checkpoint::unhex`;
//! - 1: `audit::leaf::decode` (leaves in bundles and exports);
//! - 2: `audit::verify::read_checkpoints` (a checkpoint file an auditor is given) and
//!   `audit::verify::verify_bundle` on the same text as JSON;
//! - 3: `audit::merkle::verify_inclusion` and `verify_consistency` with sizes, indexes and
//!   proofs from the input.
//!
//! Properties: no panic; an RFC 3339 instant printed back parses to the same instant.
#![no_main]

use consentry::audit::{checkpoint, leaf, merkle, verify};
use consentry::consent::{Action, Level};
use consentry::domain::{Body, MessageId, Purpose, Region, TenantId};
use libfuzzer_sys::fuzz_target;

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    for (i, b) in data.iter().skip(at).take(8).enumerate() {
        bytes[i] = *b;
    }
    u64::from_le_bytes(bytes)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(instant) = consentry::rfc3339::parse(text) {
                let printed = instant.to_string();
                assert_eq!(
                    consentry::rfc3339::parse(&printed),
                    Ok(instant),
                    "{text:?} reads as {printed}, which does not read back"
                );
            }
            if let Ok(id) = TenantId::parse(text) {
                assert_eq!(id.as_str(), text);
            }
            if let Some(id) = MessageId::parse(text) {
                assert_eq!(MessageId::parse(id.as_str()), Some(id.clone()));
            }
            let _ = Body::parse(text.to_owned());
            let _ = Action::parse(text);
            let _ = Level::parse(text);
            let _ = text.parse::<Purpose>();
            let _ = text.parse::<Region>();
            let _ = consentry::crypto::decode_public_key(text);
            let _ = consentry::crypto::decode_key(rest);
            let _ = checkpoint::unhex(text);
        }
        1 => {
            let _ = leaf::decode(rest);
        }
        2 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(checkpoints) = verify::read_checkpoints(&text) {
                for checkpoint in &checkpoints {
                    let _ = checkpoint.verify(&[7u8; 32]);
                    let view = checkpoint.view("fuzz.example/log");
                    assert!(
                        checkpoint::Checkpoint::from_view(&view).is_ok(),
                        "a checkpoint's own view does not read back"
                    );
                }
            }
            if let Ok(bundle) = serde_json::from_slice::<serde_json::Value>(rest) {
                let _ = verify::verify_bundle(&bundle, &[7u8; 32], None);
            }
        }
        _ => {
            let index = u64_at(rest, 0);
            let size = u64_at(rest, 8);
            let hashes: Vec<merkle::Hash> = rest
                .get(16..)
                .unwrap_or_default()
                .chunks_exact(32)
                .map(|c| c.try_into().unwrap())
                .collect();
            let (leaf, proof) = match hashes.split_first() {
                Some((leaf, proof)) => (*leaf, proof),
                None => ([0u8; 32], &[][..]),
            };
            let root = merkle::empty_root();
            let _ = merkle::verify_inclusion(index, size, &leaf, proof, &root);
            let _ = merkle::verify_consistency(index, size, &leaf, &root, proof);
            let _ = merkle::verify_consistency(index % 4096, size % 4096, &leaf, &root, proof);
            let _ = merkle::verify_inclusion(index % 4096, size % 4096, &leaf, proof, &root);
        }
    }
});
