//! Gathers witnesses' cosignatures (C2SP tlog-witness): each new checkpoint is sent to every
//! configured witness with a consistency proof from the last checkpoint that witness
//! cosigned, and the cosignatures that verify are stored beside the checkpoint.
//!
//! Each witness goes at its own pace: one that is down or slow is retried with a growing pause
//! and never holds up the others. Only the latest checkpoint is sent: a witness that cosigns
//! it vouches for every smaller tree it extends.
//!
//! A witness that answers `409` with a size larger than the log's own tree has seen more of
//! this log than the log now holds: the log was truncated or rolled back. That is said in the
//! log at `error` and in `consentry_witness_submissions_total{outcome="ahead"}`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};

use super::checkpoint::{Checkpoint, WitnessEndpoint as Endpoint};
use super::merkle;
use super::note::{AddCheckpoint, Cosignature};
use crate::state::{AppState, Current};

/// How often the latest checkpoint is looked at.
const POLL: Duration = Duration::from_millis(100);
/// How long a witness has to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause after failures.
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// The most of an answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What one submission came to.
#[derive(Debug)]
enum Submitted {
    /// Cosigned at this size.
    Cosigned(u64),
    /// The witness's latest cosigned size is another: try again from it.
    Moved(u64),
}

/// Where the log stands with one witness.
#[derive(Default)]
struct Progress {
    /// The size the witness last cosigned, as far as this instance knows: the next request's
    /// old size.
    known: Option<u64>,
    /// The largest size whose cosignature by this witness is stored. Apart from `known`: a
    /// witness may have cosigned a size whose answer was lost (a timeout); it is asked again.
    stored: Option<u64>,
    failures: u32,
    not_before: Option<tokio::time::Instant>,
    running: Option<tokio::task::JoinHandle<Result<Submitted, String>>>,
}

/// Runs until `stop` turns true.
pub async fn run(current: Current, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut progress: HashMap<String, Progress> = HashMap::new();
    loop {
        let state = current.borrow().clone();
        // The instances that sign checkpoints send them; the others would only race them.
        if !state.witnesses.is_empty() && state.log_cadence.enabled {
            step(&state, &mut progress).await;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|stop| *stop) => {
                for progress in progress.values() {
                    if let Some(task) = &progress.running {
                        task.abort();
                    }
                }
                return;
            }
        }
    }
}

/// One look: collects finished submissions, starts one for each idle witness behind the
/// latest checkpoint.
async fn step(state: &std::sync::Arc<AppState>, progress: &mut HashMap<String, Progress>) {
    let latest = match state.audit_log().latest_checkpoint().await {
        Ok(Some(latest)) => latest,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(%error, "reading the latest checkpoint for the witnesses failed");
            return;
        }
    };
    let now = tokio::time::Instant::now();
    for endpoint in &state.witnesses {
        let entry = progress.entry(endpoint.url.clone()).or_default();
        if let Some(task) = entry.running.take_if(|task| task.is_finished()) {
            let outcome = task
                .await
                .unwrap_or_else(|e| Err(format!("the submission stopped: {e}")));
            settle(state, endpoint, entry, outcome, latest.tree_size, now);
        }
        if entry.running.is_some() || entry.not_before.is_some_and(|t| t > now) {
            continue;
        }
        if entry
            .stored
            .is_some_and(|stored| stored >= latest.tree_size)
        {
            continue;
        }
        let state = state.clone();
        let endpoint = endpoint.clone();
        let latest = latest.clone();
        let (known, stored) = (entry.known, entry.stored);
        entry.running = Some(tokio::spawn(async move {
            let stored = match stored {
                Some(stored) => stored,
                None => state
                    .audit_log()
                    .latest_cosigned(&endpoint.key.name)
                    .await
                    .map_err(|e| e.to_string())?
                    .unwrap_or(0),
            };
            if stored >= latest.tree_size {
                return Ok(Submitted::Cosigned(stored));
            }
            submit(&state, &endpoint, known.unwrap_or(stored), &latest).await
        }));
    }
}

