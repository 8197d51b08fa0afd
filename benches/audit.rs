//! The verifiable log's costs (issue 6), on SQLite in a temporary folder:
//!
//! 1. the pure Merkle cost: N leaf hashes pushed into a [`Frontier`] and its root, no database;
//! 2. one Ed25519 checkpoint signature;
//! 3. seeding N consent events through the store, with the sequencer *not* running, so that
//!    they are all pending;
//! 4. the checkpoint cost: sequencing all N pending entries as `sequencer::step` does, in
//!    `store.sequence_log(250)` transactions (its batch, `BATCH` in src/audit/sequencer.rs),
//!    signing a checkpoint whenever one is due after a batch (every `checkpoint_leaves`), then
//!    `sequencer::step` itself once nothing is pending;
//! 5. the export rate: the app served over TLS, `GET /v1/audit/consent-events` streamed to the
//!    end as NDJSON, then as CSV, with an `audit:read` token.
//!
//! `cargo bench --bench audit` (set `AUDIT_BENCH_LEAVES` for another N than 1,000,000).
//! See bench/README.md for how to read the figures.

use std::time::{Duration, Instant};

use consentry::App;
use consentry::audit::merkle::{Frontier, leaf_hash};
use consentry::audit::sequencer;
use consentry::auth::{DevClaims, mint_dev_token};
use consentry::consent::{Action, Level};
use consentry::domain::{PhoneNumber, Region};
use consentry::state::AppState;
use consentry::store::ConsentRecord;
use futures_util::StreamExt as _;

/// Events per `record_consents` call.
const BATCH: usize = 1_000;
/// Entries per `sequence_log` transaction: the sequencer's own batch (`BATCH` in
/// src/audit/sequencer.rs, which is private; keep the two equal).
const SEQUENCE_BATCH: i64 = 250;

fn number(index: usize) -> PhoneNumber {
    // +1 415 EEE LLLL, as bench/run.sh draws them: a million distinct US numbers.
    let text = format!("+1415{:03}{:04}", 200 + index / 10_000, index % 10_000);
    PhoneNumber::parse(&text, Region::US).unwrap()
}

fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// The process's peak resident memory, from /proc (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The SQLite database's files (main file and WAL), in MiB.
fn database_mib(data: &std::path::Path) -> f64 {
    ["consentry.db", "consentry.db-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(data.join(name)).ok())
        .map(|meta| meta.len() as f64 / 1_048_576.0)
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

/// 1. Hashing alone: N leaf hashes into a frontier, then its root.
fn merkle_only(count: u64) {
    let started = Instant::now();
    let mut frontier = Frontier::default();
    for index in 0..count {
        // A leaf about as long as a consent event's (a few hundred bytes).
        let mut leaf = [0u8; 320];
        leaf[..8].copy_from_slice(&index.to_be_bytes());
        frontier.push(leaf_hash(&leaf));
    }
    let root = frontier.root();
    let elapsed = started.elapsed();
    println!(
        "merkle (memory only): {count} leaves hashed and pushed, root {:02x}{:02x}..., in {:.3} s: {:.0} leaves/s",
        root[0],
        root[1],
        elapsed.as_secs_f64(),
        rate(count, elapsed)
    );
}

/// 2. One checkpoint signature (Ed25519), averaged over many.
fn signature(state: &AppState) {
    const SIGNATURES: u32 = 10_000;
    let root = [7u8; 32];
    let started = Instant::now();
    for size in 0..SIGNATURES {
        std::hint::black_box(state.log_signer.sign(u64::from(size), root, now_us()));
    }
    let each = started.elapsed() / SIGNATURES;
    println!(
        "checkpoint signature (Ed25519, ring): {:.1} us each (mean of {SIGNATURES})",
        each.as_secs_f64() * 1e6
    );
}

/// 3. N consent events recorded, all pending in the log.
async fn seed(state: &AppState, count: usize) {
    let tenant = state.tenants.values().next().unwrap().id.clone();
    let started = Instant::now();
    let mut records = Vec::with_capacity(BATCH);
    let mut index = 0;
    while index < count {
        records.clear();
        for i in index..(index + BATCH).min(count) {
            let to = number(i);
            let id = format!("evt_{}", uuid::Uuid::now_v7().simple());
            let at = now_us();
            let evidence = format!(r#"{{"number":"{}","source":"bench import"}}"#, to.e164());
            let sealed = state
                .keys
                .seal(
                    format!("consentry/consent/v1\0{tenant}\0{id}").as_bytes(),
                    evidence.as_bytes(),
                    at,
                )
                .await
                .unwrap();
            records.push(ConsentRecord {
                id,
                tenant: tenant.clone(),
                recipient_hash: state.numbers.hash(&to),
                recipient_masked: to.masked(),
                action: Action::OptIn,
                level: Some(Level::ExpressWritten),
                brand: None,
                campaign: None,
                purposes: String::new(),
                method: "import".into(),
                occurred_at_us: at,
                recorded_at_us: at,
                recorded_by: "bench".into(),
                external_id: None,
                idempotency_key: format!("bench:{i}"),
                key_id: sealed.key_id,
                evidence: sealed.bytes,
            });
        }
        state.store.record_consents(&records, None).await.unwrap();
        index += records.len();
        if index % 100_000 == 0 && index < count {
            eprintln!(
                "  seeded {index} in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let elapsed = started.elapsed();
    println!(
        "seeding (sequencer not running): {count} consent events recorded in {:.1} s: {:.0} events/s",
        elapsed.as_secs_f64(),
        rate(count as u64, elapsed)
    );
}

/// 4. Sequencing every pending entry as `sequencer::step` does (batches of its size, and a
///    checkpoint signed whenever one is due after a batch), then `sequencer::step` itself.
async fn sequence(state: &AppState, count: u64) {
    let cadence = state.log_cadence;
    let started = Instant::now();
    let mut transactions = Vec::new();
    let (mut signed, mut checking) = (0u64, Duration::ZERO);
    loop {
        let batch = Instant::now();
        let head = state
            .store
            .sequence_log(SEQUENCE_BATCH)
            .await
            .unwrap()
            .expect("no other instance sequences");
        transactions.push(batch.elapsed());
        // What `sequencer::step` does after each batch (its `sign_if_due`).
        let check = Instant::now();
        let due = match state.store.latest_checkpoint().await.unwrap() {
            None => head.size > 0,
            Some(latest) => {
                head.size > latest.tree_size
                    && (head.size - latest.tree_size >= cadence.leaves
                        || now_us() - latest.signed_at_us >= cadence.interval_us)
            }
        };
        if due {
            let checkpoint = state.log_signer.sign(head.size, head.root, now_us());
            state.store.record_checkpoint(&checkpoint).await.unwrap();
            signed += 1;
        }
        checking += check.elapsed();
        if head.size >= count {
            break;
        }
        if head.size % 100_000 == 0 {
            eprintln!(
                "  sequenced {} in {:.1} s",
                head.size,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let sequenced = started.elapsed();
    // What the sequencer does at its next poll: finds nothing pending, signs if due.
    let stepping = Instant::now();
    let last = sequencer::step(&*state.store, &state.log_signer, state.log_cadence, &now_us)
        .await
        .unwrap();
    let stepped = stepping.elapsed();
    let total = started.elapsed();
    let latest = state.store.latest_checkpoint().await.unwrap();
    assert_eq!(
        latest.map(|checkpoint| checkpoint.tree_size),
        Some(count),
        "the last checkpoint covers every leaf"
    );
    transactions.sort();
    println!(
        "sequencing: {count} leaves in {} transactions of up to {SEQUENCE_BATCH} in {:.1} s: {:.0} leaves/s",
        transactions.len(),
        (sequenced - checking).as_secs_f64(),
        rate(count, sequenced - checking)
    );
    println!(
        "  per transaction (SQLite's writer lock held): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&transactions, 0.5).as_secs_f64() * 1e3,
        percentile(&transactions, 0.99).as_secs_f64() * 1e3,
        transactions
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    );
    println!(
        "  checkpoints signed along the way (every {} leaves): {signed}; the check after each batch and the signing: {:.1} s in all",
        cadence.leaves,
        checking.as_secs_f64()
    );
    println!(
        "  then sequencer::step (nothing pending, {}): {:.1} ms",
        if last.is_some() {
            "signs and stores a checkpoint"
        } else {
            "no checkpoint due"
        },
        stepped.as_secs_f64() * 1e3
    );
    println!(
        "checkpoint cost for {count} leaves (sequence + sign): {:.1} s",
        total.as_secs_f64()
    );
}

/// 5. The export, streamed over TLS to the end; returns (rows, bytes, seconds).
async fn export(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> (u64, u64, Duration, Duration, http::Version) {
    let started = Instant::now();
    let response = client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let version = response.version();
    let mut first = None;
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        first.get_or_insert_with(|| started.elapsed());
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    (
        lines,
        bytes,
        first.unwrap_or_default(),
        started.elapsed(),
        version,
    )
}

fn main() {
    let count: usize = std::env::var("AUDIT_BENCH_LEAVES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    assert!(
        (1..=1_000_000).contains(&count),
        "AUDIT_BENCH_LEAVES: 1 to 1000000 (distinct numbers)"
    );
    println!("audit bench: N = {count}");
    merkle_only(count as u64);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let folder = tempfile::tempdir().unwrap();
        let data = folder.path().join("data");
        // The sequencer is off: nothing sequences but this bench's own calls, and the export's
        // server runs no background sequencing either.
        let config_text = format!(
            r#"data_dir = "{}"

[jwt]
dev_issuer = true

[log]
sequencer = false

[[tenants]]
id = "bench"
senders = ["+12025550100"]
upstream = "sandbox"
"#,
            data.display()
        );
        std::fs::write(folder.path().join("c.toml"), config_text).unwrap();
        let config = consentry::Config::load(&folder.path().join("c.toml")).unwrap();
        let app = App::build(config).await.unwrap();
        let state = app.state();

        signature(&state);
        seed(&state, count).await;
        println!("  database after seeding: {:.0} MiB", database_mib(&data));
        sequence(&state, count as u64).await;
        println!("  database after sequencing: {:.0} MiB", database_mib(&data));

        // Served as `consentry serve` serves it: TLS, the API router.
        let cert = std::fs::read(app.cert_path()).unwrap();
        let pkcs8 = std::fs::read(data.join("keys/jwt-dev.pk8")).unwrap();
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = api.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listeners = consentry::Listeners {
            api,
            admin,
            smpp: None,
        };
        let server = tokio::spawn(app.run(listeners, async {
            let _ = stopped.await;
        }));
        let now = jiff::Timestamp::now().as_second();
        let token = mint_dev_token(
            &pkcs8,
            &DevClaims {
                iss: "consentry-dev".into(),
                aud: "consentry".into(),
                sub: "auditor".into(),
                tenant: "bench".into(),
                scope: "audit:read".into(),
                iat: now,
                nbf: now - 60,
                exp: now + 4 * 3600,
            },
        )
        .unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
            .build()
            .unwrap();
        let base = format!("https://localhost:{}/v1/audit/consent-events", address.port());
        for (format, url, header_lines) in [
            ("ndjson", base.clone(), 0),
            ("csv", format!("{base}?format=csv"), 1),
        ] {
            let (lines, bytes, first, elapsed, version) = export(&client, &url, &token).await;
            assert_eq!(lines, count as u64 + header_lines, "{format}: every event, once");
            println!(
                "export {format} ({version:?}, TLS): {count} events, {:.1} MB in {:.2} s: {:.0} events/s, {:.1} MB/s (first byte after {:.1} ms)",
                bytes as f64 / 1e6,
                elapsed.as_secs_f64(),
                rate(count as u64, elapsed),
                bytes as f64 / 1e6 / elapsed.as_secs_f64(),
                first.as_secs_f64() * 1e3
            );
        }
        let _ = stop.send(());
        let _ = server.await;
        if let Some(mib) = peak_rss_mib() {
            println!("peak resident memory of the bench process: {mib:.0} MiB");
        }
    });
}
