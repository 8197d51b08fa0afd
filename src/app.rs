//! The application: [`App::build`] turns a [`Config`] into running parts (keys, store,
//! upstreams, verifier, TLS) gathered in an [`AppState`], and [`App::run`] serves them on
//! listeners the caller bound and starts the workers. Nothing imports this module but the
//! crate root: it only wires.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::audit::checkpoint::{Cadence, LogSigner};
use crate::auth::Verifier;
use crate::config::{Config, SecretRef};
use crate::crypto::{self, NumberHasher};
use crate::datadir::{self, DataDir};
use crate::keyring::KeyRing;
use crate::outbox::{self, webhooks::Webhooks};
use crate::policy::rules::PolicySet;
use crate::state::{AppState, Clock, RecipientLocks};
use crate::store;
use crate::upstream::Upstreams;
use crate::{http, scheduler, server};

/// A built application, ready to serve.
pub struct App {
    state: Arc<AppState>,
    tls: Arc<rustls::ServerConfig>,
    fingerprint: String,
    cert_path: PathBuf,
    data_dir: PathBuf,
    api_settings: server::Settings,
    admin_settings: server::Settings,
}

impl App {
    /// Prepares everything the proxy needs; fails, naming what is wrong, before anything is
    /// served.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        App::build_with_clock(config, Clock::System).await
    }

    /// [`App::build`] with a given clock (tests move a manual one).
    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<App> {
        let data = DataDir::open(&config.data_dir)?;
        let identity = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => datadir::load_tls(cert, key)?,
            _ => data.self_signed_tls()?,
        };
        let dev_key = if config.jwt.dev_issuer {
            Some(data.dev_jwt_key()?)
        } else {
            None
        };
        let verifier =
            Verifier::from_config(&config, dev_key.as_ref().map(|k| k.public.as_slice()))?;
        let payload_key = payload_key(&data, &config)?;
        let number_key = symmetric_key(
            &data,
            config.crypto.number_key.as_ref(),
            "number.key",
            "crypto.number_key",
        )?;
        let store = store::open(&config.database_url())
            .await
            .context("cannot open the database")?;
        // Every instance sharing the database must hash numbers and seal payloads with the same
        // keys: with another number key, opt-outs recorded elsewhere would not be found.
        for (name, key) in [
            ("number_key_id", &number_key),
            ("payload_key_id", &payload_key),
        ] {
            let mine = crypto::key_id(key);
            let recorded = store.setting(name, &mine).await?;
            if recorded != mine {
                anyhow::bail!(
                    "the database's {name} is {recorded}, this instance's is {mine}: every instance \
                     sharing a database needs the same crypto.number_key and crypto.payload_key"
                );
            }
        }
        let log_signer = log_signer(&data, config.log.signing_key.as_ref())?;
        // One log, one signing key: checkpoints signed by another key would not verify.
        let recorded = store.setting("log_key_id", log_signer.key_id()).await?;
        if recorded != log_signer.key_id() {
            anyhow::bail!(
                "the database's log signing key is {recorded}, this instance's is {}: every \
                 instance sharing a database needs the same log.signing_key",
                log_signer.key_id()
            );
        }
        let keys = KeyRing::load(store.clone(), &payload_key, clock.now().as_microsecond())
            .await
            .context("cannot open the key ring (is crypto.payload_key the one the database's data keys were wrapped with?)")?;
        let upstreams = Upstreams::from_config(&config)?;
        let tenants = config.tenants()?;
        // Parse the shipped numbering metadata now rather than on the first request.
        crate::numbering::database();
        let policies = PolicySet::load(&config.policies)?;
        let webhooks = Webhooks::new(tenants.values(), &config.outbox)?;

        let api_settings = server::Settings::api(&config.server);
        let state = AppState {
            clock,
            recipient_locks: RecipientLocks::default(),
            tenants,
            verifier,
            store,
            keys,
            log_signer: Arc::new(log_signer),
            log_cadence: Cadence {
                enabled: config.log.sequencer,
                leaves: config.log.checkpoint_leaves.max(1),
                interval_us: i64::try_from(config.log.checkpoint_interval_ms)
                    .unwrap_or(i64::MAX / 1000)
                    .saturating_mul(1000),
            },
            numbers: NumberHasher::new(&number_key)?,
            upstreams,
            policies,
            webhooks,
            max_request_bytes: config.server.max_request_bytes,
            min_body_rate: config.server.min_body_rate,
            metrics: crate::metrics::Metrics::default(),
            connections: api_settings.limits.clone(),
        };
        Ok(App {
            state: Arc::new(state),
            tls: server::tls_server_config(identity.chain.clone(), identity.key.clone_key())?,
            fingerprint: identity.fingerprint(),
            cert_path: identity.cert_path,
            data_dir: data.root().to_path_buf(),
            api_settings,
            admin_settings: server::Settings::admin(&config.server),
        })
    }

    /// The shared state, for tests that drive the workers one step at a time.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// The SHA-256 fingerprint of the served certificate.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Where the served certificate is, for clients that pin it (`curl --cacert`).
    pub fn cert_path(&self) -> &std::path::Path {
        &self.cert_path
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Serves the API over TLS on `api` and the admin endpoints on `admin` until `shutdown`.
    pub async fn run(
        self,
        api: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let api_server = server::serve(
            api,
            Some(TlsAcceptor::from(self.tls.clone())),
            http::api_router(self.state.clone()),
            self.api_settings.clone(),
            wait(stopped.clone()),
        );
        let stopped_worker = stopped.clone();
        let admin_server = server::serve(
            admin,
            None,
            http::admin_router(self.state.clone()),
            self.admin_settings.clone(),
            wait(stopped),
        );
        let worker = tokio::spawn(outbox::run(self.state.clone(), stopped_worker.clone()));
        let releases = tokio::spawn(scheduler::run(self.state.clone(), stopped_worker.clone()));
        let sequencer = tokio::spawn(crate::audit::sequencer::run(
            self.state.clone(),
            stopped_worker,
        ));
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        tokio::join!(api_server, admin_server);
        let _ = worker.await;
        let _ = releases.await;
        let _ = sequencer.await;
        if let Some(summary) = self.state.database().write_batches() {
            tracing::info!(%summary, "group commit: the write batches of this run");
        }
    }
}