/// Records what a submission came to and when to try that witness again.
fn settle(
    state: &AppState,
    endpoint: &Endpoint,
    entry: &mut Progress,
    outcome: Result<Submitted, String>,
    log_size: u64,
    now: tokio::time::Instant,
) {
    let name = endpoint.key.name.as_str();
    match outcome {
        Ok(Submitted::Cosigned(size)) => {
            state.metrics.witness_submission(name, "cosigned");
            entry.known = Some(size);
            entry.stored = Some(size);
            entry.failures = 0;
            entry.not_before = None;
        }
        Ok(Submitted::Moved(size)) if size <= log_size => {
            state.metrics.witness_submission(name, "moved");
            entry.known = Some(size);
            entry.not_before = None;
        }
        Ok(Submitted::Moved(size)) => {
            state.metrics.witness_submission(name, "ahead");
            tracing::error!(
                witness = name,
                witness_size = size,
                log_size,
                "the witness cosigned a larger tree than this log holds: the log was truncated \
                 or rolled back, and no witness will cosign it again until it is restored"
            );
            entry.known = Some(size);
            pause(entry, now);
        }
        Err(why) => {
            state.metrics.witness_submission(name, "failed");
            tracing::warn!(witness = name, %why, "a witness did not cosign the checkpoint");
            // Ask the witness where it stands on the next try.
            entry.known = None;
            pause(entry, now);
        }
    }
}

fn pause(entry: &mut Progress, now: tokio::time::Instant) {
    entry.failures = entry.failures.saturating_add(1);
    let pause = Duration::from_millis(250)
        .saturating_mul(1u32 << entry.failures.min(8))
        .min(MAX_PAUSE);
    entry.not_before = Some(now + pause);
}

/// Sends `checkpoint` to one witness with a consistency proof from `known`; keeps the
/// cosignature when it verifies.
async fn submit(
    state: &AppState,
    endpoint: &Endpoint,
    known: u64,
    checkpoint: &Checkpoint,
) -> Result<Submitted, String> {
    if known > checkpoint.tree_size {
        return Ok(Submitted::Moved(known));
    }
    let store = state.audit_log();
    let proof = super::with_nodes(store, |get| {
        merkle::consistency_proof(known, checkpoint.tree_size, &mut |id| get(id))
    })
    .await
    .map_err(|e| format!("the consistency proof cannot be read: {e}"))?;
    let request = AddCheckpoint {
        old_size: known,
        proof,
        checkpoint: state.log_signer.note(checkpoint),
    };
    let (status, answer) = post(state, &endpoint.url, request.encode()).await?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    match status.as_u16() {
        200 => keep_cosignature(state, endpoint, checkpoint, &answer).await,
        409 => match answer.trim().parse::<u64>() {
            Ok(size) if size != known => Ok(Submitted::Moved(size)),
            _ => Err(format!(
                "the witness refused the checkpoint (409): {}",
                answer.trim()
            )),
        },
        code => Err(format!("the witness answered {code}: {}", answer.trim())),
    }
}

/// Finds the witness's cosignature among the lines it answered, checks it against the
/// checkpoint and keeps it. Lines by other keys are ignored, as the protocol says.
async fn keep_cosignature(
    state: &AppState,
    endpoint: &Endpoint,
    checkpoint: &Checkpoint,
    answer: &str,
) -> Result<Submitted, String> {
    let body = checkpoint.note_body(state.log_signer.origin());
    let cosignature = answer
        .lines()
        .filter_map(|line| Cosignature::from_line(line).ok())
        .find(|c| c.verify(&endpoint.key, &body).is_ok())
        .ok_or("the witness answered 200 without a cosignature by its key that verifies")?;
    state
        .audit_log()
        .record_cosignature(checkpoint.tree_size, &cosignature)
        .await
        .map_err(|e| format!("the cosignature could not be stored: {e}"))?;
    Ok(Submitted::Cosigned(checkpoint.tree_size))
}

/// Posts a request body; returns the status and up to [`MAX_ANSWER_BYTES`] of the answer.
async fn post(
    state: &AppState,
    url: &str,
    body: String,
) -> Result<(http::StatusCode, Bytes), String> {
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("{url}: {e}"))?;
    let exchange = async {
        let response = state
            .witness_client
            .request(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{url}: the answer did not read: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {TIMEOUT:?}"))?
}
