//! The payload key ring: which key seals what, and how keys are wrapped, rotated and erased.
//!
//! Three layers, all AES-256-GCM with random 96-bit nonces:
//!
//! - the **key-encryption key** (KEK, `crypto.payload_key`: a file or an environment variable,
//!   never in the database) wraps the data keys;
//! - **data keys** (table `data_keys`, wrapped) seal consent evidence, deliveries and recipient
//!   keys. One is current; `consentry keys rotate` adds a new one and retires the others, which
//!   still open what they sealed. Each instance reserves seals in blocks from the key's `uses`
//!   counter, and a key is retired at [`MAX_USES`], far below the 2^32 seals under random
//!   nonces that NIST SP 800-38D allows;
//! - **recipient keys** (table `recipient_keys`, one per tenant and number, wrapped by a data
//!   key) seal what belongs to that number: message bodies and numbers, replies. Erasure deletes
//!   them: with the row gone, not even the KEK can open those payloads again.
//!
//! Every sealed payload is stored with the id of the key that sealed it (`dk_...` for a data
//! key, `rk_...` for a recipient key) and opens only with its row's identity as associated data.
//!
//! The ring holds the store's [`Keys`] part only.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::crypto::{self, CryptoError, KEY_LEN, Sealed, SealingKey};
use crate::store::{DataKeyRow, Keys, RecipientKeyRow, StoreError};

/// Seals a data key may make before it is retired: 2^30, a quarter of the 2^32 limit for
/// random 96-bit nonces.
pub const MAX_USES: i64 = 1 << 30;

/// Seals an instance reserves at a time. Unused reservations are lost when it stops, which only
/// retires keys sooner.
const RESERVATION: i64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the data key {0} does not unwrap with this key-encryption key")]
    WrongKek(String),
}

struct Reservation {
    key_id: String,
    remaining: i64,
}

/// The key ring of one instance; every instance sharing a database shares its keys.
pub struct KeyRing {
    store: Arc<dyn Keys>,
    kek: SealingKey,
    data_keys: RwLock<HashMap<String, Arc<SealingKey>>>,
    reservation: tokio::sync::Mutex<Reservation>,
    /// [`MAX_USES`], lower in tests.
    max_uses: i64,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyRing")
    }
}

fn data_key_aad(id: &str) -> Vec<u8> {
    format!("consentry/data-key/v1\0{id}").into_bytes()
}

fn recipient_key_aad(tenant: &str, recipient_hash: &str, id: &str) -> Vec<u8> {
    format!("consentry/recipient-key/v1\0{tenant}\0{recipient_hash}\0{id}").into_bytes()
}

impl KeyRing {
    /// Opens the ring: unwraps every data key with the KEK (making the first one if there is
    /// none) and fails if one does not unwrap.
    pub async fn load(store: Arc<dyn Keys>, kek: &[u8], now_us: i64) -> Result<KeyRing, KeyError> {
        let ring = KeyRing {
            store,
            kek: SealingKey::new(kek)?,
            data_keys: RwLock::new(HashMap::new()),
            reservation: tokio::sync::Mutex::new(Reservation {
                key_id: String::new(),
                remaining: 0,
            }),
            max_uses: MAX_USES,
        };
        if ring.store.data_keys().await?.is_empty() {
            ring.add_data_key(now_us, false).await?;
        }
        ring.reload().await?;
        Ok(ring)
    }

    /// Adds a new data key; with `retire_others`, it becomes the only one that seals (rotation).
    /// Returns its id.
    pub async fn add_data_key(&self, now_us: i64, retire_others: bool) -> Result<String, KeyError> {
        let key = crypto::random_bytes(KEY_LEN)?;
        let id = format!("dk_{}", crypto::key_id(&key));
        let wrapped = self.kek.seal(&data_key_aad(&id), &key)?;
        self.store
            .add_data_key(
                &DataKeyRow {
                    id: id.clone(),
                    wrapped,
                    created_at_us: now_us,
                    retired_at_us: None,
                },
                retire_others,
            )
            .await?;
        Ok(id)
    }

    /// Reads the data keys again (another instance may have added one); returns the id of the
    /// newest one that still seals.
    async fn reload(&self) -> Result<Option<String>, KeyError> {
        let rows = self.store.data_keys().await?;
        let mut current = None;
        let mut keys = HashMap::new();
        for row in rows {
            let key = self
                .kek
                .open(&data_key_aad(&row.id), &row.wrapped)
                .map_err(|_| KeyError::WrongKek(row.id.clone()))?;
            keys.insert(row.id.clone(), Arc::new(SealingKey::new(&key)?));
            if row.retired_at_us.is_none() {
                current = Some(row.id);
            }
        }
        *self.data_keys.write().expect("key map lock") = keys;
        Ok(current)
    }

