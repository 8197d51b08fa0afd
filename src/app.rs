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
    reloader: Arc<Reloader>,
    current: crate::state::Current,
    tls: Arc<rustls::ServerConfig>,
    fingerprint: String,
    cert_path: PathBuf,
    data_dir: PathBuf,
    api_settings: server::Settings,
    admin_settings: server::Settings,
    smpp: Option<crate::config::SmppConfig>,
    /// What SMPP upstreams' SMSCs deliver, for [`from_smscs`].
    smpp_inbox: tokio::sync::mpsc::UnboundedReceiver<crate::smpp::client::Incoming>,
}

/// The sockets [`App::run`] serves, bound by the caller (`serve`, or a test on port 0).
pub struct Listeners {
    /// The TLS API (`server.listen`).
    pub api: TcpListener,
    /// The plain admin endpoints (`server.admin_listen`).
    pub admin: TcpListener,
    /// The SMPP front (`smpp.listen`), when `[smpp]` is configured.
    pub smpp: Option<TcpListener>,
}

/// What a reload keeps: the store, the keys, the locks, the counts; and the configuration
/// running now, to tell what a reload may change from what needs a restart.
struct Shared {
    clock: Clock,
    data: DataDir,
    store: Arc<dyn store::Store>,
    keys: Arc<KeyRing>,
    log_signer: Arc<LogSigner>,
    numbers: Arc<NumberHasher>,
    recipient_locks: Arc<RecipientLocks>,
    sandbox: Arc<crate::upstream::Sandbox>,
    metrics: Arc<crate::metrics::Metrics>,
    connections: Arc<server::limits::Limits>,
    pacer: Arc<crate::pacing::Pacer>,
    witness_client: crate::upstream::HttpClient,
    smpp_receivers: Arc<crate::smpp::deliver::Receivers>,
    smpp_events: crate::smpp::client::Events,
    in_flight: tokio_util::task::TaskTracker,
}

/// Applies a new configuration to a running application (`serve` does on SIGHUP): the
/// certificate, the policies, tenants, upstreams, JWT issuers and keys, webhooks and the log's
/// cadence. Sends in flight finish with the configuration they started with; the next ones
/// take the new one. A configuration that does not build, or changes what needs a restart
/// (addresses, the database, the data folder, the keys, the limits), is refused and the
/// running one kept.
pub struct Reloader {
    shared: Shared,
    running: std::sync::Mutex<Config>,
    state: tokio::sync::watch::Sender<Arc<AppState>>,
    cert: Arc<server::CertSlot>,
    api_routes: server::Routes,
    admin_routes: server::Routes,
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
        let identity = tls_identity(&data, &config)?;
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
        let log_signer = log_signer(&data, &config.log)?;
        // One log, one signing key: checkpoints signed by another key would not verify.
        let recorded = store.setting("log_key_id", log_signer.key_id()).await?;
        if recorded != log_signer.key_id() {
            anyhow::bail!(
                "the database's log signing key is {recorded}, this instance's is {}: every \
                 instance sharing a database needs the same log.signing_key",
                log_signer.key_id()
            );
        }
        // One log, one name: cosignatures name the origin, and a renamed log's witnessed
        // history would no longer verify.
        let recorded = store.setting("log_origin", log_signer.origin()).await?;
        if recorded != log_signer.origin() {
            anyhow::bail!(
                "the database's log is named {recorded}, this instance's log.origin is {}: \
                 every instance needs the same log.origin, and a log keeps its name (its \
                 witnesses know it by it)",
                log_signer.origin()
            );
        }
        let keys = KeyRing::load(store.clone(), &payload_key, clock.now().as_microsecond())
            .await
            .context("cannot open the key ring (is crypto.payload_key the one the database's data keys were wrapped with?)")?;
        // Parse the shipped numbering metadata now rather than on the first request.
        crate::numbering::database();

