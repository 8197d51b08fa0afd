//! The `consentry` command: parse the command line, load the configuration, and hand over to
//! the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use consentry::auth::{DevClaims, mint_dev_token};
use consentry::config::{ConfigError, DEFAULT_AUDIENCE, DEV_ISSUER};
use consentry::datadir::DataDir;
use consentry::policy::rules::PolicySet;
use consentry::{App, Config};

/// Prints a line of the start-up banner. A closed stdout must not stop the server, so write
/// errors are ignored (`println!` would panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "consentry",
    version,
    about = "A consent-aware TLS proxy for A2P SMS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consent records: import a file into a running consentry.
    Consents {
        #[command(subcommand)]
        command: ConsentsCommand,
    },
    /// Run the proxy. With no --config it runs on embedded defaults, ready to try.
    Serve {
        /// The configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The data folder (certificate, keys, SQLite database).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The TLS API address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// The plain-HTTP admin address (health, readiness).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// The database URL (`sqlite://path` or `postgres://user@host/db`), over the file's.
        #[arg(long)]
        database: Option<String>,
    },
    /// Print a development token, signed with the data folder's key, on stdout alone.
    Token {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        sub: String,
        /// Space-separated scopes, e.g. "messages:send messages:read".
        #[arg(long)]
        scope: String,
        /// Lifetime, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Read the data folder from this configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file (or the embedded defaults) and say what is wrong.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The payload key ring.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Messages: the ones in doubt after a crash.
    Messages {
        #[command(subcommand)]
        command: MessagesCommand,
    },
    /// The verifiable log: verify it, export it, show its public key.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// A witness for consentry logs (C2SP tlog-witness), for another operator to run: it
    /// cosigns a log's checkpoints only while each extends the last one it cosigned.
    Witness {
        #[command(subcommand)]
        command: WitnessCommand,
    },
    /// Hash an SMPP account's password for `[[smpp.accounts]].password_hash`. Reads the
    /// password (at most 8 characters, as SMPP 3.4 carries) from the first line of stdin.
    SmppPassword,
}

fn smpp_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() || password.len() > 8 || !password.is_ascii() {
        anyhow::bail!("an SMPP 3.4 password is 1 to 8 ASCII characters");
    }
    let hash =
        consentry::smpp::accounts::hash_password(password, consentry::smpp::accounts::ITERATIONS)
            .map_err(|why| anyhow::anyhow!(why))?;
    println!("{hash}");
    Ok(())
}

