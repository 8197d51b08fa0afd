//! `consentry witness`: a transparency-log witness (C2SP tlog-witness), meant to run on
//! another machine, under another operator, than the log it watches.
//!
//! For each log it trusts (an origin and the log's public key) it keeps one thing: the latest
//! checkpoint it cosigned. It cosigns a new checkpoint only if the log's signature verifies
//! and a consistency proof shows that the new tree extends that one; anything else is refused
//! with the protocol's status, and a refusal that shows the log misbehaving (a proof that does
//! not verify, another root for a size it already cosigned) is kept in `refusals.ndjson` as
//! evidence. The state is written and synced before the answer, under one lock, so two
//! requests cannot roll it back.
//!
//! Its configuration is a small TOML file:
//!
//! ```toml
//! name = "witness.example.org/w1"   # its key name, in every cosignature
//! listen = "127.0.0.1:7380"
//! state_dir = "witness-state"        # its key and state; relative to this file
//!
//! [[logs]]
//! origin = "consentry/3f0a9c1d2b4e5f60"          # `consentry audit public-key` prints both
//! public_key = "base64 of the raw Ed25519 key"
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::audit::merkle::{self, Hash};
use crate::audit::note::{self, AddCheckpoint, SignedCheckpoint, WitnessKey};

/// The witness's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    pub name: String,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    #[serde(default)]
    pub logs: Vec<TrustedLog>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7380))
}

/// A log the witness cosigns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedLog {
    pub origin: String,
    /// The log's raw Ed25519 public key, base64.
    pub public_key: String,
}

impl WitnessConfig {
    /// Reads the file; a relative `state_dir` is taken from the file's folder.
    pub fn load(path: &Path) -> anyhow::Result<WitnessConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut config: WitnessConfig =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if config.state_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.state_dir = base.join(&config.state_dir);
        }
        if config.name.is_empty()
            || config.name.contains(char::is_whitespace)
            || config.name.contains('+')
        {
            anyhow::bail!(
                "name: a witness name is one word without `+`, such as witness.example.org/w1"
            );
        }
        Ok(config)
    }
}

/// The witness's signing key, made on first use in its state folder.
pub fn load_key(state_dir: &Path) -> anyhow::Result<Ed25519KeyPair> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    crate::datadir::make_private(state_dir, 0o700)?;
    let path = state_dir.join("witness.pk8");
    if !path.exists() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("cannot generate a key"))?;
        write_durably(&path, pkcs8.as_ref())?;
        crate::datadir::make_private(&path, 0o600)?;
    }
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ed25519KeyPair::from_pkcs8(&bytes)
        .map_err(|_| anyhow::anyhow!("{}: not an Ed25519 key in PKCS#8", path.display()))
}

/// The witness's public identity, for the logs and auditors that rely on it.
pub fn public_key(config: &WitnessConfig, pair: &Ed25519KeyPair) -> WitnessKey {
    WitnessKey {
        name: config.name.clone(),
        public_key: pair.public_key().as_ref().to_vec(),
    }
}

/// The latest checkpoint cosigned for one log: what a request's old size must match.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cosigned {
    origin: String,
    tree_size: u64,
    /// Base64.
    root: String,
    /// The checkpoint as received, with the witness's cosignature appended.
    note: String,
}

struct Witness {
    name: String,
    pair: Ed25519KeyPair,
    /// The logs' public keys, by origin.
    logs: HashMap<String, Vec<u8>>,
    state_dir: PathBuf,
    /// The latest cosigned checkpoint per origin; the lock makes check-and-store one step.
    cosigned: Mutex<HashMap<String, Cosigned>>,
}

/// Runs the witness until `shutdown` completes.
pub async fn serve(
    config: WitnessConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    let pair = load_key(&config.state_dir)?;
    let mut logs = HashMap::new();
    for log in &config.logs {
        let key = base64::engine::general_purpose::STANDARD
            .decode(log.public_key.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .with_context(|| {
                format!(
                    "logs: {}: public_key is not a raw Ed25519 key in base64",
                    log.origin
                )
            })?;
        logs.insert(log.origin.clone(), key);
    }
    let mut cosigned = HashMap::new();
    for origin in logs.keys() {
        let path = state_path(&config.state_dir, origin);
        if path.exists() {
            let text =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let state: Cosigned = serde_json::from_slice(&text)
                .with_context(|| format!("{}: not a witness state", path.display()))?;
            cosigned.insert(origin.clone(), state);
        }
    }
    let witness = Arc::new(Witness {
        name: config.name.clone(),
        pair,
        logs,
        state_dir: config.state_dir.clone(),
        cosigned: Mutex::new(cosigned),
    });
    let router = axum::Router::new()
        .route("/add-checkpoint", axum::routing::post(add_checkpoint))
        .route("/checkpoint", axum::routing::get(latest))
        .with_state(witness);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("the witness's listener failed")
}

/// Where a log's state is kept: one small file per origin.
fn state_path(state_dir: &Path, origin: &str) -> PathBuf {
    let hash = ring::digest::digest(&ring::digest::SHA256, origin.as_bytes());
    state_dir.join(format!(
        "log-{}.json",
        crate::crypto::hex(&hash.as_ref()[..8])
    ))
}

/// Writes a file and syncs it and its folder before returning, replacing it whole.
fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(folder) = path.parent() {
        std::fs::File::open(folder)?.sync_all()?;
    }
    Ok(())
}

