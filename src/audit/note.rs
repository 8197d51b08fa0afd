//! The log's checkpoints as C2SP signed notes, and the witnesses' cosignatures over them.
//!
//! Witnesses follow three open specifications, so that any witness that speaks them can
//! cosign consentry's log and any verifier that speaks them can check it:
//!
//! - [tlog-checkpoint](https://c2sp.org/tlog-checkpoint): the note body is the origin line, the
//!   tree size and the root hash in base64, each ending in a newline.
//! - [signed-note](https://c2sp.org/signed-note): a signature line is `— <name> base64(key id ||
//!   signature)`; an Ed25519 key's id is `SHA-256(name || "\n" || 0x01 || key)[:4]`.
//! - [tlog-cosignature](https://c2sp.org/tlog-cosignature), its Ed25519 form: a witness signs
//!   `cosignature/v1\ntime <seconds>\n` followed by the note body; its key id uses `0x04`
//!   instead of `0x01`, and the signature is the time (8 bytes, big-endian) then 64 bytes.
//! - [tlog-witness](https://c2sp.org/tlog-witness): the `add-checkpoint` request is `old
//!   <size>\n`, the consistency proof's hashes one per line in base64, an empty line, then the
//!   signed checkpoint.
//!
//! Pure: no IO, no clock. `audit::witnessing` (the log's side) and `witness` (the witness's
//! server) do the talking.

use base64::Engine as _;
use ring::digest::{SHA256, digest};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use super::merkle::Hash;

/// The signature line's first character, U+2014 (em dash).
const DASH: &str = "\u{2014} ";
/// The signature algorithm byte of a plain Ed25519 note signature (signed-note).
const NOTE_ED25519: u8 = 0x01;
/// The signature algorithm byte of an Ed25519 cosignature (tlog-cosignature).
const COSIGNATURE_ED25519: u8 = 0x04;
/// The most hashes a consistency proof may have in an `add-checkpoint` request.
const MAX_PROOF_LINES: usize = 63;

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

/// The note body of a checkpoint: `origin\nsize\nbase64(root)\n`.
pub fn checkpoint_body(origin: &str, tree_size: u64, root: &Hash) -> String {
    format!("{origin}\n{tree_size}\n{}\n", b64().encode(root))
}

/// The four-byte id of a key named `name` with signature type `algorithm`.
fn note_key_id(name: &str, algorithm: u8, public_key: &[u8]) -> [u8; 4] {
    let mut input = Vec::with_capacity(name.len() + 2 + public_key.len());
    input.extend_from_slice(name.as_bytes());
    input.push(b'\n');
    input.push(algorithm);
    input.extend_from_slice(public_key);
    let hash = digest(&SHA256, &input);
    let mut id = [0u8; 4];
    id.copy_from_slice(&hash.as_ref()[..4]);
    id
}

/// The log's own signature line over `body`, with its key named by the origin.
pub fn log_signature_line(pair: &Ed25519KeyPair, origin: &str, body: &str) -> String {
    let id = note_key_id(origin, NOTE_ED25519, pair.public_key().as_ref());
    let mut bytes = id.to_vec();
    bytes.extend_from_slice(pair.sign(body.as_bytes()).as_ref());
    format!("{DASH}{origin} {}\n", b64().encode(bytes))
}

/// A checkpoint read back from a signed note: its body's three values and signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub origin: String,
    pub tree_size: u64,
    pub root: Hash,
    /// The note body, exactly as signed.
    pub body: String,
    /// Every signature line, as `(name, key id || signature)`.
    pub signatures: Vec<(String, Vec<u8>)>,
}