/// The key-encryption key: configured, or the data folder's (made on first start).
pub fn payload_key(data: &DataDir, config: &Config) -> anyhow::Result<Vec<u8>> {
    symmetric_key(
        data,
        config.crypto.payload_key.as_ref(),
        "payload.key",
        "crypto.payload_key",
    )
}

/// The configured log signing key, or the data folder's (made on first start).
pub fn log_signer(data: &DataDir, configured: Option<&SecretRef>) -> anyhow::Result<LogSigner> {
    use base64::Engine as _;
    let pkcs8 = match configured {
        Some(reference) => {
            let secret = reference.resolve("log.signing_key")?;
            base64::engine::general_purpose::STANDARD
                .decode(secret.expose().trim())
                .context("log.signing_key: not base64")?
        }
        None => data.log_signing_key()?.pkcs8,
    };
    LogSigner::from_pkcs8(&pkcs8).map_err(|error| anyhow::anyhow!("log.signing_key: {error}"))
}

/// A configured key, or the data folder's (made on first start).
fn symmetric_key(
    data: &DataDir,
    configured: Option<&SecretRef>,
    file_name: &str,
    field: &str,
) -> anyhow::Result<Vec<u8>> {
    match configured {
        Some(reference) => {
            let secret = reference.resolve(field)?;
            crypto::decode_key(secret.expose().as_bytes())
                .with_context(|| format!("{field}: not a 32-byte key in base64"))
        }
        None => data.symmetric_key(file_name),
    }
}
