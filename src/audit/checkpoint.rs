//! Signed checkpoints (tree heads): the tree size, its root hash and the time, signed with
//! Ed25519. The signed bytes are a short text an auditor can rebuild from the checkpoint's
//! fields:
//!
//! ```text
//! consentry-log/v1\n
//! <tree size, decimal>\n
//! <root hash, lower-case hex>\n
//! <signing time, microseconds since the Unix epoch, decimal>\n
//! ```
//!
//! The same tree head is also a C2SP checkpoint (`audit::note`): `<origin>\n<size>\n<root in
//! base64>\n`, the note that witnesses cosign. A checkpoint carries the cosignatures gathered
//! for it.
//!
//! [`Cadence`] is the configured rhythm of checkpoints, which `audit::sequencer` follows.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::Serialize;

use super::merkle::Hash;
use super::note::{self, Cosignature, WitnessKey};
use crate::crypto::{hex, key_id};

/// The first line of every signed checkpoint.
pub const ORIGIN: &str = "consentry-log/v1";

/// A signed tree head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub tree_size: u64,
    pub root_hash: Hash,
    pub signed_at_us: i64,
    /// The id of the signing key: the first 8 bytes of SHA-256 of its public key, in hex.
    pub key_id: String,
    pub signature: Vec<u8>,
    /// The witnesses' cosignatures of its note, as gathered (none when read from its row).
    pub cosignatures: Vec<Cosignature>,
}

impl Checkpoint {
    /// The exact bytes that are signed.
    pub fn signed_text(tree_size: u64, root_hash: &Hash, signed_at_us: i64) -> String {
        format!(
            "{ORIGIN}\n{tree_size}\n{}\n{signed_at_us}\n",
            hex(root_hash)
        )
    }

    /// Checks the signature against a public key; names what is wrong.
    pub fn verify(&self, public_key: &[u8]) -> Result<(), String> {
        if key_id(public_key) != self.key_id {
            return Err(format!(
                "checkpoint at size {} is signed by key {}, not by the given key {}",
                self.tree_size,
                self.key_id,
                key_id(public_key)
            ));
        }
        let text = Checkpoint::signed_text(self.tree_size, &self.root_hash, self.signed_at_us);
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(text.as_bytes(), &self.signature)
            .map_err(|_| {
                format!(
                    "checkpoint at size {}: the signature does not verify",
                    self.tree_size
                )
            })
    }

    /// The C2SP note body witnesses cosign, for the log named `origin`.
    pub fn note_body(&self, origin: &str) -> String {
        note::checkpoint_body(origin, self.tree_size, &self.root_hash)
    }

    /// The checkpoint as the API shows it, for the log named `origin`.
    pub fn view(&self, origin: &str) -> CheckpointView {
        use base64::Engine as _;
        CheckpointView {
            origin: origin.to_owned(),
            note: self.note_body(origin),
            cosignatures: self
                .cosignatures
                .iter()
                .map(|c| CosignatureView {
                    witness: c.witness.clone(),
                    time: c.time(),
                    cosignature: c.encoded(),
                })
                .collect(),
            tree_size: self.tree_size,
            root_hash: hex(&self.root_hash),
            signed_at: jiff::Timestamp::from_microsecond(self.signed_at_us)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            signed_at_us: self.signed_at_us,
            key_id: self.key_id.clone(),
            signature: base64::engine::general_purpose::STANDARD.encode(&self.signature),
            signed_text: Checkpoint::signed_text(
                self.tree_size,
                &self.root_hash,
                self.signed_at_us,
            ),
        }
    }

    /// Reads a checkpoint back from its view (as exported).
    pub fn from_view(view: &CheckpointView) -> Result<Checkpoint, String> {
        use base64::Engine as _;
        let root = unhex(&view.root_hash).ok_or("root_hash is not 64 hex digits")?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&view.signature)
            .map_err(|_| "signature is not base64")?;
        let cosignatures = view
            .cosignatures
            .iter()
            .map(|c| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&c.cosignature)
                    .map_err(|_| format!("the cosignature by {} is not base64", c.witness))?;
                Cosignature::from_parts(c.witness.clone(), bytes)
            })
            .collect::<Result<_, String>>()?;
        Ok(Checkpoint {
            tree_size: view.tree_size,
            root_hash: root,
            signed_at_us: view.signed_at_us,
            key_id: view.key_id.clone(),
            signature,
            cosignatures,
        })
    }
}

/// A witness's cosignature in JSON (`audit::note` has its format).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CosignatureView {
    /// The witness's name.
    pub witness: String,
    /// When it cosigned, in seconds since the Unix epoch.
    pub time: u64,
    /// `key id (4 bytes) || time (8, big-endian) || Ed25519 signature (64)`, base64: the
    /// signature line's second field.
    pub cosignature: String,
}