impl SignedCheckpoint {
    /// Parses a signed note holding a checkpoint (extension lines are refused: consentry's
    /// log makes none, and a witness should not vouch for text it does not understand).
    pub fn parse(text: &str) -> Result<SignedCheckpoint, String> {
        if text.contains('\r') {
            return Err("lines end in a newline alone, not a carriage return".into());
        }
        let (body, signatures) = text
            .split_once("\n\n")
            .ok_or("the note has no empty line between its body and its signatures")?;
        let body = format!("{body}\n");
        let mut lines = body.lines();
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or("no origin line")?;
        let tree_size = lines
            .next()
            .and_then(decimal)
            .ok_or("the second line is not a tree size in decimal")?;
        let root = lines
            .next()
            .and_then(|l| b64().decode(l).ok())
            .and_then(|bytes| Hash::try_from(bytes.as_slice()).ok())
            .ok_or("the third line is not a 32-byte root hash in base64")?;
        if lines.next().is_some() {
            return Err("the checkpoint has extension lines, which this log never writes".into());
        }
        let mut parsed = Vec::new();
        for line in signatures.lines() {
            parsed.push(parse_signature_line(line)?);
        }
        if !signatures.ends_with('\n') || parsed.is_empty() {
            return Err("the note has no signature lines, or they do not end in a newline".into());
        }
        Ok(SignedCheckpoint {
            origin: origin.to_owned(),
            tree_size,
            root,
            body,
            signatures: parsed,
        })
    }

    /// Whether one of the signatures is the log's, by `public_key` (raw Ed25519).
    pub fn signed_by_log(&self, public_key: &[u8]) -> bool {
        let id = note_key_id(&self.origin, NOTE_ED25519, public_key);
        self.signatures.iter().any(|(name, bytes)| {
            name == &self.origin
                && bytes.len() == 68
                && bytes[..4] == id
                && UnparsedPublicKey::new(&ED25519, public_key)
                    .verify(self.body.as_bytes(), &bytes[4..])
                    .is_ok()
        })
    }
}

/// A decimal with no leading zeros (`0` itself allowed), as the specifications write sizes.
fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `— name base64` into `(name, bytes)`.
fn parse_signature_line(line: &str) -> Result<(String, Vec<u8>), String> {
    let rest = line
        .strip_prefix(DASH)
        .ok_or_else(|| format!("a signature line does not start with an em dash: {line:?}"))?;
    let (name, encoded) = rest
        .rsplit_once(' ')
        .ok_or_else(|| format!("a signature line has no signature: {line:?}"))?;
    let bytes = b64()
        .decode(encoded)
        .map_err(|_| format!("a signature line's signature is not base64: {line:?}"))?;
    if name.is_empty() || bytes.len() < 5 {
        return Err(format!("a signature line is too short: {line:?}"));
    }
    Ok((name.to_owned(), bytes))
}

/// A witness's cosignature of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosignature {
    /// The witness's name (its key name).
    pub witness: String,
    /// `key id (4) || time (8, big-endian) || Ed25519 signature (64)`.
    pub bytes: Vec<u8>,
}

impl Cosignature {
    /// When the witness signed, in seconds since the Unix epoch.
    pub fn time(&self) -> u64 {
        u64::from_be_bytes(self.bytes[4..12].try_into().expect("76 bytes"))
    }

    /// The signature line, as a witness answers it.
    pub fn line(&self) -> String {
        format!("{DASH}{} {}\n", self.witness, b64().encode(&self.bytes))
    }

    /// Reads a cosignature from a signature line.
    pub fn from_line(line: &str) -> Result<Cosignature, String> {
        let (witness, bytes) = parse_signature_line(line.trim_end_matches('\n'))?;
        Cosignature::from_parts(witness, bytes)
    }

    /// A cosignature from its name and its bytes (`key id || time || signature`).
    pub fn from_parts(witness: String, bytes: Vec<u8>) -> Result<Cosignature, String> {
        if bytes.len() != 4 + 8 + 64 {
            return Err(format!(
                "a cosignature by {witness} has {} bytes, not 76 (key id, time, Ed25519 signature)",
                bytes.len()
            ));
        }
        Ok(Cosignature { witness, bytes })
    }

