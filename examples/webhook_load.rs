//! A load generator for reply webhooks: how many signed `http-json` webhooks consentry takes per
//! second, end to end.
//!
//! It builds `--count` webhooks up front, each `{"id", "from", "to", "body"}` with its own
//! gateway id and (up to a million) its own sender number `+1415EEELLLL`, signed with
//! `X-Webhook-Signature: sha256=<HMAC-SHA256(secret, body)>`, then posts them to
//! `POST /v1/inbound/{upstream}` from `--concurrency` workers over keep-alive HTTP/1.1 TLS
//! connections. For a `STOP`, each answer comes after consentry has committed the opt-out and
//! sent the confirmation through the tenant's gateway, so the rate is opt-outs handled per
//! second. Every answer must be 200 `{"status":"received","duplicate":false}`; anything else is
//! an error. It prints a summary and a `RESULT key=value …` line for scripts
//! (`bench/webhooks.sh`), and exits 1 if there were errors.
//!
//! ```text
//! WEBHOOK_SECRET=… cargo run --release --example webhook_load -- \
//!   --url https://127.0.0.1:18443/v1/inbound/gw --secret-env WEBHOOK_SECRET \
//!   --ca consentry-data/tls/cert.pem --count 20000 --concurrency 32
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Command line of the webhook load generator.
#[derive(Parser, Debug)]
#[command(about = "Posts signed http-json reply webhooks to consentry and reports the rate")]
struct Args {
    /// The webhook endpoint, `https://HOST:PORT/v1/inbound/UPSTREAM`.
    #[arg(long)]
    url: Uri,
    /// The environment variable holding the upstream's `webhook_secret`.
    #[arg(long)]
    secret_env: String,
    /// The number written to: one of the tenant's senders.
    #[arg(long, default_value = "+12025550100")]
    to: String,
    /// PEM certificate(s) to trust, e.g. `<data_dir>/tls/cert.pem`.
    #[arg(long)]
    ca: PathBuf,
    /// Webhooks to send.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Requests in flight (and connections).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The reply text.
    #[arg(long, default_value = "STOP")]
    body: String,
    /// Prefix of the gateway message ids; defaults to one unique to this run.
    #[arg(long)]
    id_prefix: Option<String>,
    /// Seconds before a request counts as failed.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What one worker saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.count == 0 || args.concurrency == 0 {
        bail!("--count and --concurrency must be above zero");
    }
    let secret = std::env::var(&args.secret_env)
        .with_context(|| format!("the environment variable {} is not set", args.secret_env))?;
    let client = client(&args)?;

    let prefix = args.id_prefix.clone().unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!("load-{}", now.as_micros())
    });
    // Round-robin into one queue per worker, all built and signed before the clock starts.
    let mut queues: Vec<Vec<Request<Full<Bytes>>>> = (0..args.concurrency)
        .map(|_| Vec::with_capacity(args.count / args.concurrency + 1))
        .collect();
    for i in 0..args.count {
        let body = serde_json::json!({
            "id": format!("{prefix}-{i}"),
            "from": format!("+1415{:03}{:04}", 200 + (i / 10_000) % 100, i % 10_000),
            "to": args.to,
            "body": args.body,
        })
        .to_string();
        let signature = consentry::dialect::generic::sign(secret.as_bytes(), body.as_bytes());
        let request = Request::builder()
            .method(Method::POST)
            .uri(args.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(consentry::dialect::generic::SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)))?;
        queues[i % args.concurrency].push(request);
    }

    let timeout = Duration::from_secs(args.timeout);
    let started = Instant::now();
    let workers: Vec<_> = queues
        .into_iter()
        .map(|queue| tokio::spawn(worker(client.clone(), queue, timeout)))
        .collect();
    let mut total = Tally::default();
    for worker in workers {
        let tally = worker.await?;
        total.latencies.extend(tally.latencies);
        total.errors += tally.errors;
        total.first_error = total.first_error.or(tally.first_error);
    }
    let elapsed = started.elapsed().as_secs_f64();

    total.latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((total.latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        total.latencies[index].as_secs_f64() * 1000.0
    };
    let (p50, p99) = (percentile(0.50), percentile(0.99));
    let rate = args.count as f64 / elapsed;
    println!(
        "webhooks: {} sent, {} errors, {elapsed:.2} s, {rate:.1} webhooks/s, \
         p50 {p50:.2} ms, p99 {p99:.2} ms ({} in flight, body {:?})",
        args.count, total.errors, args.concurrency, args.body
    );
    println!(
        "RESULT total={} errors={} elapsed_s={elapsed:.3} rate={rate:.1} p50_ms={p50:.2} p99_ms={p99:.2}",
        args.count, total.errors
    );
    if let Some(error) = total.first_error {
        eprintln!("webhook_load: first error: {error}");
        std::process::exit(1);
    }
    Ok(())
}

/// An HTTP/1.1 client over TLS that trusts only `--ca`, with up to `--concurrency` keep-alive
/// connections.
fn client(args: &Args) -> anyhow::Result<HttpsClient> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca)
        .with_context(|| format!("reading {}", args.ca.display()))?
    {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency)
        .build(https))
}

/// Sends a queue of webhooks one after the other, reading each answer to the end.
async fn worker(client: HttpsClient, queue: Vec<Request<Full<Bytes>>>, timeout: Duration) -> Tally {
    let mut tally = Tally {
        latencies: Vec::with_capacity(queue.len()),
        ..Tally::default()
    };
    for request in queue {
        let sent = Instant::now();
        let outcome = tokio::time::timeout(timeout, async {
            let response = client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        })
        .await;
        tally.latencies.push(sent.elapsed());
        let error = match outcome {
            Err(_) => Some(format!("no answer within {timeout:?}")),
            Ok(Err(error)) => Some(format!("{error:#}")),
            Ok(Ok((status, body))) => {
                let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                (status != StatusCode::OK
                    || answer["status"] != "received"
                    || answer["duplicate"] != false)
                    .then(|| format!("{status}: {}", String::from_utf8_lossy(&body)))
            }
        };
        if let Some(error) = error {
            tally.errors += 1;
            tally.first_error.get_or_insert(error);
        }
    }
    tally
}