#[derive(Subcommand)]
enum WitnessCommand {
    /// Run the witness (its key is made in its state folder on first start).
    Serve {
        /// The witness's configuration (TOML: name, listen, state_dir, [[logs]]).
        #[arg(long)]
        config: PathBuf,
        /// The address to listen on, over the file's.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Print the witness's verifier key (`name+keyid+base64`): logs and auditors configure it.
    Vkey {
        #[arg(long)]
        config: PathBuf,
    },
}

/// Where the data is: the same options as `serve`.
#[derive(clap::Args, Clone)]
struct Place {
    /// The configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data folder.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The database URL, over the file's.
    #[arg(long)]
    database: Option<String>,
}

#[derive(Subcommand)]
enum ConsentsCommand {
    /// Streams a CSV or NDJSON file of consent events to POST /v1/consents/import on a running
    /// consentry, with a progress bar on a terminal; prints the import's summary (JSON).
    Import {
        /// The file: `.csv` is read as CSV, anything else as NDJSON (or say --format).
        file: PathBuf,
        /// consentry's API.
        #[arg(long, default_value = "https://localhost:8443")]
        url: String,
        /// A token with the scope consents:write.
        #[arg(long, env = "CONSENTRY_TOKEN", hide_env_values = true)]
        token: String,
        /// Trust this CA or self-signed certificate (PEM) for the API, instead of the public roots.
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// `csv` or `ndjson`, when the file's name does not say.
        #[arg(long)]
        format: Option<String>,
        /// The file is a carrier's number deactivation file (`number`, `deactivated_at`,
        /// optionally `carrier`), sent to POST /v1/consents/deactivations: each line voids the
        /// consents given before it.
        #[arg(long)]
        deactivations: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new data key and retire the others (they still open what they sealed). Running
    /// instances switch to it at their next reservation of seals.
    Rotate {
        #[command(flatten)]
        place: Place,
    },
}

#[derive(Subcommand)]
enum MessagesCommand {
    /// List, one JSON object a line, the messages in doubt: allowed (as they were sent, or
    /// when they came due) with no gateway answer recorded. An instance stopped between the
    /// two (killed, crashed, its disk failing), so the gateway may or may not have them: look
    /// them up there before sending them again. Safe while instances run.
    InDoubt {
        #[command(flatten)]
        place: Place,
        /// How far back to look, e.g. 24h, 30m.
        #[arg(long, default_value = "24h")]
        since: String,
        /// Leave out what was allowed this recently: it may still be on its way to the gateway.
        #[arg(long, default_value = "2m")]
        settle: String,
        /// At most this many lines.
        #[arg(long, default_value_t = 10_000)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the log. Online (the default): against the database (and the checkpoints you
    /// kept, with --checkpoint). Offline: --export with --checkpoint, --bundle, or
    /// --consistency with --old-checkpoint and --checkpoint; all need --public-key.
    Verify {
        #[command(flatten)]
        place: Place,
        /// An export written by `consentry audit export`.
        #[arg(long, requires = "checkpoint")]
        export: Option<PathBuf>,
        /// Checkpoints (JSON: one, a list, or one per line): for --export, the ones to check it
        /// against; online, ones you kept, checked as the database's own; for --consistency,
        /// the newer one.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// A consistency proof from GET /v1/audit/proofs/consistency.
        #[arg(long, requires_all = ["checkpoint", "old_checkpoint"], conflicts_with_all = ["export", "bundle"])]
        consistency: Option<PathBuf>,
        /// For --consistency: the older checkpoint you kept.
        #[arg(long)]
        old_checkpoint: Option<PathBuf>,
        /// A number's bundle from GET /v1/audit/numbers/{number}/bundle.
        #[arg(long, conflicts_with = "export")]
        bundle: Option<PathBuf>,
        /// The log's public key (base64 of the 32-byte Ed25519 key). Online, the default is
        /// the configured signing key's.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// A witness you rely on, by its verifier key (`name+keyid+base64`, as `consentry
        /// witness vkey` prints it); repeat for each. With witnesses, the log verifies only if
        /// its checkpoints are cosigned by --quorum of them.
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// How many of the witnesses must have cosigned a checkpoint (default: all).
        #[arg(long)]
        quorum: Option<usize>,
        /// Seconds a checkpoint may wait for its cosignatures, counted back from the newest
        /// checkpoint; an older one larger than every witnessed one fails.
        #[arg(long, default_value_t = 60)]
        witness_grace: u64,
        /// The log's origin line, as its witnesses know it. Default: the checkpoint file's, or
        /// online the configured one.
        #[arg(long)]
        origin: Option<String>,
        /// Also ask this `consentry witness` (its URL) for the latest checkpoint it cosigned:
        /// the log must hold that tree, or it was truncated or rewritten since. Repeat for
        /// each; needs --witness. For the whole log (online or --export).
        #[arg(long = "ask-witness", requires = "witnesses")]
        ask_witnesses: Vec<String>,
    },
    /// Write the whole log (every leaf, in order) as NDJSON, and its checkpoints.
    Export {
        #[command(flatten)]
        place: Place,
        /// Where to write the leaves.
        #[arg(long)]
        out: PathBuf,
        /// Where to write the checkpoints (a JSON list).
        #[arg(long)]
        checkpoints: PathBuf,
    },
    /// Print the log's public key (base64), for auditors to pin.
    PublicKey {
        #[command(flatten)]
        place: Place,
    },
    /// Print the log's origin: its name in the checkpoints witnesses cosign.
    Origin {
        #[command(flatten)]
        place: Place,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            data_dir,
            listen,
            admin_listen,
            database,
        } => serve(config.as_deref(), data_dir, listen, admin_listen, database),
        Command::Token {
            tenant,
            sub,
            scope,
            ttl,
            data_dir,
            config,
        } => token(&tenant, &sub, &scope, &ttl, data_dir, config.as_deref()),
        Command::Check { config } => check(config.as_deref()),
        Command::SmppPassword => smpp_password(),
        Command::Keys {
            command: KeysCommand::Rotate { place },
        } => rotate_keys(&place),
        Command::Audit { command } => audit(command),
        Command::Messages {
            command:
                MessagesCommand::InDoubt {
                    place,
                    since,
                    settle,
                    limit,
                },
        } => in_doubt(&place, &since, &settle, limit),
        Command::Witness { command } => witness(command),
        Command::Consents {
            command:
                ConsentsCommand::Import {
                    file,
                    url,
                    token,
                    cacert,
                    format,
                    deactivations,
                },
        } => {
            let path = if deactivations {
                "/v1/consents/deactivations"
            } else {
                "/v1/consents/import"
            };
            import_consents(
                &file,
                &url,
                path,
                &token,
                cacert.as_deref(),
                format.as_deref(),
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("consentry: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration a command works on, with its overrides.
fn place_config(place: &Place) -> anyhow::Result<Config> {
    let mut config = load_config(place.config.as_deref())?;
    if let Some(dir) = &place.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(url) = &place.database {
        config.database.url = Some(url.clone());
    }
    Ok(config)
}

fn rotate_keys(place: &Place) -> anyhow::Result<()> {
    let config = place_config(place)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let data = DataDir::open(&config.data_dir)?;
        let kek = consentry::app::payload_key(&data, &config)?;
        let store = consentry::store::open(&config.database_url()).await?;
        let now = jiff::Timestamp::now().as_microsecond();
        let ring = consentry::keyring::KeyRing::load(store, &kek, now).await?;
        let id = ring.add_data_key(now, true).await?;
        say!("{id}");
        eprintln!(
            "consentry: new data key {id}; the others are retired and still open what they sealed"
        );
        Ok(())
    })
}

fn in_doubt(place: &Place, since: &str, settle: &str, limit: i64) -> anyhow::Result<()> {
    let duration = |flag: &str, text: &str| -> anyhow::Result<jiff::SignedDuration> {
        let duration: jiff::SignedDuration = text
            .parse()
            .with_context(|| format!("--{flag} {text:?}: use a duration such as 24h or 30m"))?;
        anyhow::ensure!(!duration.is_negative(), "--{flag} must not be negative");
        Ok(duration)
    };
    let (since, settle) = (duration("since", since)?, duration("settle", settle)?);
    anyhow::ensure!(limit > 0, "--limit must be positive");
    let config = place_config(place)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = consentry::store::open(&config.database_url()).await?;
        let now = jiff::Timestamp::now();
        let found = store
            .in_doubt(
                (now - since).as_microsecond(),
                (now - settle).as_microsecond(),
                limit,
            )
            .await?;
        for message in &found {
            let allowed_at = jiff::Timestamp::from_microsecond(message.allowed_at_us)
                .map(|at| at.to_string())
                .unwrap_or_default();
            say!(
                "{}",
                serde_json::json!({
                    "id": message.id,
                    "tenant": message.tenant,
                    "allowed_at": allowed_at,
                    "allowed_by": message.allowed_by,
                })
            );
        }
        eprintln!(
            "consentry: {} message(s) in doubt, allowed between {} and {} with no gateway \
             answer recorded{}",
            found.len(),
            now - since,
            now - settle,
            if found.len() as i64 == limit {
                " (the limit: there may be more)"
            } else {
                ""
            }
        );
        Ok(())
    })
}

fn audit(command: AuditCommand) -> anyhow::Result<()> {
    use base64::Engine as _;
    use consentry::audit::verify;
    let runtime = tokio::runtime::Runtime::new()?;
    let read_key = |path: &Path| -> anyhow::Result<Vec<u8>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .with_context(|| format!("{}: not base64", path.display()))
    };
    match command {
        AuditCommand::PublicKey { place } => {
            let config = place_config(&place)?;
            let data = DataDir::open(&config.data_dir)?;
            let signer = consentry::app::log_signer(&data, &config.log)?;
            say!(
                "{}",
                base64::engine::general_purpose::STANDARD.encode(signer.public_key())
            );
            Ok(())
        }
        AuditCommand::Origin { place } => {
            let config = place_config(&place)?;
            let data = DataDir::open(&config.data_dir)?;
            let signer = consentry::app::log_signer(&data, &config.log)?;
            say!("{}", signer.origin());
            Ok(())
        }
        AuditCommand::Export {
            place,
            out,
            checkpoints,
        } => {
            let config = place_config(&place)?;
            runtime.block_on(async {
                let store = consentry::store::open(&config.database_url()).await?;
                let data = DataDir::open(&config.data_dir)?;
                let signer = consentry::app::log_signer(&data, &config.log)?;
                let bar = progress_bar(store.log_size().await.ok(), "exporting");
                let written = consentry::audit::export(
                    &*store,
                    signer.origin(),
                    &out,
                    &checkpoints,
                    &|done| bar.set_position(done),
                )
                .await;
                bar.finish_and_clear();
                let written = written?;
                eprintln!("consentry: {written} leaves written to {}", out.display());
                Ok(())
            })
        }
        AuditCommand::Verify {
            place,
            export,
            checkpoint,
            bundle,
            public_key,
            consistency,
            old_checkpoint,
            witnesses,
            quorum,
            witness_grace,
            origin,
            ask_witnesses,
        } => {
            // The witness policy, once the log's origin is known.
            let policy = |origin: Option<String>| -> anyhow::Result<Option<verify::WitnessPolicy>> {
                if witnesses.is_empty() {
                    anyhow::ensure!(quorum.is_none(), "--quorum needs --witness");
                    return Ok(None);
                }
                let keys = witnesses
                    .iter()
                    .map(|text| consentry::audit::note::WitnessKey::from_vkey(text))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("--witness: {e}"))?;
                Ok(Some(verify::WitnessPolicy {
                    origin: origin.context(
                        "--witness needs the log's origin: give --origin (`consentry audit \
                         origin` prints it)",
                    )?,
                    quorum: quorum.unwrap_or(keys.len()),
                    witnesses: keys,
                    grace_us: i64::try_from(witness_grace)
                        .unwrap_or(i64::MAX / 1_000_000)
                        .saturating_mul(1_000_000),
                    heads: Vec::new(),
                }))
            };
            let file_origin = |path: Option<&Path>| -> anyhow::Result<Option<String>> {
                match (&origin, path) {
                    (Some(origin), _) => Ok(Some(origin.clone())),
                    (None, Some(path)) => {
                        let text = std::fs::read_to_string(path)
                            .with_context(|| format!("cannot read {}", path.display()))?;
                        verify::read_origin(&text).map_err(|e| anyhow::anyhow!("{e}"))
                    }
                    (None, None) => Ok(None),
                }
            };
            let read_checkpoints =
                |path: &Path| -> anyhow::Result<Vec<consentry::audit::checkpoint::Checkpoint>> {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    verify::read_checkpoints(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
                };
            let one_checkpoint =
                |path: &Path| -> anyhow::Result<consentry::audit::checkpoint::Checkpoint> {
                    let mut all = read_checkpoints(path)?;
                    anyhow::ensure!(
                        all.len() == 1,
                        "{}: expected one checkpoint",
                        path.display()
                    );
                    Ok(all.remove(0))
                };
            let offline_key = || -> anyhow::Result<Vec<u8>> {
                read_key(
                    public_key
                        .as_deref()
                        .context("offline verification needs --public-key")?,
                )
            };
            let outcome: Result<String, verify::Failure> = if let Some(proof) = consistency {
                let old = one_checkpoint(old_checkpoint.as_deref().context("--old-checkpoint")?)?;
                let new = one_checkpoint(checkpoint.as_deref().context("--checkpoint")?)?;
                let text = std::fs::read_to_string(&proof)
                    .with_context(|| format!("cannot read {}", proof.display()))?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not JSON", proof.display()))?;
                verify::verify_consistency_proof(&value, &old, &new, &offline_key()?).map(|()| {
                    format!(
                        "the tree of {} leaves extends the tree of {}",
                        new.tree_size, old.tree_size
                    )
                })
            } else if let Some(bundle) = bundle {
                let text = std::fs::read_to_string(&bundle)
                    .with_context(|| format!("cannot read {}", bundle.display()))?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not JSON", bundle.display()))?;
                let policy = policy(match &origin {
                    Some(origin) => Some(origin.clone()),
                    None => value["checkpoint"]["origin"].as_str().map(str::to_owned),
                })?;
                verify::verify_bundle(&value, &offline_key()?, policy.as_ref()).map(|report| {
                    format!(
                        "{} rows proven in the log{}{}",
                        report.proven,
                        if policy.is_some() {
                            ", its checkpoint witnessed"
                        } else {
                            ""
                        },
                        if report.chained {
                            ", every leaf linked to the one before it"
                        } else {
                            "; links not checked: a list is as long as a bundle's lists may be \
                             (page through the number's rows)"
                        }
                    )
                })
            } else if let Some(export) = export {
                let checkpoint = checkpoint.context("--export needs --checkpoint")?;
                let checkpoints = read_checkpoints(&checkpoint)?;
                let mut policy = policy(file_origin(Some(&checkpoint))?)?;
                if let Some(policy) = &mut policy {
                    ask(&runtime, &ask_witnesses, policy, &offline_key()?)?;
                }
                let file = std::fs::File::open(&export)
                    .with_context(|| format!("cannot read {}", export.display()))?;
                use std::io::BufRead as _;
                let bar = progress_bar(checkpoints.last().map(|c| c.tree_size), "verifying");
                let outcome = verify::verify_export(
                    std::io::BufReader::new(file).lines(),
                    checkpoints,
                    &offline_key()?,
                    policy.as_ref(),
                    &|done| bar.set_position(done),
                )
                .map(|report| describe(&report));
                bar.finish_and_clear();
                outcome
            } else {
                let config = place_config(&place)?;
                // An auditor with --public-key needs no signing key (and must not get one made).
                let key = match &public_key {
                    Some(path) => read_key(path)?,
                    None => {
                        let data = DataDir::open(&config.data_dir)?;
                        consentry::app::log_signer(&data, &config.log)?
                            .public_key()
                            .to_vec()
                    }
                };
                let log_origin = origin
                    .clone()
                    .or_else(|| config.log.origin.clone())
                    .unwrap_or_else(|| consentry::audit::checkpoint::default_origin(&key));
                let mut policy = policy(Some(log_origin))?;
                if let Some(policy) = &mut policy {
                    ask(&runtime, &ask_witnesses, policy, &key)?;
                }
                let pinned = match &checkpoint {
                    Some(path) => read_checkpoints(path)?,
                    None => Vec::new(),
                };
                runtime.block_on(async {
                    let store = consentry::store::open(&config.database_url()).await?;
                    let bar = progress_bar(store.log_size().await.ok(), "verifying");
                    let outcome =
                        verify::verify_store(&*store, &key, pinned, policy.as_ref(), &|done| {
                            bar.set_position(done)
                        })
                        .await
                        .map(|report| describe(&report));
                    bar.finish_and_clear();
                    anyhow::Ok(outcome)
                })?
            };
            match outcome {
                Ok(summary) => {
                    say!("ok: {summary}");
                    Ok(())
                }
                Err(failure) => {
                    say!("FAILED: {failure}");
                    Err(anyhow::anyhow!("the log does not verify"))
                }
            }
        }
    }
}

/// `consentry consents import`: the file (consent events, or a deactivation file: `path`
/// says which endpoint) streamed to the API as it is read, never whole in
/// memory, the bar moving with the bytes sent.
fn import_consents(
    file: &Path,
    url: &str,
    path: &str,
    token: &str,
    cacert: Option<&Path>,
    format: Option<&str>,
) -> anyhow::Result<()> {
    let content_type = match format.map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => "text/csv",
        Some("ndjson") => "application/x-ndjson",
        Some(other) => anyhow::bail!("--format {other:?}: use csv or ndjson"),
        None if file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv")) =>
        {
            "text/csv"
        }
        None => "application/x-ndjson",
    };
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = consentry::upstream::client_tls_config(cacert).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        let client: hyper_util::client::legacy::Client<_, FileBody> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        let bar = bytes_bar(size);
        let body = FileBody {
            file: tokio::fs::File::open(file)
                .await
                .with_context(|| format!("cannot read {}", file.display()))?,
            buffer: vec![0; 256 * 1024],
            bar: bar.clone(),
        };
        let request = http::Request::post(format!("{}{path}", url.trim_end_matches('/')))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, size)
            .body(body)?;
        let response = client.request(request).await;
        bar.finish_and_clear();
        let response = response.with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let answer = http_body_util::BodyExt::collect(response.into_body())
            .await
            .context("the answer was cut")?
            .to_bytes();
        let text = String::from_utf8_lossy(&answer);
        if !status.is_success() {
            anyhow::bail!("the import was refused ({status}): {text}");
        }
        say!("{text}");
        Ok(())
    })
}

