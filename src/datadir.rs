//! The data folder: what consentry generates on first start and reuses afterwards.
//!
//! ```text
//! consentry-data/            (mode 0700)
//!   consentry.db             SQLite database (and its -wal, -shm files)
//!   tls/cert.pem, key.pem    self-signed certificate for localhost, 127.0.0.1 and ::1
//!   keys/jwt-dev.pk8         Ed25519 key of the development token issuer (PKCS#8 DER)
//!   keys/payload.key         AES-256-GCM payload key (base64)
//!   keys/number.key          HMAC key that indexes phone numbers (base64)
//! ```
//!
//! Every file is created once, with mode 0600, by writing a temporary file and linking it into
//! place: a crash never leaves a half-written key, and an existing key is never replaced.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::crypto;

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// A certificate chain and its key, read from PEM.
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_path: PathBuf,
}

impl TlsIdentity {
    /// SHA-256 of the leaf certificate, as colon-separated upper-case hex (as `openssl x509
    /// -fingerprint -sha256` prints it).
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.chain[0].as_ref());
        digest
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl DataDir {
    /// Opens the folder, creating it (mode 0700) if needed; a folder that others may read is
    /// made private, with a warning.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        for dir in [root.to_path_buf(), root.join("tls"), root.join("keys")] {
            create_private_dir(&dir)
                .with_context(|| format!("cannot create data folder {}", dir.display()))?;
            make_private(&dir, 0o700)?;
        }
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The generated self-signed identity, made on first use.
    pub fn self_signed_tls(&self) -> anyhow::Result<TlsIdentity> {
        let cert_path = self.root.join("tls/cert.pem");
        let key_path = self.root.join("tls/key.pem");
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {}
            (false, false) => {
                let names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
                let generated = rcgen::generate_simple_self_signed(names)
                    .context("cannot generate a self-signed certificate")?;
                write_new(&key_path, generated.key_pair.serialize_pem().as_bytes())?;
                write_new(&cert_path, generated.cert.pem().as_bytes())?;
            }
            _ => bail!(
                "{} and {} must both exist or both be absent; remove the one left over",
                cert_path.display(),
                key_path.display()
            ),
        }
        load_tls(&cert_path, &key_path)
    }

    /// The development token issuer's Ed25519 key (PKCS#8), made on first use.
    pub fn dev_jwt_key(&self) -> anyhow::Result<DevKey> {
        self.ed25519_key("jwt-dev.pk8")
    }

    /// The key that signs the verifiable log's checkpoints, made on first use.
    pub fn log_signing_key(&self) -> anyhow::Result<DevKey> {
        self.ed25519_key("log-signing.pk8")
    }

    /// An Ed25519 key stored as PKCS#8 under `keys/`, made on first use.
    fn ed25519_key(&self, name: &str) -> anyhow::Result<DevKey> {
        let path = self.root.join("keys").join(name);
        let pkcs8 = self.read_or_create(&path, || {
            let random = ring::rand::SystemRandom::new();
            Ed25519KeyPair::generate_pkcs8(&random)
                .map(|document| document.as_ref().to_vec())
                .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))
        })?;
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 key", path.display()))?;
        Ok(DevKey {
            public: pair.public_key().as_ref().to_vec(),
            pkcs8,
        })
    }

    /// A 32-byte symmetric key stored as base64 under `keys/`, made on first use.
    pub fn symmetric_key(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.root.join("keys").join(name);
        let text = self.read_or_create(&path, || {
            let key = crypto::random_bytes(crypto::KEY_LEN)?;
            Ok(format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode(key)
            )
            .into_bytes())
        })?;
        crypto::decode_key(&text).with_context(|| format!("bad key in {}", path.display()))
    }

    fn read_or_create(
        &self,
        path: &Path,
        make: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        if !path.exists() {
            let bytes = make()?;
            write_new(path, &bytes)?;
        }
        fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// The development signing key: the private key signs tokens, the public one verifies them.
pub struct DevKey {
    pub pkcs8: Vec<u8>,
    pub public: Vec<u8>,
}

/// Reads a PEM certificate chain and private key.
pub fn load_tls(cert_path: &Path, key_path: &Path) -> anyhow::Result<TlsIdentity> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("cannot read certificate {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad PEM in {}", cert_path.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("cannot read private key {}", key_path.display()))?;
    Ok(TlsIdentity {
        chain,
        key,
        cert_path: cert_path.to_path_buf(),
    })
}

/// Writes `bytes` to `path` only if `path` does not exist, atomically, with mode 0600.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    // A hard link fails if the target exists: a key made by someone else first is kept.
    let linked = fs::hard_link(&temporary, path);
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Takes every permission of group and others off an existing `path` (setting `mode`), with a
/// warning that says what it was: consentry's files are its own.
pub fn make_private(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let metadata = match fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let current = metadata.permissions().mode() & 0o777;
        if current & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                was = format!("{current:o}"),
                now = format!("{mode:o}"),
                "others could read a file of consentry's; its permissions were narrowed"
            );
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot make {} private", path.display()))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Creates the file at `path`, empty and with mode 0600, unless it exists; makes an existing
/// one private. For a database file: SQLite gives its WAL and shared-memory files the
/// database file's permissions.
pub fn private_file(path: &Path) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            make_private(path, 0o600)
        }
        Err(error) => Err(error).with_context(|| format!("cannot create {}", path.display())),
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_certificate_are_made_once_and_reused() {
        let folder = tempfile::tempdir().unwrap();
        let first = DataDir::open(folder.path()).unwrap();
        let tls = first.self_signed_tls().unwrap();
        let payload = first.symmetric_key("payload.key").unwrap();
        let jwt = first.dev_jwt_key().unwrap();

        let second = DataDir::open(folder.path()).unwrap();
        assert_eq!(
            second.self_signed_tls().unwrap().fingerprint(),
            tls.fingerprint()
        );
        assert_eq!(second.symmetric_key("payload.key").unwrap(), payload);
        assert_eq!(second.dev_jwt_key().unwrap().public, jwt.public);
        assert_ne!(second.symmetric_key("number.key").unwrap(), payload);
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let folder = tempfile::tempdir().unwrap();
        let data = DataDir::open(folder.path()).unwrap();
        data.symmetric_key("payload.key").unwrap();
        let mode = fs::metadata(folder.path().join("keys/payload.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_existing_folder_and_database_are_made_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let folder = tempfile::tempdir().unwrap();
        let root = folder.path().join("data");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        DataDir::open(&root).unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        let database = root.join("other.db");
        fs::write(&database, b"").unwrap();
        fs::set_permissions(&database, fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&database).unwrap();
        assert_eq!(mode(&database), 0o600);
        let new = root.join("new.db");
        private_file(&new).unwrap();
        assert_eq!(mode(&new), 0o600);
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let folder = tempfile::tempdir().unwrap();
        let data = DataDir::open(folder.path()).unwrap();
        data.self_signed_tls().unwrap();
        fs::remove_file(folder.path().join("tls/key.pem")).unwrap();
        assert!(data.self_signed_tls().is_err());
    }
}