    /// Checks that `key` (the witness's, raw Ed25519) cosigned `body` under its name.
    pub fn verify(&self, key: &WitnessKey, body: &str) -> Result<(), String> {
        if self.witness != key.name || self.bytes[..4] != key.id() {
            return Err(format!(
                "the cosignature is by {}, not by the witness key {}",
                self.witness, key.name
            ));
        }
        UnparsedPublicKey::new(&ED25519, &key.public_key)
            .verify(
                cosigned_message(self.time(), body).as_bytes(),
                &self.bytes[12..],
            )
            .map_err(|_| format!("the cosignature by {} does not verify", self.witness))
    }

    /// The base64 of the bytes, as stored and shown.
    pub fn encoded(&self) -> String {
        b64().encode(&self.bytes)
    }
}

/// What a witness signs: the header, the time and the checkpoint's note body.
fn cosigned_message(time: u64, body: &str) -> String {
    format!("cosignature/v1\ntime {time}\n{body}")
}

/// Cosigns `body` at `time` as the witness `name`.
pub fn cosign(pair: &Ed25519KeyPair, name: &str, body: &str, time: u64) -> Cosignature {
    let mut bytes = note_key_id(name, COSIGNATURE_ED25519, pair.public_key().as_ref()).to_vec();
    bytes.extend_from_slice(&time.to_be_bytes());
    bytes.extend_from_slice(pair.sign(cosigned_message(time, body).as_bytes()).as_ref());
    Cosignature {
        witness: name.to_owned(),
        bytes,
    }
}

/// A witness's public identity: its name and raw Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessKey {
    pub name: String,
    pub public_key: Vec<u8>,
}

impl WitnessKey {
    /// The id its cosignatures carry.
    pub fn id(&self) -> [u8; 4] {
        note_key_id(&self.name, COSIGNATURE_ED25519, &self.public_key)
    }

    /// The signed-note verifier key: `name+hex(key id)+base64(0x04 || key)`.
    pub fn vkey(&self) -> String {
        let mut material = vec![COSIGNATURE_ED25519];
        material.extend_from_slice(&self.public_key);
        format!(
            "{}+{}+{}",
            self.name,
            crate::crypto::hex(&self.id()),
            b64().encode(material)
        )
    }

    /// Reads a verifier key (`vkey`), checking that its id matches its name and key.
    pub fn from_vkey(text: &str) -> Result<WitnessKey, String> {
        // A name has no `+` (signed-note); the base64 after the id may.
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(material)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("a witness key is `name+keyid+base64key` (a signed-note vkey)".into());
        };
        let material = b64()
            .decode(material)
            .map_err(|_| "the witness key's material is not base64")?;
        if material.len() != 33 || material[0] != COSIGNATURE_ED25519 {
            return Err(
                "the witness key is not an Ed25519 cosignature key (type 0x04, 32 bytes)".into(),
            );
        }
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err("the witness key's name is empty or has spaces".into());
        }
        let key = WitnessKey {
            name: name.to_owned(),
            public_key: material[1..].to_vec(),
        };
        if crate::crypto::hex(&key.id()) != id.to_ascii_lowercase() {
            return Err(format!(
                "the witness key's id {id} does not match its name and key"
            ));
        }
        Ok(key)
    }
}

/// An `add-checkpoint` request (tlog-witness).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the latest checkpoint the witness cosigned, as the log knows it.
    pub old_size: u64,
    /// The consistency proof from `old_size` to the checkpoint.
    pub proof: Vec<Hash>,
    /// The signed checkpoint, as a note.
    pub checkpoint: String,
}