/// A checkpoint in JSON.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CheckpointView {
    pub tree_size: u64,
    /// Lower-case hex.
    pub root_hash: String,
    pub signed_at: String,
    pub signed_at_us: i64,
    pub key_id: String,
    /// Ed25519 over `signed_text`, base64.
    pub signature: String,
    pub signed_text: String,
    /// The log's name in its C2SP checkpoints (older exports: empty).
    #[serde(default)]
    pub origin: String,
    /// The C2SP checkpoint body the witnesses cosign.
    #[serde(default)]
    pub note: String,
    /// The witnesses' cosignatures gathered so far.
    #[serde(default)]
    pub cosignatures: Vec<CosignatureView>,
}

/// A 32-byte hash from 64 hex digits.
pub fn unhex(text: &str) -> Option<Hash> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A log's origin when `log.origin` does not name it: `consentry/<key id>`.
pub fn default_origin(public_key: &[u8]) -> String {
    format!("consentry/{}", key_id(public_key))
}

/// The log's signing key.
pub struct LogSigner {
    pair: Ed25519KeyPair,
    key_id: String,
    origin: String,
}

impl std::fmt::Debug for LogSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSigner")
            .field("key_id", &self.key_id)
            .field("origin", &self.origin)
            .finish()
    }
}

impl LogSigner {
    /// From an Ed25519 key in PKCS#8; the log's origin is `consentry/<key id>` until
    /// [`LogSigner::with_origin`] names it otherwise.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<LogSigner, String> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| "not an Ed25519 key in PKCS#8 (v1 or v2)".to_string())?;
        let key_id = key_id(pair.public_key().as_ref());
        let origin = default_origin(pair.public_key().as_ref());
        Ok(LogSigner {
            pair,
            key_id,
            origin,
        })
    }

    /// Names the log in its C2SP checkpoints (one line, no spaces: a schema-less URL).
    pub fn with_origin(mut self, origin: &str) -> Result<LogSigner, String> {
        if origin.is_empty() || origin.contains(char::is_whitespace) || origin.contains('+') {
            return Err(format!(
                "the log's origin {origin:?} must be one word without `+`, such as \
                 sms.example.com/consentry"
            ));
        }
        self.origin = origin.to_owned();
        Ok(self)
    }

    /// The log's name in its C2SP checkpoints.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The checkpoint as a C2SP signed note, signed by this key: what witnesses are sent.
    pub fn note(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.note_body(&self.origin);
        let line = note::log_signature_line(&self.pair, &self.origin, &body);
        format!("{body}\n{line}")
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs the head of a tree.
    pub fn sign(&self, tree_size: u64, root_hash: Hash, signed_at_us: i64) -> Checkpoint {
        let text = Checkpoint::signed_text(tree_size, &root_hash, signed_at_us);
        Checkpoint {
            tree_size,
            root_hash,
            signed_at_us,
            key_id: self.key_id.clone(),
            signature: self.pair.sign(text.as_bytes()).as_ref().to_vec(),
            cosignatures: Vec::new(),
        }
    }
}

/// A witness the checkpoints are sent to (`audit::witnessing`), as configured and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessEndpoint {
    /// The `add-checkpoint` URL.
    pub url: String,
    pub key: WitnessKey,
}

impl WitnessEndpoint {
    /// From the configuration (the keys were checked when it was read).
    pub fn from_config(config: &crate::config::WitnessEndpoint) -> Result<WitnessEndpoint, String> {
        Ok(WitnessEndpoint {
            url: format!("{}/add-checkpoint", config.url.trim_end_matches('/')),
            key: WitnessKey::from_vkey(&config.key)?,
        })
    }
}

/// When checkpoints are signed.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// Whether this instance sequences at all.
    pub enabled: bool,
    pub leaves: u64,
    pub interval_us: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_signer() -> LogSigner {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        LogSigner::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    #[test]
    fn a_checkpoint_verifies_only_as_signed() {
        let signer = new_signer();
        let checkpoint = signer.sign(7, [9u8; 32], 1_700_000_000_000_000);
        assert_eq!(checkpoint.verify(signer.public_key()), Ok(()));
        let view = checkpoint.view("consentry/test");
        assert_eq!(
            view.signed_text,
            format!(
                "consentry-log/v1\n7\n{}\n1700000000000000\n",
                "09".repeat(32)
            )
        );
        assert_eq!(Checkpoint::from_view(&view).unwrap(), checkpoint);

        let mut bigger = checkpoint.clone();
        bigger.tree_size = 8;
        assert!(bigger.verify(signer.public_key()).is_err());
        let mut other_root = checkpoint.clone();
        other_root.root_hash[0] = 0;
        assert!(other_root.verify(signer.public_key()).is_err());
        let stranger = new_signer();
        assert!(checkpoint.verify(stranger.public_key()).is_err());
        let mut forged = stranger.sign(7, [9u8; 32], 1_700_000_000_000_000);
        forged.key_id = checkpoint.key_id.clone();
        assert!(forged.verify(signer.public_key()).is_err());
    }
}