fn answer(status: StatusCode, text: impl Into<String>) -> Response {
    (status, text.into()).into_response()
}

/// `POST /add-checkpoint` (tlog-witness).
async fn add_checkpoint(State(witness): State<Arc<Witness>>, body: String) -> Response {
    // In a task of its own: a client that goes away must not stop it between storing the
    // state and keeping it in memory.
    tokio::spawn(add(witness, body))
        .await
        .unwrap_or_else(|_| answer(StatusCode::INTERNAL_SERVER_ERROR, "the request failed\n"))
}

async fn add(witness: Arc<Witness>, body: String) -> Response {
    let request = match AddCheckpoint::parse(&body) {
        Ok(request) => request,
        Err(why) => return answer(StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let checkpoint = match SignedCheckpoint::parse(&request.checkpoint) {
        Ok(checkpoint) => checkpoint,
        Err(why) => return answer(StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let Some(log_key) = witness.logs.get(&checkpoint.origin) else {
        return answer(StatusCode::NOT_FOUND, "unknown log origin\n");
    };
    if !checkpoint.signed_by_log(log_key) {
        return answer(
            StatusCode::FORBIDDEN,
            "no signature by the log's key verifies\n",
        );
    }
    if request.old_size > checkpoint.tree_size {
        return answer(
            StatusCode::BAD_REQUEST,
            "the old size is larger than the checkpoint's\n",
        );
    }
    let mut cosigned = witness.cosigned.lock().await;
    let latest = cosigned.get(&checkpoint.origin);
    let (latest_size, latest_root) = match latest {
        Some(latest) => match decode_root(&latest.root) {
            Some(root) => (latest.tree_size, root),
            None => return answer(StatusCode::INTERNAL_SERVER_ERROR, "the state is corrupt\n"),
        },
        None => (0, merkle::empty_root()),
    };
    if request.old_size != latest_size {
        let mut response = answer(StatusCode::CONFLICT, format!("{latest_size}\n"));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/x.tlog.size"),
        );
        return response;
    }
    if latest_size == checkpoint.tree_size && latest_root != checkpoint.root {
        refuse(
            &witness,
            &body,
            "fork",
            "another root, signed by the log, for a size already cosigned",
        );
        return answer(
            StatusCode::CONFLICT,
            "this size was cosigned with another root\n",
        );
    }
    if let Err(error) = merkle::verify_consistency(
        latest_size,
        checkpoint.tree_size,
        &latest_root,
        &checkpoint.root,
        &request.proof,
    ) {
        let why = format!(
            "the consistency proof from {latest_size} to {} does not verify ({error}): the log \
             is not an extension of the checkpoint cosigned before",
            checkpoint.tree_size
        );
        refuse(&witness, &body, "inconsistent_proof", &why);
        return answer(StatusCode::UNPROCESSABLE_ENTITY, format!("{why}\n"));
    }
    let now = jiff::Timestamp::now().as_second().max(0) as u64;
    let cosignature = note::cosign(&witness.pair, &witness.name, &checkpoint.body, now);
    let state = Cosigned {
        origin: checkpoint.origin.clone(),
        tree_size: checkpoint.tree_size,
        root: {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(checkpoint.root)
        },
        note: format!("{}{}", request.checkpoint, cosignature.line()),
    };
    let path = state_path(&witness.state_dir, &checkpoint.origin);
    let bytes = serde_json::to_vec(&state).expect("a state serializes");
    // Stored before the answer, under the lock: a cosignature is never given for a state
    // that a crash could roll back.
    let written = tokio::task::spawn_blocking(move || write_durably(&path, &bytes)).await;
    if let Err(error) = written.unwrap_or_else(|e| Err(anyhow::anyhow!(e))) {
        tracing::error!(%error, "the witness's state could not be written; nothing was cosigned");
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the state cannot be written\n",
        );
    }
    cosigned.insert(checkpoint.origin.clone(), state);
    drop(cosigned);
    tracing::info!(origin = %checkpoint.origin, size = checkpoint.tree_size, "cosigned");
    answer(StatusCode::OK, cosignature.line())
}

fn decode_root(text: &str) -> Option<Hash> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    Hash::try_from(bytes.as_slice()).ok()
}

/// Keeps a refused request that may show the log misbehaving, with why. `evidence` says how
/// much it shows: `fork` (two roots the log signed for one size: conclusive by itself) or
/// `inconsistent_proof` (a checkpoint the log signed with a proof that does not lead to it
/// from the cosigned one: anyone holding the checkpoint can send a bad proof, so ask the log
/// for the consistency proof between the two sizes to settle it).
fn refuse(witness: &Witness, request: &str, evidence: &str, why: &str) {
    use std::io::Write as _;
    tracing::warn!(%why, "refused a checkpoint");
    let line = serde_json::json!({
        "refused_at": jiff::Timestamp::now().to_string(),
        "evidence": evidence,
        "why": why,
        "request": request,
    });
    let path = witness.state_dir.join("refusals.ndjson");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| {
            writeln!(file, "{line}")?;
            file.sync_all()
        });
    if let Err(error) = written {
        tracing::error!(%error, path = %path.display(), "a refusal could not be kept");
    }
}