impl AddCheckpoint {
    /// The request body.
    pub fn encode(&self) -> String {
        let mut out = format!("old {}\n", self.old_size);
        for hash in &self.proof {
            out.push_str(&b64().encode(hash));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// Parses a request body.
    pub fn parse(text: &str) -> Result<AddCheckpoint, String> {
        if text.contains('\r') {
            return Err("lines end in a newline alone, not a carriage return".into());
        }
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or("no empty line before the checkpoint")?;
        let mut lines = head.lines();
        let old_size = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(decimal)
            .ok_or("the first line is not `old <size>`")?;
        let mut proof = Vec::new();
        for line in lines {
            if proof.len() == MAX_PROOF_LINES {
                return Err(format!(
                    "more than {MAX_PROOF_LINES} consistency proof lines"
                ));
            }
            let hash = b64()
                .decode(line)
                .ok()
                .and_then(|bytes| Hash::try_from(bytes.as_slice()).ok())
                .ok_or("a consistency proof line is not a 32-byte hash in base64")?;
            proof.push(hash);
        }
        Ok(AddCheckpoint {
            old_size,
            proof,
            checkpoint: checkpoint.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    #[test]
    fn a_signed_checkpoint_reads_back_and_verifies_only_with_the_logs_key() {
        let log = pair();
        let body = checkpoint_body("example.com/log", 20852163, &[7u8; 32]);
        assert_eq!(
            body,
            "example.com/log\n20852163\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n"
        );
        let note = format!(
            "{body}\n{}",
            log_signature_line(&log, "example.com/log", &body)
        );
        let parsed = SignedCheckpoint::parse(&note).unwrap();
        assert_eq!(parsed.tree_size, 20852163);
        assert_eq!(parsed.root, [7u8; 32]);
        assert!(parsed.signed_by_log(log.public_key().as_ref()));
        assert!(!parsed.signed_by_log(pair().public_key().as_ref()));

        let altered = note.replace("20852163", "20852164");
        assert!(
            !SignedCheckpoint::parse(&altered)
                .unwrap()
                .signed_by_log(log.public_key().as_ref())
        );
        assert!(SignedCheckpoint::parse(&format!("{body}x\n\n— a AAAA\n")).is_err());
        assert!(SignedCheckpoint::parse("o\n01\nAAAA\n\n").is_err());
    }

    #[test]
    fn a_cosignature_verifies_for_its_body_key_and_time_only() {
        let witness = pair();
        let key = WitnessKey {
            name: "witness.example/w1".into(),
            public_key: witness.public_key().as_ref().to_vec(),
        };
        let body = checkpoint_body("example.com/log", 5, &[1u8; 32]);
        let cosignature = cosign(&witness, &key.name, &body, 1_679_315_147);
        assert_eq!(cosignature.verify(&key, &body), Ok(()));
        let read = Cosignature::from_line(&cosignature.line()).unwrap();
        assert_eq!(read, cosignature);
        assert_eq!(read.time(), 1_679_315_147);

        let other_body = checkpoint_body("example.com/log", 6, &[1u8; 32]);
        assert!(cosignature.verify(&key, &other_body).is_err());
        let mut other_time = cosignature.clone();
        other_time.bytes[11] ^= 1;
        assert!(other_time.verify(&key, &body).is_err());
        let stranger = WitnessKey {
            name: key.name.clone(),
            public_key: pair().public_key().as_ref().to_vec(),
        };
        assert!(cosignature.verify(&stranger, &body).is_err());

        let vkey = key.vkey();
        assert!(vkey.starts_with("witness.example/w1+"));
        assert_eq!(WitnessKey::from_vkey(&vkey).unwrap(), key);
        let wrong_id = format!("witness.example/w2{}", &vkey["witness.example/w1".len()..]);
        assert!(WitnessKey::from_vkey(&wrong_id).is_err());
    }

    #[test]
    fn an_add_checkpoint_request_round_trips_and_refuses_nonsense() {
        let request = AddCheckpoint {
            old_size: 20852014,
            proof: vec![[1u8; 32], [2u8; 32]],
            checkpoint: "o\n3\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n\n— o AAAAAAA=\n"
                .into(),
        };
        let text = request.encode();
        assert!(text.starts_with("old 20852014\nAQEB"));
        assert_eq!(AddCheckpoint::parse(&text).unwrap(), request);
        let empty = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: request.checkpoint.clone(),
        };
        assert!(empty.encode().starts_with("old 0\n\no\n3\n"));
        assert_eq!(AddCheckpoint::parse(&empty.encode()).unwrap(), empty);
        assert!(AddCheckpoint::parse("old 01\n\nx").is_err());
        assert!(AddCheckpoint::parse("new 1\n\nx").is_err());
        assert!(AddCheckpoint::parse("old 1\nnot-a-hash\n\nx").is_err());
    }
}
