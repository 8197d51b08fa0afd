//! Who may bind to the SMPP front: `system_id`s from `[[smpp.accounts]]`, each with the hash of
//! its password, the tenant it sends for and what narrows it. SMPP 3.4 passwords are at most 8
//! characters, so the hash is slow on purpose (PBKDF2-HMAC-SHA256, [`ITERATIONS`] rounds); a
//! verified password is remembered by its SHA-256 so that a client that reconnects does not
//! pay the rounds again.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::{digest, pbkdf2, rand::SecureRandom as _};

use crate::auth::Principal;
use crate::config::SmppAccountConfig;
use crate::domain::{Purpose, TenantId};

/// PBKDF2 rounds for a new hash (OWASP's figure for PBKDF2-HMAC-SHA256).
pub const ITERATIONS: u32 = 600_000;
const PREFIX: &str = "pbkdf2-sha256";
const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;

/// One account, checked.
#[derive(Debug)]
pub struct Account {
    pub system_id: String,
    pub tenant: TenantId,
    pub purpose: Option<Purpose>,
    pub senders: Option<Vec<String>>,
    hash: PasswordHash,
}

impl Account {
    /// The principal its sessions act as: the tenant's sender, narrowed like a token.
    pub fn principal(&self) -> Principal {
        Principal {
            subject: format!("smpp:{}", self.system_id),
            tenant: self.tenant.clone(),
            scopes: BTreeSet::from([crate::auth::scope::SEND.to_owned()]),
            senders: self.senders.clone(),
            purposes: self.purpose.map(|purpose| BTreeSet::from([purpose])),
        }
    }
}

/// The accounts of the running configuration.
#[derive(Debug, Default)]
pub struct Accounts {
    by_id: BTreeMap<String, Account>,
    /// SHA-256 of (system_id, password) of binds that verified, so a reconnect is cheap.
    verified: Mutex<BTreeSet<[u8; 32]>>,
}

impl Accounts {
    /// Reads `[[smpp.accounts]]`; a hash that does not read or a purpose that does not parse is
    /// an error naming the account.
    pub fn from_config(accounts: &[SmppAccountConfig]) -> Result<Accounts, String> {
        let mut by_id = BTreeMap::new();
        for (index, account) in accounts.iter().enumerate() {
            let field = format!("smpp.accounts[{index}]");
            let hash = PasswordHash::parse(&account.password_hash)
                .map_err(|why| format!("{field}.password_hash: {why}"))?;
            let tenant =
                TenantId::parse(&account.tenant).map_err(|why| format!("{field}.tenant: {why}"))?;
            let purpose = account
                .purpose
                .as_deref()
                .map(str::parse::<Purpose>)
                .transpose()
                .map_err(|why| format!("{field}.purpose: {why}"))?;
            by_id.insert(
                account.system_id.clone(),
                Account {
                    system_id: account.system_id.clone(),
                    tenant,
                    purpose,
                    senders: account.senders.clone(),
                    hash,
                },
            );
        }
        Ok(Accounts {
            by_id,
            verified: Mutex::new(BTreeSet::new()),
        })
    }

    /// The account `system_id` names if `password` is its password; `None` for an unknown id
    /// or a wrong password alike. Slow (PBKDF2) the first time: call it off the async threads.
    pub fn authenticate(&self, system_id: &str, password: &str) -> Option<&Account> {
        let account = self.by_id.get(system_id)?;
        let seen = {
            let mut context = digest::Context::new(&digest::SHA256);
            context.update(system_id.as_bytes());
            context.update(&[0]);
            context.update(password.as_bytes());
            let mut seen = [0u8; 32];
            seen.copy_from_slice(context.finish().as_ref());
            seen
        };
        let mut verified = self
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if verified.contains(&seen) {
            return Some(account);
        }
        drop(verified);
        if !account.hash.verify(password) {
            return None;
        }
        verified = self
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        verified.insert(seen);
        Some(account)
    }

