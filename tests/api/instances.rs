//! Several instances on one PostgreSQL: two real `consentry serve` processes, started from
//! `examples/instances.toml` (docs/operators.md's example, with its paths and URLs replaced), on one
//! fresh schema, with the same keys and the same JWT issuer, each on its own ports, in front of
//! one fake gateway. What the gateway received is the verdict.
//!
//! These tests need PostgreSQL: without `CONSENTRY_TEST_DATABASE_URL` they return at once.
//! Real processes read the real clock; where the time of day would decide an outcome, the test
//! replaces the shipped hours rules through `[[policies.rules]]` (as an operator can), so it
//! passes at any hour.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

const BINARY: &str = env!("CARGO_BIN_EXE_consentry");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/instances.toml");
/// The example's issuer, key id, tenant, sender and upstream.
const ISSUER: &str = "https://auth.example.com/";
const KID: &str = "2026-11";
const TENANT: &str = "acme";
const SENDER: &str = "+12025550100";
const UPSTREAM: &str = "gateway";
const GATEWAY_TOKEN: &str = "instances-gateway-token-0123456789";
const WEBHOOK_SECRET: &str = "instances-webhook-secret-0123456789";
const SCOPES: &str = "messages:send messages:read consents:write consents:read";

/// Two consentry processes' shared setting: the configuration written from the example, the
/// schema, the fake gateway, a client that trusts the shared certificate and a token.
struct Cluster {
    _temp: tempfile::TempDir,
    config: PathBuf,
    /// The schema's URL (`search_path` set), for the instances and for checks.
    url: String,
    database: TestDatabase,
    gateway: FakeGateway,
    client: reqwest::Client,
    token: String,
}

/// A running `consentry serve`; killed when dropped.
struct Instance {
    child: Child,
    api: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.api.port())
    }

    /// The name of this process's sessions in `pg_stat_activity` (PgStore's default).
    fn application_name(&self) -> String {
        format!("consentry-{}", self.child.id())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Replaces `from` with `to` in `text`, which must contain it (an example edited out of
/// step with the test fails here, not later).
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "examples/instances.toml has no {from:?}"
    );
    text.replace(from, to)
}

fn random_key() -> String {
    use base64::Engine as _;
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).unwrap();
    base64::engine::general_purpose::STANDARD.encode(key)
}