/// A file sent as a request body in chunks, moving a progress bar by the bytes sent.
struct FileBody {
    file: tokio::fs::File,
    buffer: Vec<u8>,
    bar: indicatif::ProgressBar,
}

impl http_body::Body for FileBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        use tokio::io::AsyncRead as _;
        let this = self.get_mut();
        let mut read = tokio::io::ReadBuf::new(&mut this.buffer);
        match std::pin::Pin::new(&mut this.file).poll_read(cx, &mut read) {
            std::task::Poll::Ready(Ok(())) if read.filled().is_empty() => {
                std::task::Poll::Ready(None)
            }
            std::task::Poll::Ready(Ok(())) => {
                let chunk = bytes::Bytes::copy_from_slice(read.filled());
                this.bar.inc(chunk.len() as u64);
                std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            std::task::Poll::Ready(Err(error)) => std::task::Poll::Ready(Some(Err(error))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// A progress bar over bytes, on a terminal only.
fn bytes_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} {wide_bar} {bytes}/{total_bytes}, {bytes_per_sec}, {eta} left",
    ) {
        bar.set_style(style);
    }
    bar.set_message("importing");
    bar
}

/// A progress bar on stderr for long work over the log's leaves; drawn only when stderr is a
/// terminal (indicatif hides it otherwise), so pipes and logs stay clean.
fn progress_bar(total: Option<u64>, what: &'static str) -> indicatif::ProgressBar {
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total),
        None => indicatif::ProgressBar::no_length(),
    };
    let template = if total.is_some() {
        "{msg} {wide_bar} {pos}/{len} leaves, {per_sec}, {eta} left"
    } else {
        "{msg} {spinner} {pos} leaves, {per_sec}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

fn describe(report: &consentry::audit::verify::Report) -> String {
    let unsigned = report.leaves - report.signed;
    format!(
        "{} leaves, {} checkpoints match, root {}, {} decisions replayed{}{}",
        report.leaves,
        report.checkpoints,
        consentry::crypto::hex(&report.root),
        report.replayed,
        if unsigned > 0 {
            format!("; the last {unsigned} leaves are not covered by a checkpoint yet")
        } else {
            String::new()
        },
        match report.witnessed {
            Some(size) => format!("; witnessed up to {size} leaves"),
            None => String::new(),
        }
    )
}

/// Asks each witness at `urls` for the latest checkpoint of the policy's log it cosigned, and
/// adds it to the policy's heads (`audit verify --ask-witness`).
fn ask(
    runtime: &tokio::runtime::Runtime,
    urls: &[String],
    policy: &mut consentry::audit::verify::WitnessPolicy,
    log_key: &[u8],
) -> anyhow::Result<()> {
    use http_body_util::BodyExt as _;
    if urls.is_empty() {
        return Ok(());
    }
    let client = consentry::upstream::https_client(None, std::time::Duration::from_secs(5))
        .map_err(anyhow::Error::msg)?;
    // The origin in a query: letters, digits and `-._~/` as they are, the rest escaped.
    let origin: String = policy
        .origin
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    for url in urls {
        let address = format!("{}/checkpoint?origin={origin}", url.trim_end_matches('/'));
        let asked = runtime
            .block_on(async {
                let request = http::Request::get(&address)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .context("not a URL")?;
                let response = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    client.request(request),
                )
                .await
                .with_context(|| format!("{address}: no answer in 10 s"))?
                .with_context(|| format!("{address}: the witness cannot be reached"))?;
                let status = response.status();
                // A checkpoint with its signatures is a few hundred bytes.
                let body = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                    .collect()
                    .await
                    .map_err(|e| anyhow::anyhow!("{address}: the answer did not read: {e}"))?
                    .to_bytes();
                let text = String::from_utf8_lossy(&body).into_owned();
                anyhow::ensure!(status.is_success(), "{address}: {status}: {}", text.trim());
                anyhow::Ok(text)
            })
            .and_then(|text| {
                consentry::audit::verify::witnessed_head(&text, log_key, policy)
                    .map_err(anyhow::Error::msg)
            });
        match asked {
            Ok(head) => policy.heads.push(head),
            // What the witness shows, or that it cannot be asked, is the verification's
            // answer: printed as every other failure is.
            Err(error) => {
                say!("FAILED: witness {url}: {error:#}");
                anyhow::bail!("the log does not verify");
            }
        }
    }
    Ok(())
}