    /// Looks for a rotation made elsewhere (`keys rotate`, another instance): if the current
    /// key changed, the next seal uses the new one.
    pub async fn refresh(&self) -> Result<(), KeyError> {
        let current = self.reload().await?;
        let mut reservation = self.reservation.lock().await;
        if current.as_deref() != Some(reservation.key_id.as_str()) {
            reservation.remaining = 0;
        }
        Ok(())
    }

    fn data_key(&self, id: &str) -> Option<Arc<SealingKey>> {
        self.data_keys
            .read()
            .expect("key map lock")
            .get(id)
            .cloned()
    }

    /// The data key that seals now, counting one use of it.
    async fn current_data_key(&self, now_us: i64) -> Result<(String, Arc<SealingKey>), KeyError> {
        let mut reservation = self.reservation.lock().await;
        if reservation.remaining == 0 {
            let mut attempts = 0;
            loop {
                let current = self.reload().await?;
                if let Some(id) = current
                    && self
                        .store
                        .reserve_key_uses(&id, RESERVATION, self.max_uses)
                        .await?
                {
                    reservation.key_id = id;
                    reservation.remaining = RESERVATION;
                    break;
                }
                // Retired or worn out: a fresh key takes over.
                attempts += 1;
                if attempts > 3 {
                    return Err(KeyError::Store(StoreError::Unsafe(
                        "no data key can be reserved".into(),
                    )));
                }
                self.add_data_key(now_us, true).await?;
            }
        }
        reservation.remaining -= 1;
        let id = reservation.key_id.clone();
        let key = self
            .data_key(&id)
            .ok_or_else(|| CryptoError::UnknownKey(id.clone()))?;
        Ok((id, key))
    }

    /// Seals under the current data key.
    pub async fn seal(
        &self,
        associated: &[u8],
        plaintext: &[u8],
        now_us: i64,
    ) -> Result<Sealed, KeyError> {
        let (key_id, key) = self.current_data_key(now_us).await?;
        Ok(Sealed {
            bytes: key.seal(associated, plaintext)?,
            key_id,
        })
    }

    /// Seals under the key of a recipient in a tenant (made and stored on first use), so that
    /// erasing the recipient makes it unreadable.
    pub async fn seal_for(
        &self,
        tenant: &str,
        recipient_hash: &str,
        associated: &[u8],
        plaintext: &[u8],
        now_us: i64,
    ) -> Result<Sealed, KeyError> {
        let existing = self.store.recipient_key(tenant, recipient_hash).await?;
        let (mut sealed, new_key) = self
            .seal_for_record(
                tenant,
                recipient_hash,
                existing,
                associated,
                plaintext,
                now_us,
            )
            .await?;
        if let Some(new_key) = new_key {
            let stored = self.store.add_recipient_key(&new_key).await?;
            if stored.id != new_key.id {
                // Another writer made the recipient's key first: seal under that one.
                let key = self.unwrap_recipient_key(&stored).await?;
                sealed = Sealed {
                    bytes: key.seal(associated, plaintext)?,
                    key_id: stored.id,
                };
            }
        }
        Ok(sealed)
    }

    /// Like [`KeyRing::seal_for`], but with the recipient's key as the caller read it (with
    /// the rest of what it knows of the recipient), and a key made for a first-time recipient
    /// is returned, not stored: the caller stores it in the same transaction as the row it
    /// sealed (one commit per send), and that transaction fails if another writer stored one
    /// first.
    pub async fn seal_for_record(
        &self,
        tenant: &str,
        recipient_hash: &str,
        existing: Option<RecipientKeyRow>,
        associated: &[u8],
        plaintext: &[u8],
        now_us: i64,
    ) -> Result<(Sealed, Option<RecipientKeyRow>), KeyError> {
        let (key, key_id, new) = match existing {
            Some(row) => (self.unwrap_recipient_key(&row).await?, row.id, None),
            None => {
                let key = crypto::random_bytes(KEY_LEN)?;
                let id = format!("rk_{}", uuid::Uuid::now_v7().simple());
                let (data_key_id, data_key) = self.current_data_key(now_us).await?;
                let wrapped =
                    data_key.seal(&recipient_key_aad(tenant, recipient_hash, &id), &key)?;
                let row = RecipientKeyRow {
                    tenant: tenant.to_owned(),
                    recipient_hash: recipient_hash.to_owned(),
                    id: id.clone(),
                    data_key_id,
                    wrapped,
                    created_at_us: now_us,
                };
                (SealingKey::new(&key)?, id, Some(row))
            }
        };
        let sealed = Sealed {
            bytes: key.seal(associated, plaintext)?,
            key_id,
        };
        Ok((sealed, new))
    }

    async fn unwrap_recipient_key(&self, row: &RecipientKeyRow) -> Result<SealingKey, KeyError> {
        let data_key = self.data_key_or_reload(&row.data_key_id).await?;
        let key = data_key.open(
            &recipient_key_aad(&row.tenant, &row.recipient_hash, &row.id),
            &row.wrapped,
        )?;
        Ok(SealingKey::new(&key)?)
    }

