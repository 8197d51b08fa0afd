//! Payload encryption and keyed hashing, all on ring.
//!
//! - [`SealingKey`]: AES-256-GCM with a random 96-bit nonce per record; the caller binds the
//!   record's identity as associated data, so a ciphertext moved to another row does not open.
//!   Which key seals what, and how keys are wrapped, rotated and erased, is `keyring`'s.
//! - [`NumberHasher`]: HMAC-SHA256 of an E.164 number under a secret key, the only form in which
//!   a full number is stored readable (it indexes, it does not reveal).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::domain::PhoneNumber;

/// The length of every symmetric key consentry keeps.
pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("a key must be {KEY_LEN} bytes (raw, or base64 of them)")]
    BadKeyLength,
    #[error("no key with id {0} in the key ring")]
    UnknownKey(String),
    #[error("the key {0} was erased: what it sealed can no longer be read")]
    Erased(String),
    #[error("the record does not decrypt: wrong key, wrong record identity or altered bytes")]
    Undecryptable,
    #[error("the system random source failed")]
    Random,
}

/// A sealed payload: `nonce || ciphertext || tag`, and the id of the key that sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

/// One AES-256-GCM key. Every seal takes a fresh random 96-bit nonce; the caller binds the
/// record's identity as associated data.
pub struct SealingKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey")
    }
}

/// A key's id: the first 8 bytes of SHA-256 of the key, in hex. Derived, so it cannot drift from
/// the key it names, and it reveals nothing useful about the key.
pub fn key_id(key: &[u8]) -> String {
    hex(&digest(&SHA256, key).as_ref()[..8])
}

impl SealingKey {
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::BadKeyLength)?;
        Ok(SealingKey {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Encrypts `plaintext`, binding `associated` (the record's identity) to it:
    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, associated: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Random)?;
        let mut bytes = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| CryptoError::Undecryptable)?;
        bytes.extend_from_slice(tag.as_ref());
        Ok(bytes)
    }

    /// Decrypts; fails unless the key, the associated data and every byte are the ones it was
    /// sealed with.
    pub fn open(&self, associated: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Undecryptable);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Undecryptable)?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(associated), &mut buffer)
            .map_err(|_| CryptoError::Undecryptable)?;
        Ok(plaintext.to_vec())
    }
}

/// HMAC-SHA256 of phone numbers: equal numbers give equal hashes, and the hash cannot be
/// reversed by trying every number without the key.
pub struct NumberHasher {
    key: hmac::Key,
}

impl std::fmt::Debug for NumberHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NumberHasher")
    }
}

impl NumberHasher {
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != KEY_LEN {
            return Err(CryptoError::BadKeyLength);
        }
        Ok(NumberHasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        })
    }

    /// The hex HMAC of the number's E.164 form.
    pub fn hash(&self, number: &PhoneNumber) -> String {
        hex(hmac::sign(&self.key, number.e164().as_bytes()).as_ref())
    }
}

/// `count` fresh random bytes from the system source.
pub fn random_bytes(count: usize) -> Result<Vec<u8>, CryptoError> {
    let mut bytes = vec![0u8; count];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CryptoError::Random)?;
    Ok(bytes)
}

/// Reads a key given as raw bytes or as base64 text of them.
pub fn decode_key(material: &[u8]) -> Result<Vec<u8>, CryptoError> {
    use base64::Engine as _;
    if material.len() == KEY_LEN {
        return Ok(material.to_vec());
    }
    let text = std::str::from_utf8(material).map_err(|_| CryptoError::BadKeyLength)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| CryptoError::BadKeyLength)?;
    if decoded.len() == KEY_LEN {
        Ok(decoded)
    } else {
        Err(CryptoError::BadKeyLength)
    }
}

/// Reads a base64 Ed25519 public key (32 bytes), such as the one Telnyx signs webhooks with.
pub fn decode_public_key(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| "an Ed25519 public key is 32 bytes".to_owned())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    // A table, not `write!("{:02x}")`: a recipient's hash is encoded several times a send,
    // and the formatter's machinery per byte showed in profiles.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Region;

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn sealed_payloads_open_only_with_the_same_key_and_identity() {
        let key = SealingKey::new(&[7u8; KEY_LEN]).unwrap();
        let sealed = key.seal(b"msg_1", b"hello").unwrap();
        assert_eq!(key.open(b"msg_1", &sealed).unwrap(), b"hello");
        assert!(key.open(b"msg_2", &sealed).is_err());

        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(key.open(b"msg_1", &altered).is_err());

        let other = SealingKey::new(&[8u8; KEY_LEN]).unwrap();
        assert!(other.open(b"msg_1", &sealed).is_err());
        // Each seal uses a fresh nonce.
        assert_ne!(
            key.seal(b"a", b"same").unwrap(),
            key.seal(b"a", b"same").unwrap()
        );
    }

    #[test]
    fn keys_must_be_32_bytes() {
        assert!(SealingKey::new(&[1u8; 16]).is_err());
        assert!(NumberHasher::new(&[1u8; 31]).is_err());
        assert_eq!(decode_key(&[3u8; 32]).unwrap(), vec![3u8; 32]);
        let text = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
        assert_eq!(decode_key(text.as_bytes()).unwrap().len(), 32);
        assert!(decode_key(b"short").is_err());
    }

    #[test]
    fn number_hashes_are_keyed() {
        let number = PhoneNumber::parse("+14155550123", Region::US).unwrap();
        let first = NumberHasher::new(&[1u8; 32]).unwrap();
        let second = NumberHasher::new(&[2u8; 32]).unwrap();
        assert_eq!(first.hash(&number), first.hash(&number));
        assert_ne!(first.hash(&number), second.hash(&number));
        assert_eq!(first.hash(&number).len(), 64);
    }
}