/// `consentry witness`.
fn witness(command: WitnessCommand) -> anyhow::Result<()> {
    use consentry::witness::{self, WitnessConfig};
    match command {
        WitnessCommand::Vkey { config } => {
            let config = WitnessConfig::load(&config)?;
            let pair = witness::load_key(&config.state_dir)?;
            say!("{}", witness::public_key(&config, &pair).vkey());
            Ok(())
        }
        WitnessCommand::Serve { config, listen } => {
            let mut config = WitnessConfig::load(&config)?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.listen))?;
                let pair = witness::load_key(&config.state_dir)?;
                say!(
                    "consentry witness {} on http://{}",
                    witness::public_key(&config, &pair).vkey(),
                    listener.local_addr()?
                );
                witness::serve(config, listener, shutdown_signal()).await
            })
        }
    }
}

/// Reads the configuration and loads the policies it names, so that a bad policy file stops
/// every command as a bad field does (`config` does not know the policy files' rules).
fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let config = match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded(),
    };
    PolicySet::load(&config.policies).map_err(|ConfigError(message)| match path {
        Some(path) => ConfigError(format!("{}: {message}", path.display())),
        None => ConfigError(message),
    })?;
    Ok(config)
}

fn serve(
    config_path: Option<&Path>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    database: Option<String>,
) -> anyhow::Result<()> {
    // The command line's overrides, applied to the file at start and at each reload.
    let overrides = move |mut config: Config| {
        if let Some(dir) = &data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(address) = listen {
            config.server.listen = address;
        }
        if let Some(address) = admin_listen {
            config.server.admin_listen = address;
        }
        if let Some(url) = &database {
            config.database.url = Some(url.clone());
        }
        config
    };
    let config = overrides(load_config(config_path)?);
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.logging.format {
        consentry::config::LogFormat::Text => logs.init(),
        // One object a line; the request's span (its id) is in each line of a request.
        consentry::config::LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    let _ = rustls::crypto::ring::default_provider().install_default();

    let dev_issuer = config.jwt.dev_issuer;
    let tenant_example = config.tenants.first().cloned();

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let app = App::build(config.clone()).await?;
        let api = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let admin = tokio::net::TcpListener::bind(config.server.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.admin_listen))?;
        let smpp = match &config.smpp {
            Some(smpp) => Some(
                tokio::net::TcpListener::bind(smpp.listen)
                    .await
                    .with_context(|| format!("cannot listen on {} (smpp.listen)", smpp.listen))?,
            ),
            None => None,
        };
        let api_address = api.local_addr()?;
        let admin_address = admin.local_addr()?;

        say!("consentry {} is running", env!("CARGO_PKG_VERSION"));
        say!("  API (TLS):   https://{api_address}");
        say!("  admin:       http://{admin_address}  (/healthz, /readyz, /metrics)");
        if let (Some(listener), Some(smpp)) = (&smpp, &config.smpp) {
            let security = if smpp.tls { "TLS" } else { "plain, loopback" };
            say!("  SMPP:        {} ({security})", listener.local_addr()?);
        }
        say!("  certificate: {}", app.cert_path().display());
        say!("  SHA-256:     {}", app.fingerprint());
        if let (true, Some(tenant)) = (dev_issuer, tenant_example) {
            print_example(&app, api_address, &tenant, config_path);
        }
        tracing::info!(%api_address, %admin_address, "serving");
        let reloader = app.reloader();
        let file = config_path.map(Path::to_path_buf);
        tokio::spawn(reload_on_hangup(move || {
            let file = file.clone();
            (
                reloader.clone(),
                file.map(|path| load_config(Some(&path)).map(&overrides)),
            )
        }));
        app.run(consentry::Listeners { api, admin, smpp }, shutdown_signal())
            .await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Prints a token command and a curl line that work as printed.
fn print_example(
    app: &App,
    api_address: SocketAddr,
    tenant: &consentry::config::TenantConfig,
    config_path: Option<&Path>,
) {
    let program = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let cwd = std::env::current_dir().ok()?;
            Some(match exe.strip_prefix(&cwd) {
                Ok(relative) => format!("./{}", relative.display()),
                Err(_) => exe.display().to_string(),
            })
        })
        .unwrap_or_else(|| "consentry".into());
    let location = match config_path {
        Some(path) => format!("--config {}", shell_quote(&path.display().to_string())),
        None => format!(
            "--data-dir {}",
            shell_quote(&app.data_dir().display().to_string())
        ),
    };
    let host = if api_address.ip().is_loopback() && api_address.is_ipv4() {
        format!("localhost:{}", api_address.port())
    } else {
        api_address.to_string()
    };
    say!();
    say!("Try it:");
    say!(
        "  TOKEN=$({program} token {location} --tenant {} --sub demo-app --scope 'messages:send messages:read admin')",
        tenant.id
    );
    say!(
        "  curl --cacert {} https://{host}/v1/messages \\\n    -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\n    -d '{{\"to\": \"+1 415 555 0123\", \"from\": \"{}\", \"body\": \"Your code is 123456\", \"purpose\": \"transactional\"}}'",
        shell_quote(&app.cert_path().display().to_string()),
        tenant.senders[0]
    );
    say!(
        "  curl --cacert {} https://{host}/v1/sandbox/messages -H \"Authorization: Bearer $TOKEN\"",
        shell_quote(&app.cert_path().display().to_string())
    );
    say!();
}