        let api_settings = server::Settings::api(&config.server);
        let (smpp_events, smpp_inbox) = tokio::sync::mpsc::unbounded_channel();
        let shared = Shared {
            clock,
            data: data.clone(),
            store,
            keys: Arc::new(keys),
            log_signer: Arc::new(log_signer),
            numbers: Arc::new(NumberHasher::new(&number_key)?),
            recipient_locks: Arc::new(RecipientLocks::default()),
            sandbox: Arc::new(crate::upstream::Sandbox::default()),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            connections: api_settings.limits.clone(),
            pacer: Arc::default(),
            witness_client: crate::upstream::https_client(None, std::time::Duration::from_secs(2))
                .map_err(|e| anyhow::anyhow!("cannot build the witnesses' client: {e}"))?,
            smpp_receivers: Arc::default(),
            smpp_events,
            in_flight: tokio_util::task::TaskTracker::new(),
        };
        let state = Arc::new(live_state(&shared, &config, 1)?);
        let cert = Arc::new(server::CertSlot::new(
            identity.chain.clone(),
            identity.key.clone_key(),
        )?);
        let (sender, current) = tokio::sync::watch::channel(state.clone());
        let reloader = Reloader {
            shared,
            running: std::sync::Mutex::new(config.clone()),
            state: sender,
            cert: cert.clone(),
            api_routes: server::Routes::new(http::api_router(state.clone())),
            admin_routes: server::Routes::new(http::admin_router(state)),
        };
        Ok(App {
            reloader: Arc::new(reloader),
            current,
            tls: server::tls_server_config(cert)?,
            fingerprint: identity.fingerprint(),
            cert_path: identity.cert_path,
            data_dir: data.root().to_path_buf(),
            api_settings,
            admin_settings: server::Settings::admin(&config.server),
            smpp: config.smpp.clone(),
            smpp_inbox,
        })
    }

    /// The state live now, for tests that drive the workers one step at a time.
    pub fn state(&self) -> Arc<AppState> {
        self.current.borrow().clone()
    }

    /// The handle that applies a new configuration (`serve` calls it on SIGHUP).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
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

    /// Serves the API over TLS on `api`, the admin endpoints on `admin` and, with `[smpp]`,
    /// the SMPP front on `smpp`, until `shutdown`.
    pub async fn run(
        mut self,
        Listeners { api, admin, smpp }: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let api_server = server::serve(
            api,
            Some(TlsAcceptor::from(self.tls.clone())),
            self.reloader.api_routes.clone(),
            self.api_settings.clone(),
            wait(stopped.clone()),
        );
        let stopped_worker = stopped.clone();
        let admin_server = server::serve(
            admin,
            None,
            self.reloader.admin_routes.clone(),
            self.admin_settings.clone(),
            wait(stopped),
        );
        let smpp_front = match (smpp, &self.smpp) {
            (Some(listener), Some(config)) => Some(tokio::spawn(crate::smpp::session::serve(
                listener,
                config.tls.then(|| TlsAcceptor::from(self.tls.clone())),
                self.current.clone(),
                crate::smpp::session::Settings::from_config(config),
                stopped_worker.clone(),
            ))),
            _ => None,
        };
        let inbox = std::mem::replace(
            &mut self.smpp_inbox,
            tokio::sync::mpsc::unbounded_channel().1,
        );
        let smscs = tokio::spawn(from_smscs(self.current.clone(), inbox));
        let worker = tokio::spawn(outbox::run(self.current.clone(), stopped_worker.clone()));
        let releases = tokio::spawn(scheduler::run(self.current.clone(), stopped_worker.clone()));
        let sequencer = tokio::spawn(crate::audit::sequencer::run(
            self.current.clone(),
            stopped_worker.clone(),
        ));
        let witnessing = tokio::spawn(crate::audit::witnessing::run(
            self.current.clone(),
            stopped_worker,
        ));
        // When the stop began: the drain of connections and the wait for handlers whose clients
        // went away share one deadline.
        let (began, stop_began) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            shutdown.await;
            let _ = began.send(tokio::time::Instant::now());
            let _ = stop.send(true);
        });
        tokio::join!(api_server, admin_server);
        if let Some(smpp_front) = smpp_front {
            let _ = smpp_front.await;
        }
        // Handlers (and SMPP submits) whose clients went away may still be forwarding or recording.
        let in_flight = self.state().in_flight.clone();
        in_flight.close();
        let deadline = stop_began
            .await
            .unwrap_or_else(|_| tokio::time::Instant::now())
            + server::DRAIN_TIMEOUT;
        if tokio::time::timeout_at(deadline, in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                handlers = in_flight.len(),
                "requests still running after the drain timeout; stopping them"
            );
        }
        let _ = worker.await;
        let _ = releases.await;
        let _ = sequencer.await;
        let _ = witnessing.await;
        smscs.abort();
        if let Some(summary) = self.state().database().write_batches() {
            tracing::info!(%summary, "group commit: the write batches of this run");
        }
    }
}

impl Reloader {
    /// Applies `config` (as read from its file: a file that did not read is refused too) if
    /// it builds and changes nothing that needs a restart; returns the new configuration's
    /// version. On error the running configuration stays, whole.
    pub fn reload(&self, config: anyhow::Result<Config>) -> anyhow::Result<u64> {
        let result = config.and_then(|config| self.try_reload(config));
        let metrics = &self.shared.metrics;
        match &result {
            Ok(version) => {
                metrics.reload(true);
                tracing::info!(version, "configuration reloaded");
            }
            Err(error) => {
                metrics.reload(false);
                tracing::error!(
                    error = format!("{error:#}"),
                    "configuration refused; the running one is kept"
                );
            }
        }
        result
    }