impl Cluster {
    /// `None` without PostgreSQL. `extra` is appended to the configuration (policy rules).
    async fn new(extra: &str) -> Option<Cluster> {
        if postgres_base_url().is_none() {
            eprintln!("skipped: CONSENTRY_TEST_DATABASE_URL is not set");
            return None;
        }
        let temp = tempfile::tempdir().unwrap();
        let folder = temp.path().to_path_buf();
        let database = TestDatabase::for_folder(&folder);
        database.prepare(&folder).await;
        let TestDatabase::Postgres(url) = database.clone() else {
            unreachable!("a PostgreSQL URL is set")
        };
        let gateway = FakeGateway::start().await;

        // What the example expects under /etc/consentry: one certificate, the two keys and
        // the issuer's public key, the same for every instance.
        let etc = folder.join("etc");
        for dir in ["tls", "keys", "jwt"] {
            std::fs::create_dir_all(etc.join(dir)).unwrap();
        }
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = certified.cert.pem();
        std::fs::write(etc.join("tls/fullchain.pem"), &cert).unwrap();
        std::fs::write(
            etc.join("tls/privkey.pem"),
            certified.key_pair.serialize_pem(),
        )
        .unwrap();
        std::fs::write(etc.join("keys/number.key"), random_key()).unwrap();
        std::fs::write(etc.join("keys/payload.key"), random_key()).unwrap();
        let signing =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        std::fs::write(
            etc.join("keys/log-signing.pk8.b64"),
            base64::engine::general_purpose::STANDARD.encode(signing.as_ref()),
        )
        .unwrap();
        std::fs::write(
            etc.join("jwt/issuer-2026-11.pem"),
            fixture("rsa-public.pem"),
        )
        .unwrap();

        let example = std::fs::read_to_string(EXAMPLE).unwrap();
        let text = replace(&example, "/etc/consentry/", &format!("{}/", etc.display()));
        let text = replace(
            &text,
            "/var/lib/consentry",
            &folder.join("data").display().to_string(),
        );
        let text = replace(
            &text,
            "postgres://consentry@db.internal:5432/consentry",
            &url,
        );
        let text = replace(&text, "https://sms.example.com/v1/send", &gateway.url());
        let config = folder.join("instances.toml");
        std::fs::write(&config, format!("{text}\n{extra}")).unwrap();

        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header {
                kid: Some(KID.into()),
                ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256)
            },
            &claims(ISSUER, TENANT, SCOPES),
            &jsonwebtoken::EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap(),
        )
        .unwrap();
        Some(Cluster {
            _temp: temp,
            config,
            url,
            database,
            gateway,
            client: client(cert.as_bytes(), None),
            token,
        })
    }

    /// Starts `consentry serve` on this configuration, on ports of its own; `database`
    /// replaces the configured URL (`--database`).
    async fn start(&self, database: Option<&str>) -> Instance {
        let config = self.config.clone();
        let database = database.map(str::to_owned);
        tokio::task::spawn_blocking(move || start_instance(&config, database.as_deref()))
            .await
            .unwrap()
    }

    async fn post(&self, url: String, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(url)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Records written consent for `number` through `instance`.
    async fn opt_in(&self, instance: &Instance, number: &str) {
        let (status, body) = self
            .post(instance.url("/v1/consents"), &written_opt_in(number))
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// The recipient `number` replies STOP through the gateway's webhook on `instance`; returns
    /// the webhook's status.
    async fn stop(&self, instance: &Instance, number: &str, id: &str) -> u16 {
        let body = json!({ "id": id, "from": number, "to": SENDER, "body": "STOP" }).to_string();
        self.client
            .post(instance.url(&format!("/v1/inbound/{UPSTREAM}")))
            .header(
                "x-webhook-signature",
                consentry::dialect::generic::sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn send(
        &self,
        instance: &Instance,
        number: &str,
        purpose: &str,
        text: &str,
    ) -> (u16, Value) {
        let message = json!({ "to": number, "from": SENDER, "body": text, "purpose": purpose });
        self.post(instance.url("/v1/messages"), &message).await
    }

    /// The gateway's requests whose body starts with `prefix`.
    fn received(&self, prefix: &str) -> Vec<GatewayRequest> {
        self.gateway
            .requests()
            .into_iter()
            .filter(|request| {
                request.body["body"]
                    .as_str()
                    .is_some_and(|body| body.starts_with(prefix))
            })
            .collect()
    }
}

fn start_instance(config: &Path, database: Option<&str>) -> Instance {
    let folder = config.parent().unwrap();
    let log = folder.join(format!("instance-{}.log", uuid_like()));
    let mut command = Command::new(BINARY);
    command.args(["serve", "--config"]).arg(config).args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    if let Some(database) = database {
        command.args(["--database", database]);
    }
    let mut child = command
        .env("GATEWAY_TOKEN", GATEWAY_TOKEN)
        .env("GATEWAY_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut instance = Instance {
        child,
        api: "0.0.0.0:0".parse().unwrap(),
        admin: "0.0.0.0:0".parse().unwrap(),
        log,
    };
    let mut lines = BufReader::new(stdout).lines();
    let (mut api, mut admin) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(address) = line.trim().strip_prefix("API (TLS):   https://") {
            api = Some(address.parse().unwrap());
        }
        if let Some(rest) = line.trim().strip_prefix("admin:       http://") {
            admin = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
        }
        if api.is_some() && admin.is_some() {
            break;
        }
    }
    let (Some(api), Some(admin)) = (api, admin) else {
        panic!("consentry did not start:\n{}", instance.log());
    };
    // Keep reading what the server prints, so it never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    instance.api = api;
    instance.admin = admin;
    instance
}

/// A name for a log file, unique within the folder.
fn uuid_like() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A distinct valid US number for each `index` (San Francisco, no hours for non-marketing).
fn number(index: usize) -> String {
    format!("+1415{:03}{:04}", 200 + index / 10_000, index % 10_000)
}

/// One round: written consent (through A), a send through B that reaches the gateway (so B
/// would send to this number), STOP through A, then — after A answered — a send through B,
/// which must be refused. `retry_503`: B may be cut from the database (fail closed): a 503 is
/// retried until B answers otherwise.
async fn round(
    cluster: &Cluster,
    a: &Instance,
    b: &Instance,
    index: usize,
    retry_503: bool,
) -> usize {
    let number = number(index);
    let mut unavailable = 0;
    cluster.opt_in(a, &number).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = cluster
            .send(b, &number, "informational", &format!("before STOP {index}"))
            .await;
        if status == 503 && retry_503 && Instant::now() < deadline {
            unavailable += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(status, 201, "round {index}: {body}");
        break;
    }
    assert_eq!(cluster.stop(a, &number, &format!("in-{index}")).await, 200);
    loop {
        let (status, body) = cluster
            .send(b, &number, "informational", &format!("after STOP {index}"))
            .await;
        if status == 503 && retry_503 && Instant::now() < deadline {
            unavailable += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(status, 403, "round {index}: {body}");
        assert_eq!(body["error"]["code"], "opted_out", "round {index}: {body}");
        break;
    }
    unavailable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_through_one_instance_blocks_the_next_send_through_the_other_1000_times() {
    let Some(cluster) = Cluster::new("").await else {
        return;
    };
    let a = cluster.start(None).await;
    let b = cluster.start(None).await;
    const ROUNDS: usize = 1000;
    futures_util::stream::iter(0..ROUNDS)
        .map(|index| round(&cluster, &a, &b, index, false))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert!(
        cluster.received("after STOP").is_empty(),
        "sends after a STOP reached the gateway"
    );
    assert_eq!(cluster.received("before STOP").len(), ROUNDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_blocks_the_other_instance_while_its_sessions_are_terminated() {
    let Some(cluster) = Cluster::new("").await else {
        return;
    };
    let a = cluster.start(None).await;
    let b = cluster.start(None).await;
    let name = b.application_name();

    // Every 2 seconds, end every session of B's, as a failover or an administrator would.
    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicUsize::new(0));
    let terminator = {
        let (stop, cuts, url, name) = (
            stop.clone(),
            cuts.clone(),
            cluster.url.clone(),
            name.clone(),
        );
        tokio::spawn(async move {
            let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let ended: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1) AS ended",
                )
                .bind(&name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
                if ended > 0 {
                    cuts.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // At least 300 rounds, and on until B's sessions were ended 5 times.
    const ROUNDS: usize = 300;
    const CUTS: usize = 5;
    let rounds =
        (0..10_000).take_while(|&index| index < ROUNDS || cuts.load(Ordering::Relaxed) < CUTS);
    let unavailable: Vec<usize> = futures_util::stream::iter(rounds)
        .map(|index| round(&cluster, &a, &b, index, true))
        .buffer_unordered(8)
        .collect()
        .await;
    stop.store(true, Ordering::Relaxed);
    terminator.await.unwrap();
    let (rounds, cuts) = (unavailable.len(), cuts.load(Ordering::Relaxed));
    eprintln!(
        "{rounds} rounds, {cuts} cuts of B's sessions, {} answers 503 from B",
        unavailable.iter().sum::<usize>()
    );
    assert!(
        cuts >= CUTS,
        "B's sessions were ended {cuts} times during the rounds"
    );
    assert!(
        cluster.received("after STOP").is_empty(),
        "sends after a STOP reached the gateway"
    );
    assert_eq!(cluster.received("before STOP").len(), rounds);

    // B recovers after a cut on its own: end its sessions once more, then it sends again.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&cluster.url)
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&name)
    .execute(&mut admin)
    .await
    .unwrap();
    let unavailable = round(&cluster, &a, &b, rounds, true).await;
    assert!(unavailable < 50, "B took {unavailable} tries to recover");
    assert_eq!(cluster.received("before STOP").len(), rounds + 1);
    assert!(cluster.received("after STOP").is_empty());
}

/// Replaces the shipped hours rules that apply to a Florida number with `windows`.
fn hours_rules(windows: &str) -> String {
    format!(
        r#"
# Test only: the hours rules replaced, so that the real clock does not decide the outcome.
[[policies.rules]]
id = "us-tcpa-hours"
title = "TCPA hours (test window)"
source = "tests/api/instances.rs"
country = "US"
purposes = ["marketing"]
windows = {{ all = "{windows}" }}
outside_window = "defer"

[[policies.rules]]
id = "us-fl-hours"
title = "Florida hours (test window)"
source = "tests/api/instances.rs"
country = "US"
regions = ["US-FL"]
purposes = ["marketing"]
windows = {{ all = "{windows}" }}
outside_window = "defer"
"#
    )
}

/// 200 marketing sends to `number` at once, alternately through A and B.
async fn race(cluster: &Cluster, a: &Instance, b: &Instance, number: &str) -> Vec<(u16, Value)> {
    let sends = (0..200).map(|index| {
        let instance = if index % 2 == 0 { a } else { b };
        let text = format!("capped {number} {index}");
        async move { cluster.send(instance, number, "marketing", &text).await }
    });
    futures_util::future::join_all(sends).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sends_through_two_instances_share_one_cap_of_3() {
    // Florida's cap (3 marketing messages per 24 h) is the shipped one; its hours are opened
    // all day so that the test does not depend on when it runs. The race is run for 12 Miami
    // numbers, one after the other.
    let Some(cluster) = Cluster::new(&hours_rules("00:00-24:00")).await else {
        return;
    };
    let a = cluster.start(None).await;
    let b = cluster.start(None).await;
    let numbers: Vec<String> = (0..12)
        .map(|index| format!("+130555501{:02}", 10 + index))
        .collect();
    for number in &numbers {
        cluster.opt_in(&a, number).await;
    }

    // Open the client's connections first, so that each race starts at once on both.
    for instance in [&a, &b] {
        let (status, body) = cluster
            .send(instance, &number(0), "transactional", "warm-up")
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut races = Vec::new();
    for number in &numbers {
        races.push(race(&cluster, &a, &b, number).await);
    }
    for (number, answers) in numbers.iter().zip(races) {
        let mut statuses = BTreeMap::<u16, usize>::new();
        for (status, body) in &answers {
            *statuses.entry(*status).or_default() += 1;
            if *status == 403 {
                assert_eq!(body["error"]["code"], "frequency_cap", "{body}");
            }
        }
        assert_eq!(
            statuses,
            BTreeMap::from([(201, 3), (403, 197)]),
            "{number}: {statuses:?}"
        );
        assert_eq!(
            cluster.received(&format!("capped {number} ")).len(),
            3,
            "{number}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_messages_are_released_once_across_both_instances() {
    // The window opens at the next whole minute at least 10 seconds from now (New York time,
    // Washington DC numbers): every send below is deferred to it, and both instances' schedulers
    // race to release them.
    let zone = jiff::tz::TimeZone::get("America/New_York").unwrap();
    let opens = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(10))
        .round(
            jiff::TimestampRound::new()
                .smallest(jiff::Unit::Minute)
                .mode(jiff::RoundMode::Ceil),
        )
        .unwrap();
    let local = opens.to_zoned(zone);
    let start = u16::try_from(local.hour()).unwrap() * 60 + u16::try_from(local.minute()).unwrap();
    let end = (start + 30).min(24 * 60);
    let window = format!(
        "{:02}:{:02}-{:02}:{:02}",
        start / 60,
        start % 60,
        end / 60,
        end % 60
    );
    let Some(cluster) = Cluster::new(&hours_rules(&window)).await else {
        return;
    };
    let a = cluster.start(None).await;
    let b = cluster.start(None).await;
    const MESSAGES: usize = 50;
    let numbers: Vec<String> = (0..MESSAGES)
        .map(|index| format!("+120255501{:02}", 50 + index))
        .collect();
    for (index, number) in numbers.iter().enumerate() {
        cluster
            .opt_in(if index % 2 == 0 { &a } else { &b }, number)
            .await;
    }
    let mut deferred = BTreeSet::new();
    for (index, number) in numbers.iter().enumerate() {
        let instance = if index % 2 == 0 { &a } else { &b };
        let (status, body) = cluster
            .send(instance, number, "marketing", &format!("deferred {index}"))
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "scheduled", "{body}");
        let release_at: jiff::Timestamp = body["release_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(release_at, opens, "{body}");
        deferred.insert(body["id"].as_str().unwrap().to_owned());
    }
    assert!(
        cluster.received("deferred").is_empty(),
        "nothing leaves before the window"
    );

    // Released when due, each once, whichever instance claims it.
    let deadline = Instant::now()
        + Duration::from_secs(30)
        + Duration::try_from(opens.duration_since(jiff::Timestamp::now())).unwrap_or_default();
    while cluster.received("deferred").len() < MESSAGES && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both schedulers poll twice a second: a second release would show by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = cluster.received("deferred");
    let ids: Vec<String> = received
        .iter()
        .map(|request| request.body["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids.len(),
        MESSAGES,
        "each deferred message reaches the gateway once: {ids:?}"
    );
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), deferred);
}

/// A TCP proxy in front of PostgreSQL that can cut every connection through it and refuse new
/// ones, then open again.
struct PgProxy {
    address: SocketAddr,
    /// Open or cut, and the connections through it; one lock so that none slips past a cut.
    state: Arc<Mutex<(bool, Vec<tokio::task::AbortHandle>)>>,
}

impl PgProxy {
    async fn start(upstream: String) -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new((true, Vec::new())));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let mut state = shared.lock().unwrap();
                if !state.0 {
                    drop(client); // cut: refused as soon as accepted
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                state.1.push(task.abort_handle());
            }
        });
        PgProxy { address, state }
    }

    /// Closes every proxied connection and refuses new ones.
    fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.0 = false;
        for task in state.1.drain(..) {
            task.abort();
        }
    }

    fn reopen(&self) {
        self.state.lock().unwrap().0 = true;
    }
}

/// One answer from the load generator.
struct Answer {
    started: Instant,
    finished: Instant,
    status: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_database_goes_away_sends_fail_closed_and_service_resumes_on_its_own() {
    // Stopping the shared PostgreSQL would break every other test running on it; a proxy
    // between instance B and PostgreSQL stands in for it: from B's side, a cut is the server
    // gone (every connection closed, new ones refused), and reopening is the server back.
    let Some(cluster) = Cluster::new("").await else {
        return;
    };
    let parsed = reqwest::Url::parse(&cluster.url).unwrap();
    let upstream = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    );
    let proxy = PgProxy::start(upstream).await;
    let mut through_proxy = parsed.clone();
    through_proxy.set_host(Some("127.0.0.1")).unwrap();
    through_proxy.set_port(Some(proxy.address.port())).unwrap();
    // The gateway checks, at each request, that the message's record is committed.
    cluster.gateway.watch_database(cluster.database.clone());

    let a = cluster.start(None).await;
    let b = cluster.start(Some(through_proxy.as_str())).await;
    let admin = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let ready = |instance: &Instance| {
        let request = admin.get(format!("http://{}/readyz", instance.admin));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&b).await, 200);

    // Load on B: 8 workers sending transactional messages (no consent needed) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let sent = AtomicUsize::new(0);
    let load = futures_util::future::join_all((0..8).map(|worker| {
        let (stop, answers, sent, cluster, b) = (&stop, &answers, &sent, &cluster, &b);
        async move {
            while !stop.load(Ordering::Relaxed) {
                let index = sent.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let (status, _) = cluster
                    .send(
                        b,
                        &number(index),
                        "transactional",
                        &format!("load {worker} {index}"),
                    )
                    .await;
                answers.lock().unwrap().push(Answer {
                    started,
                    finished: Instant::now(),
                    status,
                });
                if status == 503 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }));
    let scenario = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.cut();
        let cut_at = Instant::now();
        // Not ready while the database is away; the other instance is unaffected.
        let mut not_ready = false;
        while cut_at.elapsed() < Duration::from_secs(20) {
            if ready(&b).await == 503 {
                not_ready = true;
                break;
            }
        }
        assert!(not_ready, "B's /readyz stayed ready without its database");
        assert_eq!(ready(&a).await, 200);
        let (status, body) = cluster
            .send(&a, &number(100_000), "transactional", "load through A")
            .await;
        assert_eq!(status, 201, "{body}");
        tokio::time::sleep(Duration::from_secs(6).saturating_sub(cut_at.elapsed())).await;
        proxy.reopen();
        let reopened_at = Instant::now();
        // Back on its own: ready, and sends go through again.
        loop {
            assert!(
                reopened_at.elapsed() < Duration::from_secs(30),
                "B did not recover within 30 s of the database's return"
            );
            let recovered = answers
                .lock()
                .unwrap()
                .iter()
                .any(|answer| answer.started > reopened_at && answer.status == 201);
            if recovered && ready(&b).await == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        (cut_at, reopened_at)
    };
    let ((cut_at, reopened_at), _) = tokio::join!(scenario, load);

    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let mut statuses = BTreeMap::<u16, usize>::new();
    for answer in answers.iter() {
        *statuses.entry(answer.status).or_default() += 1;
    }
    eprintln!("answers from B: {statuses:?}");
    // Asked while the database was away (started after the cut, answered before it came
    // back): every one refused with 503, none sent.
    let during: Vec<u16> = answers
        .iter()
        .filter(|answer| answer.started > cut_at && answer.finished < reopened_at)
        .map(|answer| answer.status)
        .collect();
    assert!(!during.is_empty(), "no send was answered during the cut");
    assert!(during.iter().all(|&status| status == 503), "{during:?}");

    // Every message the gateway received had its record committed when it arrived, and the
    // gateway received exactly the messages answered 201 (B's and the one through A).
    let requests = cluster.received("load");
    assert!(
        requests
            .iter()
            .all(|request| request.record_committed == Some(true)),
        "a message reached the gateway without its record"
    );
    assert_eq!(requests.len(), statuses[&201] + 1);
    let ids: Vec<String> = requests
        .iter()
        .map(|request| {
            format!(
                "'{}'",
                request.body["id"].as_str().unwrap().replace('\'', "")
            )
        })
        .collect();
    let recorded = cluster
        .database
        .count(&format!(
            "SELECT count(*) FROM messages WHERE id IN ({})",
            ids.join(",")
        ))
        .await;
    assert_eq!(recorded as usize, requests.len());
}

/// The verifiable log stays one log: both instances sequence (one at a time, under an advisory
/// lock); when the one sequencing is killed the other takes over, and no index is given twice.
#[tokio::test]
async fn one_log_across_instances_survives_the_loss_of_its_sequencer() {
    let Some(cluster) = Cluster::new("").await else {
        return;
    };
    let a = cluster.start(None).await;
    let b = cluster.start(None).await;
    let sends = |instance: &Instance, from: usize| {
        let instance_url = instance.url("/v1/messages");
        let cluster = &cluster;
        async move {
            for index in from..from + 60 {
                let message = json!({
                    "to": number(50_000 + index), "from": SENDER,
                    "body": "log", "purpose": "transactional",
                });
                let (status, body) = cluster.post(instance_url.clone(), &message).await;
                assert_eq!(status, 201, "{body}");
            }
        }
    };
    tokio::join!(sends(&a, 0), sends(&b, 60));
    // A dies without a goodbye; B alone writes, sequences and signs from here on.
    drop(a);
    sends(&b, 120).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaves = cluster
            .database
            .count("SELECT count(*) FROM log_leaves")
            .await;
        let covered = cluster
            .database
            .count("SELECT COALESCE(max(tree_size), 0) FROM log_checkpoints")
            .await;
        // Each send's record and its outcome.
        if leaves == 360 && covered == 360 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{leaves} leaves, checkpoint at {covered}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let distinct = cluster
        .database
        .count(
            "SELECT count(DISTINCT leaf_index) FROM log_leaves WHERE leaf_index BETWEEN 0 AND 359",
        )
        .await;
    assert_eq!(distinct, 360, "indexes 0..360, each once");
    let output = Command::new(BINARY)
        .args(["audit", "verify", "--config"])
        .arg(&cluster.config)
        .env("GATEWAY_TOKEN", GATEWAY_TOKEN)
        .env("GATEWAY_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("ok: 360 leaves"), "{said}");
}

/// A gateway that delivers one reply to both instances at once (a retry landing elsewhere), and
/// an import sent to both: each is recorded once, and the opt-out is confirmed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_or_an_import_sent_to_both_instances_counts_once() {
    let Some(cluster) = Cluster::new("").await else {
        return;
    };
    let a = cluster.start(None).await;
    let b = cluster.start(None).await;
    for index in 0..20 {
        let number = number(70_000 + index);
        cluster.opt_in(&a, &number).await;
        let id = format!("dup-{index}");
        let (first, second) = tokio::join!(
            cluster.stop(&a, &number, &id),
            cluster.stop(&b, &number, &id)
        );
        assert_eq!((first, second), (200, 200), "both answer the gateway");
    }
    let db = &cluster.database;
    assert_eq!(db.count("SELECT count(*) FROM inbound_messages").await, 20);
    assert_eq!(
        db.count("SELECT count(*) FROM consent_events WHERE action = 'opt_out'")
            .await,
        20
    );
    let confirmations = db
        .count("SELECT count(*) FROM messages WHERE reply_kind = 'opt_out_confirmation'")
        .await;
    assert_eq!(confirmations, 20, "one confirmation per opt-out");

    let file: String = (0..200)
        .map(|index| {
            format!(
                "{{\"number\":\"{}\",\"action\":\"opt_in\",\"method\":\"web_form\",\"occurred_at\":\"2026-06-01T12:00:00Z\",\"external_id\":\"crm-{index}\"}}\n",
                number(80_000 + index)
            )
        })
        .collect();
    let import = |instance: &Instance| {
        cluster
            .client
            .post(instance.url("/v1/consents/import"))
            .bearer_auth(&cluster.token)
            .header("content-type", "application/x-ndjson")
            .body(file.clone())
            .send()
    };
    let (first, second) = tokio::join!(import(&a), import(&b));
    let first: Value = first.unwrap().json().await.unwrap();
    let second: Value = second.unwrap().json().await.unwrap();
    assert_eq!(
        first["recorded"].as_i64().unwrap() + second["recorded"].as_i64().unwrap(),
        200,
        "recorded {} and {}, failed {} and {}",
        first["recorded"],
        second["recorded"],
        first["failed"],
        second["failed"]
    );
    assert_eq!(
        db.count("SELECT count(*) FROM consent_events WHERE external_id LIKE 'crm-%'")
            .await,
        200
    );
}

/// A client that retries a send through the other instance (its load balancer chose another)
/// with the same `Idempotency-Key`: one SMS, and the retry gets the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_holds_across_instances() {
    let Some(cluster) = Cluster::new("").await else {
        return;
    };
    let a = cluster.start(None).await;
    let b = cluster.start(None).await;
    let keyed = |instance: &Instance, key: String, index: usize| {
        cluster
            .client
            .post(instance.url("/v1/messages"))
            .bearer_auth(&cluster.token)
            .header("idempotency-key", key)
            .json(&json!({
                "to": number(90_000 + index), "from": SENDER,
                "body": "once", "purpose": "transactional",
            }))
            .send()
    };
    for index in 0..20 {
        let key = format!("retry-{index}");
        // At once, through both: one sends, the other is told the key is in use or replays.
        let (first, second) =
            tokio::join!(keyed(&a, key.clone(), index), keyed(&b, key.clone(), index));
        let statuses = [first.unwrap().status(), second.unwrap().status()];
        assert!(
            statuses.contains(&reqwest::StatusCode::CREATED),
            "{statuses:?}"
        );
        // Later, through either: the first answer.
        let again = keyed(&b, key.clone(), index).await.unwrap();
        assert_eq!(again.status(), 201);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
    }
    assert_eq!(cluster.received("").len(), 20, "one SMS per key");
}

/// HAProxy, with `examples/haproxy.cfg` (its addresses replaced), in front of two instances:
/// sends through it land; an instance killed is taken out (a refused connection goes to the
/// other, its `/readyz` checks fail) and no send through the balancer fails. Without `haproxy`
/// on the machine (`.ci/run` installs Debian's) this test says so and checks nothing.
#[tokio::test]
async fn a_load_balancer_in_front_takes_a_lost_instance_out() {
    let Some(cluster) = Cluster::new("").await else {
        return;
    };
    let Ok(haproxy) = which_haproxy() else {
        eprintln!(
            "haproxy is not installed: the load balancer test did not run (.ci/run installs it)"
        );
        return;
    };
    let a = cluster.start(None).await;
    let b = cluster.start(None).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/haproxy.cfg"))
            .unwrap();
    let text = replace(&example, "bind :443", &format!("bind 127.0.0.1:{port}"));
    let text = replace(
        &text,
        "server a 10.0.0.11:8443 check port 9090",
        &format!("server a {} check port {}", a.api, a.admin.port()),
    );
    let text = replace(
        &text,
        "server b 10.0.0.12:8443 check port 9090",
        &format!("server b {} check port {}", b.api, b.admin.port()),
    );
    let config = cluster.config.with_file_name("haproxy.cfg");
    std::fs::write(&config, text).unwrap();
    struct Balancer(Child);
    impl Drop for Balancer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut balancer = Balancer(
        Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // What the balancer logs (its example logs to stdout), read as it comes.
    let logged = Arc::new(Mutex::new(String::new()));
    let stdout = balancer.0.stdout.take().unwrap();
    let sink = logged.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });

    // A new connection for every send, so that the balancer chooses each time.
    let cert = std::fs::read(
        cluster
            .config
            .with_file_name("etc")
            .join("tls/fullchain.pem"),
    )
    .unwrap();
    let through = |index: usize| {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let token = cluster.token.clone();
        async move {
            let message = json!({
                "to": number(40_000 + index), "from": SENDER,
                "body": format!("lb {index}"), "purpose": "transactional"
            });
            client
                .post(format!("https://localhost:{port}/v1/messages"))
                .bearer_auth(token)
                .json(&message)
                .send()
                .await
                .map(|response| response.status().as_u16())
                .unwrap_or(0)
        }
    };
    // The balancer is up once a send goes through.
    let deadline = Instant::now() + Duration::from_secs(10);
    while through(0).await != 201 {
        assert!(
            Instant::now() < deadline,
            "the balancer never passed a send"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for index in 1..20 {
        assert_eq!(through(index).await, 201, "send {index} through both");
    }
    drop(a);
    for index in 20..60 {
        assert_eq!(
            through(index).await,
            201,
            "send {index} after one instance was lost"
        );
    }
    assert_eq!(
        cluster.received("lb ").len(),
        60,
        "each send reached the gateway once"
    );
    // The balancer's health checks (GET /readyz on the admin listener) took it out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logged.lock().unwrap().contains("consentry/a is DOWN") {
        assert!(
            Instant::now() < deadline,
            "the balancer did not mark the lost instance down:\n{}",
            logged.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(balancer);
    drop(b);
}

fn which_haproxy() -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("haproxy"))
        .find(|path| path.is_file())
        .ok_or(())
}