fn shell_quote(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:=".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// On each SIGHUP, reads the configuration file again and applies it (`Reloader::reload`):
/// a file that does not read or build is refused, with the reason logged, and the running
/// configuration kept. `read` gives the reloader and the file as read, `None` when consentry
/// runs on its embedded defaults.
async fn reload_on_hangup(
    read: impl Fn() -> (
        std::sync::Arc<consentry::app::Reloader>,
        Option<anyhow::Result<Config>>,
    ),
) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangups.recv().await.is_some() {
            match read() {
                (reloader, Some(config)) => {
                    let _ = reloader.reload(config);
                }
                (_, None) => tracing::warn!(
                    "SIGHUP: consentry runs on its embedded defaults, there is no file to reload"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = read;
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing open requests");
}

fn token(
    tenant: &str,
    subject: &str,
    scope: &str,
    ttl: &str,
    data_dir: Option<PathBuf>,
    config_path: Option<&Path>,
) -> anyhow::Result<()> {
    let data_dir = match (data_dir, config_path) {
        (Some(dir), _) => dir,
        (None, Some(path)) => Config::load(path)?.data_dir,
        (None, None) => Config::embedded().data_dir,
    };
    let ttl: jiff::SignedDuration = ttl
        .parse()
        .with_context(|| format!("--ttl {ttl:?}: use a duration such as 1h, 30m or 7d"))?;
    if ttl.is_negative() || ttl.is_zero() {
        anyhow::bail!("--ttl must be positive");
    }
    consentry::domain::TenantId::parse(tenant).map_err(anyhow::Error::msg)?;
    // A mistyped folder would get a key of its own, and a token no server accepts.
    if !data_dir.is_dir() {
        anyhow::bail!(
            "no data folder at {}: start `consentry serve` with it first, or check --data-dir",
            data_dir.display()
        );
    }
    let key = DataDir::open(&data_dir)?.dev_jwt_key()?;
    let now = jiff::Timestamp::now().as_second();
    let claims = DevClaims {
        iss: DEV_ISSUER.into(),
        aud: DEFAULT_AUDIENCE.into(),
        sub: subject.into(),
        tenant: tenant.into(),
        scope: scope.into(),
        iat: now,
        nbf: now,
        exp: now + ttl.as_secs(),
    };
    println!("{}", mint_dev_token(&key.pkcs8, &claims)?);
    Ok(())
}

fn check(config_path: Option<&Path>) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    // Reads every key file and secret the configuration names, as serve would.
    let dev_key = config.jwt.dev_issuer.then_some([0u8; 32]);
    consentry::auth::Verifier::from_config(&config, dev_key.as_ref().map(|k| k.as_slice()))?;
    consentry::upstream::Upstreams::from_config(&config)?;
    let tenants = config.tenants()?;
    let policies = PolicySet::load(&config.policies)?;
    if let Some(smpp) = &config.smpp {
        consentry::smpp::accounts::Accounts::from_config(&smpp.accounts)
            .map_err(|why| anyhow::anyhow!(why))?;
    }
    println!(
        "configuration is valid: {} tenant(s), {} upstream(s) besides sandbox, {} issuer(s){}; \
         policies {}",
        tenants.len(),
        config.upstreams.len(),
        config.jwt.issuers.len(),
        if config.jwt.dev_issuer {
            " and the development issuer"
        } else {
            ""
        },
        policies.version
    );
    Ok(())
}