    fn try_reload(&self, config: Config) -> anyhow::Result<u64> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(what) = needs_restart(&running, &config) {
            anyhow::bail!("{what} cannot change while consentry runs: restart it");
        }
        let version = self.state.borrow().config_version + 1;
        let identity = tls_identity(&self.shared.data, &config)?;
        let state = Arc::new(live_state(&self.shared, &config, version)?);
        // Everything is built: now switch, certificate first.
        self.cert.replace(identity.chain, identity.key)?;
        self.api_routes.replace(http::api_router(state.clone()));
        self.admin_routes.replace(http::admin_router(state.clone()));
        self.state.send_replace(state);
        *running = config;
        Ok(version)
    }
}

/// Passes what SMPP upstreams' SMSCs deliver to the flows, one after the other, with the
/// state live at the time: replies to `flow::receive::receive`, receipts to
/// `flow::receive::delivery_status`; each SMSC is answered once it is recorded.
async fn from_smscs(
    current: crate::state::Current,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<crate::smpp::client::Incoming>,
) {
    use crate::smpp::client::{Event, Handled};
    while let Some(incoming) = inbox.recv().await {
        let state = current.borrow().clone();
        let upstream = incoming.upstream.as_str();
        let done = match incoming.event {
            Event::Message(message) => crate::flow::receive::receive(
                &state,
                upstream,
                message,
                crate::flow::send::Delivery::Upstream,
                None,
            )
            .await
            .map(|_| ()),
            Event::Status(status) => {
                match crate::flow::receive::delivery_status(&state, upstream, &status).await {
                    // A receipt can outrun the outcome that names the SMSC's id: it is tried
                    // again beside the others for a few seconds before it is given up.
                    Ok(crate::flow::receive::Status::UnknownMessage) => {
                        let (upstream, handled) = (incoming.upstream, incoming.handled);
                        tokio::spawn(retry_receipt(current.clone(), upstream, status, handled));
                        continue;
                    }
                    done => done.map(|_| ()),
                }
            }
        };
        let handled = match done {
            Ok(()) => Handled::Recorded,
            Err(crate::flow::FlowError::Reply(error)) => {
                tracing::warn!(upstream, %error, "an SMSC's delivery that is not a reply consentry reads");
                Handled::Refused
            }
            Err(error) => {
                tracing::error!(upstream, %error, "an SMSC's delivery was not recorded; the SMSC will deliver it again");
                Handled::Failed
            }
        };
        let _ = incoming.handled.send(handled);
    }
}

/// Tries an SMSC's receipt for a message not yet known again, for up to about 6 s; the SMSC
/// is answered when it is recorded, or when it is given up (acknowledged, as for a webhook's).
async fn retry_receipt(
    current: crate::state::Current,
    upstream: String,
    status: crate::dialect::DeliveryStatus,
    handled: tokio::sync::oneshot::Sender<crate::smpp::client::Handled>,
) {
    use crate::smpp::client::Handled;
    let mut answer = Handled::Recorded;
    for attempt in 0..6u32 {
        tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(4))).await;
        let state = current.borrow().clone();
        match crate::flow::receive::delivery_status(&state, &upstream, &status).await {
            Ok(crate::flow::receive::Status::UnknownMessage) => continue,
            Ok(crate::flow::receive::Status::Recorded) => break,
            Err(error) => {
                tracing::error!(upstream, %error, "an SMSC's receipt was not recorded; the SMSC will deliver it again");
                answer = Handled::Failed;
                break;
            }
        }
    }
    let _ = handled.send(answer);
}

/// What a reload may not change, named; `None` when it changes none of it.
fn needs_restart(running: &Config, new: &Config) -> Option<&'static str> {
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    if running.data_dir != new.data_dir {
        return Some("data_dir");
    }
    if running.database_url() != new.database_url() {
        return Some("database.url");
    }
    if !same(&running.server, &new.server) {
        return Some("[server] (addresses, limits and timeouts)");
    }
    if !same(&running.crypto, &new.crypto) {
        return Some("[crypto] (the payload and number keys)");
    }
    if !same(&running.log.signing_key, &new.log.signing_key) {
        return Some("log.signing_key");
    }
    if running.log.origin != new.log.origin {
        return Some("log.origin");
    }
    if running.logging.format != new.logging.format {
        return Some("logging.format");
    }
    let front = |config: &Config| {
        config.smpp.as_ref().map(|smpp| {
            (
                smpp.listen,
                smpp.tls,
                smpp.window,
                smpp.idle_timeout_seconds,
                smpp.reassembly_timeout_seconds,
                smpp.when_paced,
            )
        })
    };
    if front(running) != front(new) {
        return Some("[smpp] (its listener and session settings; its accounts may change)");
    }
    None
}