    /// The principal of a bound session's account, if the running configuration still has it.
    pub fn principal(&self, system_id: &str) -> Option<Principal> {
        self.by_id.get(system_id).map(Account::principal)
    }

    /// Whether any account sends for `tenant` (its replies then go to SMPP sessions too).
    pub fn serves(&self, tenant: &TenantId) -> bool {
        self.by_id.values().any(|account| &account.tenant == tenant)
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// `pbkdf2-sha256$<rounds>$<salt>$<hash>`, salt and hash in base64 without padding.
#[derive(Debug)]
struct PasswordHash {
    rounds: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl PasswordHash {
    fn parse(text: &str) -> Result<PasswordHash, String> {
        let parts: Vec<&str> = text.split('$').collect();
        let [prefix, rounds, salt, hash] = parts[..] else {
            return Err(format!(
                "must be {PREFIX}$<rounds>$<salt>$<hash>, as `consentry smpp-password` prints"
            ));
        };
        if prefix != PREFIX {
            return Err(format!("only {PREFIX} hashes are read, not {prefix}"));
        }
        let rounds: u32 = rounds
            .parse()
            .map_err(|_| "the rounds are not a number".to_owned())?;
        if rounds < 100_000 {
            return Err("fewer than 100000 rounds is too weak for an 8-character password".into());
        }
        let decode = |part: &str, what: &str| {
            B64.decode(part)
                .map_err(|_| format!("the {what} is not base64 (no padding)"))
        };
        let salt = decode(salt, "salt")?;
        let hash = decode(hash, "hash")?;
        if salt.len() < 8 || hash.len() != HASH_BYTES {
            return Err("the salt or hash has the wrong length".into());
        }
        Ok(PasswordHash {
            rounds: NonZeroU32::new(rounds).ok_or("zero rounds")?,
            salt,
            hash,
        })
    }

    fn verify(&self, password: &str) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.rounds,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

/// A new hash of `password` for `[[smpp.accounts]].password_hash`, with a random salt.
pub fn hash_password(password: &str, rounds: u32) -> Result<String, String> {
    let rounds = NonZeroU32::new(rounds).ok_or("rounds must be at least 1")?;
    let mut salt = [0u8; SALT_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness for a salt".to_owned())?;
    let mut hash = [0u8; HASH_BYTES];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    Ok(format!(
        "{PREFIX}${rounds}${}${}",
        B64.encode(salt),
        B64.encode(hash)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(hash: String) -> SmppAccountConfig {
        SmppAccountConfig {
            system_id: "app".into(),
            tenant: "acme".into(),
            password_hash: hash,
            purpose: Some("marketing".into()),
            senders: None,
        }
    }

    #[test]
    fn a_hashed_password_binds_and_a_wrong_one_or_unknown_id_does_not() {
        let accounts =
            Accounts::from_config(&[account(hash_password("s3cret", 100_000).unwrap())]).unwrap();
        let bound = accounts.authenticate("app", "s3cret").expect("binds");
        assert_eq!(bound.tenant.as_str(), "acme");
        assert!(
            accounts.authenticate("app", "s3cret").is_some(),
            "again, remembered"
        );
        assert!(accounts.authenticate("app", "wrong").is_none());
        assert!(accounts.authenticate("other", "s3cret").is_none());
        let principal = bound.principal();
        assert!(principal.has_scope(crate::auth::scope::SEND));
        assert_eq!(
            principal.purposes,
            Some(BTreeSet::from([Purpose::Marketing]))
        );
    }

    #[test]
    fn hashes_that_do_not_read_are_refused_with_the_account_named() {
        for bad in [
            "plain",
            "md5$1$AAAAAAAAAAA$AAAA",
            "pbkdf2-sha256$1000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "pbkdf2-sha256$600000$!!$AAAA",
        ] {
            let error = Accounts::from_config(&[account(bad.into())]).unwrap_err();
            assert!(
                error.starts_with("smpp.accounts[0].password_hash"),
                "{error}"
            );
        }
    }
}