#[derive(Deserialize)]
struct OriginQuery {
    origin: String,
}

/// `GET /checkpoint?origin=…`: the latest checkpoint cosigned for a log, as a note with the
/// witness's cosignature, so that an auditor can compare it with what the log shows. (The
/// C2SP protocol leaves how monitors read a witness open; this is consentry's answer.)
async fn latest(State(witness): State<Arc<Witness>>, Query(query): Query<OriginQuery>) -> Response {
    let cosigned = witness.cosigned.lock().await;
    match cosigned.get(&query.origin) {
        Some(state) => answer(StatusCode::OK, state.note.clone()),
        None => answer(
            StatusCode::NOT_FOUND,
            "no checkpoint of this log was cosigned\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::LogSigner;
    use crate::audit::note::AddCheckpoint;

    fn log() -> LogSigner {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        LogSigner::from_pkcs8(pkcs8.as_ref())
            .unwrap()
            .with_origin("log.test/o")
            .unwrap()
    }

    fn witness(state_dir: &Path, log: &LogSigner) -> Arc<Witness> {
        Arc::new(Witness {
            name: "witness.test/w".into(),
            pair: load_key(state_dir).unwrap(),
            logs: HashMap::from([(log.origin().to_owned(), log.public_key().to_vec())]),
            state_dir: state_dir.to_owned(),
            cosigned: Mutex::new(HashMap::new()),
        })
    }

    /// An `add-checkpoint` body for the log's checkpoint of `size` leaves with `root`.
    fn request(log: &LogSigner, old_size: u64, size: u64, root: Hash) -> String {
        AddCheckpoint {
            old_size,
            proof: Vec::new(),
            checkpoint: log.note(&log.sign(size, root, 1)),
        }
        .encode()
    }

    #[tokio::test]
    async fn another_root_signed_for_a_cosigned_size_is_refused_as_a_fork_and_kept() {
        let folder = tempfile::tempdir().unwrap();
        let log = log();
        let witness = witness(folder.path(), &log);
        let first = add(witness.clone(), request(&log, 0, 2, [1; 32])).await;
        assert_eq!(first.status(), StatusCode::OK);
        // The same root again is cosigned again (a lost answer asked for once more).
        let again = add(witness.clone(), request(&log, 2, 2, [1; 32])).await;
        assert_eq!(again.status(), StatusCode::OK);
        assert!(!folder.path().join("refusals.ndjson").exists());

        let fork = add(witness.clone(), request(&log, 2, 2, [2; 32])).await;
        assert_eq!(fork.status(), StatusCode::CONFLICT);
        let kept = std::fs::read_to_string(folder.path().join("refusals.ndjson")).unwrap();
        let refusal: serde_json::Value =
            serde_json::from_str(kept.lines().next().unwrap()).unwrap();
        assert_eq!(refusal["evidence"], "fork", "{refusal}");
        // The request is kept whole: it carries the log's own signature over the other root.
        let refused = AddCheckpoint::parse(refusal["request"].as_str().unwrap()).unwrap();
        assert!(
            crate::audit::note::SignedCheckpoint::parse(&refused.checkpoint)
                .unwrap()
                .signed_by_log(log.public_key())
        );
        // The state still holds the first root: a fork does not replace what was cosigned.
        let cosigned = witness.cosigned.lock().await;
        assert_eq!(
            decode_root(&cosigned[log.origin()].root),
            Some([1; 32]),
            "{:?}",
            cosigned[log.origin()].root
        );
    }
}