/// The certificate and key: the configured files, or the data folder's self-signed pair.
fn tls_identity(data: &DataDir, config: &Config) -> anyhow::Result<datadir::TlsIdentity> {
    match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => datadir::load_tls(cert, key),
        _ => data.self_signed_tls(),
    }
}

/// The state for `config` around the shared parts: what a reload replaces.
fn live_state(shared: &Shared, config: &Config, version: u64) -> anyhow::Result<AppState> {
    let dev_key = if config.jwt.dev_issuer {
        Some(shared.data.dev_jwt_key()?)
    } else {
        None
    };
    let verifier = Verifier::from_config(config, dev_key.as_ref().map(|k| k.public.as_slice()))?;
    let upstreams = Upstreams::start(config, shared.sandbox.clone(), &shared.smpp_events)?;
    let tenants = config.tenants()?;
    let policies = PolicySet::load(&config.policies)?;
    let webhooks = Webhooks::new(tenants.values(), &config.outbox)?;
    let reassigned = config
        .reassigned_numbers
        .as_ref()
        .map(crate::reassigned::Lookup::from_config)
        .transpose()?
        .map(Arc::new);
    // Last: a configuration that does not build leaves the running pace as it was.
    shared.pacer.configure(config);
    Ok(AppState {
        clock: shared.clock.clone(),
        recipient_locks: shared.recipient_locks.clone(),
        tenants,
        verifier,
        store: shared.store.clone(),
        keys: shared.keys.clone(),
        log_signer: shared.log_signer.clone(),
        witnesses: config
            .log
            .witnesses
            .iter()
            .map(crate::audit::checkpoint::WitnessEndpoint::from_config)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("log.witnesses: {e}"))?,
        witness_client: shared.witness_client.clone(),
        log_cadence: Cadence {
            enabled: config.log.sequencer,
            leaves: config.log.checkpoint_leaves.max(1),
            interval_us: i64::try_from(config.log.checkpoint_interval_ms)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
        },
        numbers: shared.numbers.clone(),
        upstreams,
        pacer: shared.pacer.clone(),
        reassigned,
        policies,
        webhooks,
        max_request_bytes: config.server.max_request_bytes,
        min_body_rate: config.server.min_body_rate,
        metrics: shared.metrics.clone(),
        config_version: version,
        connections: shared.connections.clone(),
        smpp_accounts: Arc::new(
            crate::smpp::accounts::Accounts::from_config(
                config.smpp.as_ref().map_or(&[][..], |smpp| &smpp.accounts),
            )
            .map_err(|why| anyhow::anyhow!(why))?,
        ),
        smpp_receivers: shared.smpp_receivers.clone(),
        deciding: Default::default(),
        in_flight: shared.in_flight.clone(),
    })
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

/// The configured log signing key, or the data folder's (made on first start), naming the
/// log by its configured origin.
pub fn log_signer(data: &DataDir, log: &crate::config::LogConfig) -> anyhow::Result<LogSigner> {
    use base64::Engine as _;
    let pkcs8 = match log.signing_key.as_ref() {
        Some(reference) => {
            let secret = reference.resolve("log.signing_key")?;
            base64::engine::general_purpose::STANDARD
                .decode(secret.expose().trim())
                .context("log.signing_key: not base64")?
        }
        None => data.log_signing_key()?.pkcs8,
    };
    let signer = LogSigner::from_pkcs8(&pkcs8)
        .map_err(|error| anyhow::anyhow!("log.signing_key: {error}"))?;
    match &log.origin {
        Some(origin) => signer
            .with_origin(origin)
            .map_err(|error| anyhow::anyhow!("log.origin: {error}")),
        None => Ok(signer),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SmppAccountConfig, SmppConfig, WhenPaced};

    fn with_smpp(when_paced: WhenPaced, accounts: Vec<SmppAccountConfig>) -> Config {
        let mut config = Config::embedded();
        config.smpp = Some(SmppConfig {
            listen: "127.0.0.1:2775".parse().unwrap(),
            tls: true,
            window: 64,
            idle_timeout_seconds: 120,
            reassembly_timeout_seconds: 60,
            when_paced,
            accounts,
        });
        config
    }

    #[test]
    fn the_smpp_fronts_settings_need_a_restart_and_its_accounts_do_not() {
        let running = with_smpp(WhenPaced::Queue, Vec::new());
        let account = SmppAccountConfig {
            system_id: "app".into(),
            tenant: "demo".into(),
            password_hash: "pbkdf2-sha256$…".into(),
            purpose: None,
            senders: None,
        };
        assert_eq!(
            needs_restart(&running, &with_smpp(WhenPaced::Queue, vec![account])),
            None
        );
        assert!(needs_restart(&running, &with_smpp(WhenPaced::Throttle, Vec::new())).is_some());
        assert!(needs_restart(&running, &Config::embedded()).is_some());
    }
}