    async fn data_key_or_reload(&self, id: &str) -> Result<Arc<SealingKey>, KeyError> {
        if let Some(key) = self.data_key(id) {
            return Ok(key);
        }
        // Made by another instance (or by `keys rotate`) since this one last looked.
        self.reload().await?;
        self.data_key(id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()).into())
    }

    /// Opens a payload sealed by [`KeyRing::seal`] or [`KeyRing::seal_for`].
    pub async fn open(&self, associated: &[u8], sealed: &Sealed) -> Result<Vec<u8>, KeyError> {
        let id = sealed.key_id.as_str();
        if id.starts_with("rk_") {
            let row = self
                .store
                .recipient_key_by_id(id)
                .await?
                .ok_or_else(|| CryptoError::Erased(id.to_owned()))?;
            let key = self.unwrap_recipient_key(&row).await?;
            Ok(key.open(associated, &sealed.bytes)?)
        } else if id.starts_with("dk_") {
            let key = self.data_key_or_reload(id).await?;
            Ok(key.open(associated, &sealed.bytes)?)
        } else {
            Err(CryptoError::UnknownKey(id.to_owned()).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ring(folder: &std::path::Path) -> (Arc<dyn crate::store::Store>, KeyRing) {
        let url = format!("sqlite://{}", folder.join("keys.db").display());
        let store = crate::store::open(&url).await.unwrap();
        let ring = KeyRing::load(store.clone(), &[7u8; KEY_LEN], 0)
            .await
            .unwrap();
        (store, ring)
    }

    #[tokio::test]
    async fn a_worn_out_data_key_is_retired_and_replaced_and_still_opens() {
        let folder = tempfile::tempdir().unwrap();
        let (store, mut ring) = ring(folder.path()).await;
        ring.max_uses = 2 * RESERVATION;
        let mut sealed = Vec::new();
        for n in 0..(2 * RESERVATION + 10) {
            sealed.push(
                ring.seal(format!("row {n}").as_bytes(), b"evidence", n)
                    .await
                    .unwrap(),
            );
        }
        let first = &sealed[0].key_id;
        let last = &sealed.last().unwrap().key_id;
        assert_ne!(first, last, "a fresh key took over");
        assert!(
            sealed[..2 * RESERVATION as usize]
                .iter()
                .all(|s| &s.key_id == first)
        );
        let keys = store.data_keys().await.unwrap();
        assert_eq!(keys.len(), 2);
        assert!(
            keys.iter()
                .find(|k| &k.id == first)
                .unwrap()
                .retired_at_us
                .is_some()
        );
        for (n, sealed) in sealed.iter().enumerate().step_by(97) {
            let opened = ring
                .open(format!("row {n}").as_bytes(), sealed)
                .await
                .unwrap();
            assert_eq!(opened, b"evidence");
        }
    }

    #[tokio::test]
    async fn another_key_encryption_key_is_refused() {
        let folder = tempfile::tempdir().unwrap();
        let (store, _ring) = ring(folder.path()).await;
        let refused = KeyRing::load(store, &[8u8; KEY_LEN], 0).await;
        assert!(matches!(refused, Err(KeyError::WrongKek(_))));
    }

    #[tokio::test]
    async fn recipient_keys_are_per_tenant_and_number_and_erasure_ends_them() {
        let folder = tempfile::tempdir().unwrap();
        let (store, ring) = ring(folder.path()).await;
        let one = ring
            .seal_for("t", "hash-1", b"m1", b"body one", 0)
            .await
            .unwrap();
        let again = ring
            .seal_for("t", "hash-1", b"m2", b"body two", 0)
            .await
            .unwrap();
        let other = ring
            .seal_for("t", "hash-2", b"m3", b"body three", 0)
            .await
            .unwrap();
        let elsewhere = ring
            .seal_for("u", "hash-1", b"m4", b"body four", 0)
            .await
            .unwrap();
        assert_eq!(one.key_id, again.key_id);
        assert_ne!(one.key_id, other.key_id);
        assert_ne!(one.key_id, elsewhere.key_id);
        let erasure = crate::audit::leaf::Erasure {
            id: "era_1".into(),
            tenant: "t".into(),
            recipient_hash: "hash-1".into(),
            erased_at_us: 1,
            erased_by: "test".into(),
            keys_destroyed: 0,
        };
        assert_eq!(store.erase_recipient(&erasure).await.unwrap(), 1);
        assert!(matches!(
            ring.open(b"m1", &one).await,
            Err(KeyError::Crypto(CryptoError::Erased(_)))
        ));
        assert_eq!(ring.open(b"m3", &other).await.unwrap(), b"body three");
        assert_eq!(ring.open(b"m4", &elsewhere).await.unwrap(), b"body four");
        // What the number receives next is sealed under a new key.
        let after = ring
            .seal_for("t", "hash-1", b"m5", b"body five", 0)
            .await
            .unwrap();
        assert_ne!(after.key_id, one.key_id);
        assert_eq!(ring.open(b"m5", &after).await.unwrap(), b"body five");
    }
}
