//! Listeners: the accept loop for TLS (rustls on ring, ALPN `h2` and `http/1.1`) and for the
//! plain admin port, HTTP/1.1 and h2 on one connection builder, and graceful shutdown.
//!
//! `serve` takes an already bound listener and a shutdown future, so tests bind port 0 and run
//! the real server.
//!
//! Each connection takes a place in the listener's table ([`limits`]) before anything else,
//! and its socket is watched for idleness and closed with a linger ([`connection`]). Request
//! bodies and early answers are the API's edge (`http::edge`).

pub mod connection;
pub mod limits;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use connection::Watched;
use limits::{Limits, Refused};

/// The largest request head accepted over h2 (HTTP/1.1 allows about as much by default), so
/// an oversized token gets a 401 that says so rather than a dropped connection.
const MAX_HEADER_BYTES: u32 = 128 * 1024;
/// How long open connections get to finish after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections refused with an answer at once; beyond, refused ones are closed unanswered.
const MAX_REFUSING: usize = 32;
/// How long a refused connection gets to receive its answer.
const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// A listener's timeouts and connection limits (`[server]` in the configuration).
#[derive(Clone)]
pub struct Settings {
    /// For the TLS handshake and, on HTTP/1.1, each request head.
    pub header_timeout: Duration,
    /// Nothing read or written for this long closes the connection.
    pub idle_timeout: Duration,
    pub limits: Arc<Limits>,
}

impl Settings {
    /// The API listener's settings from the configuration.
    pub fn api(server: &crate::config::ServerConfig) -> Settings {
        Settings {
            header_timeout: Duration::from_secs(server.header_timeout_seconds),
            idle_timeout: Duration::from_secs(server.idle_timeout_seconds),
            limits: Limits::new(
                server
                    .max_connections
                    .unwrap_or_else(limits::default_max_connections),
                server.max_connections_per_client,
            ),
        }
    }

    /// The admin listener's: the same timeouts, and a few connections (probes and scrapers).
    pub fn admin(server: &crate::config::ServerConfig) -> Settings {
        Settings {
            limits: Limits::new(64, 64),
            ..Settings::api(server)
        }
    }
}

/// The TLS server configuration: the certificate in `slot` (replaced on reload), TLS 1.2 and
/// 1.3, ALPN h2 and http/1.1.
pub fn tls_server_config(slot: Arc<CertSlot>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The served certificate and key; a reload replaces them, and the next handshake uses the
/// new ones (open connections keep theirs).
#[derive(Debug)]
pub struct CertSlot(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl CertSlot {
    pub fn new(
        chain: Vec<rustls_pki_types::CertificateDer<'static>>,
        key: rustls_pki_types::PrivateKeyDer<'static>,
    ) -> anyhow::Result<CertSlot> {
        Ok(CertSlot(std::sync::RwLock::new(certified(chain, key)?)))
    }

    /// Replaces the certificate, checked first: a key that does not sign is refused here.
    pub fn replace(
        &self,
        chain: Vec<rustls_pki_types::CertificateDer<'static>>,
        key: rustls_pki_types::PrivateKeyDer<'static>,
    ) -> anyhow::Result<()> {
        let certified = certified(chain, key)?;
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = certified;
        Ok(())
    }
}

fn certified(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|error| anyhow::anyhow!("the TLS key cannot be used: {error}"))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|error| anyhow::anyhow!("the TLS key is not the certificate's: {error}"))?;
    Ok(Arc::new(certified))
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.read().ok().map(|certified| certified.clone())
    }
}

/// The routes a listener serves, replaced on reload: each request is routed by the routes
/// current when it arrives, and finishes with them.
#[derive(Clone)]
pub struct Routes(Arc<std::sync::RwLock<Router>>);

impl Routes {
    pub fn new(router: Router) -> Routes {
        Routes(Arc::new(std::sync::RwLock::new(router)))
    }

    pub fn replace(&self, router: Router) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = router;
    }

    fn current(&self) -> Router {
        self.0
            .read()
            .map(|router| router.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

/// Serves `routes` on `listener` until `shutdown` resolves, then drains open connections.
/// With `tls`, every connection must complete a TLS handshake first; plain HTTP is refused.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    routes: Routes,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let refusing = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn_at_most_every_10s(&ACCEPT_FAILED, &format!("accept failed: {error}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let slot = match settings.limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                refuse(stream, tls.clone(), refused, &refusing);
                continue;
            }
        };
        let proof = slot.proof();
        let routes = routes.clone();
        let service = TowerToHyperService::new(tower::service_fn(
            move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(proof.clone());
                routes.current().oneshot(request)
            },
        ));
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            let evicted = slot.eviction();
            let builder = builder(&settings);
            let served = async {
                match tls {
                    Some(acceptor) => {
                        let stream = match tokio::time::timeout(
                            settings.header_timeout,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                                settings
                                    .limits
                                    .handshake_failures
                                    .fetch_add(1, Ordering::Relaxed);
                                return Ok(());
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                settings
                                    .limits
                                    .handshake_failures
                                    .fetch_add(1, Ordering::Relaxed);
                                return Ok(());
                            }
                        };
                        let io = Watched::new(stream, settings.idle_timeout, slot);
                        let connection =
                            builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                        watcher.watch(connection).await
                    }
                    None => {
                        let io = Watched::new(stream, settings.idle_timeout, slot);
                        let connection =
                            builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                        watcher.watch(connection).await
                    }
                }
            };
            tokio::select! {
                result = served => if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                },
                () = evicted => tracing::debug!(%peer, "connection closed to make room for another"),
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("connections still open after the drain timeout; closing them");
        }
    }
}

/// The HTTP/1.1 and h2 connection builder with the listener's limits.
fn builder(settings: &Settings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES);
    builder
}

/// Answers a connection over the limits with 503 `too_many_connections` and closes it, while
/// fewer than [`MAX_REFUSING`] are being answered so; closes it unanswered otherwise.
fn refuse(
    stream: tokio::net::TcpStream,
    tls: Option<TlsAcceptor>,
    refused: Refused,
    refusing: &Arc<tokio::sync::Semaphore>,
) {
    let message = match refused {
        Refused::Full => "consentry has as many connections open as it takes; try again later",
        Refused::Client => "this address has as many connections open as it may; try again later",
    };
    warn_at_most_every_10s(&REFUSED, message);
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let service = hyper::service::service_fn(move |_request| async move {
            let body = serde_json::json!({
                "error": {"code": "too_many_connections", "message": message}
            });
            http::Response::builder()
                .status(http::StatusCode::SERVICE_UNAVAILABLE)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::CONNECTION, "close")
                .header(http::header::RETRY_AFTER, "1")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                )))
        });
        let answer = async {
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        };
        let _ = tokio::time::timeout(REFUSAL_TIME, answer).await;
    });
}

static ACCEPT_FAILED: AtomicI64 = AtomicI64::new(0);
static REFUSED: AtomicI64 = AtomicI64::new(0);

/// Logs `message` unless the same kind of message was logged in the last ten seconds: under
/// a flood, one line in ten seconds says what is happening.
fn warn_at_most_every_10s(last: &AtomicI64, message: &str) {
    let now = jiff::Timestamp::now().as_second();
    let before = last.load(Ordering::Relaxed);
    if now - before >= 10
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!("{message}");
    }
}
