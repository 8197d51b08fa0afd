//! Test harness: the real application on port 0 over real TLS, with a fresh data folder and
//! database, real JWTs, and a fake gateway that is a real HTTP server on a local port.
//!
//! The database is SQLite in the data folder, or, when `CONSENTRY_TEST_DATABASE_URL` names a
//! PostgreSQL database, a fresh schema of that database for each data folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use consentry::{App, Config};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const GATEWAY_SECRET: &str = "gateway-credential-0123456789";
pub const HS_SECRET: &str = "a-shared-hmac-secret-of-at-least-32-bytes!";
pub const IDP: &str = "https://idp.example";
/// Where the application's clock starts: a Wednesday, 13:00 in New York, 10:00 in Los Angeles,
/// no holiday anywhere shipped; inside every marketing window.
pub const TEST_START: &str = "2026-11-18T18:00:00Z";
pub const TWILIO_TOKEN: &str = "twilio-auth-token-0123456789abcdef";
pub const TWILIO_URL: &str = "https://proxy.example.com/v1/inbound/tw";
pub const TELNYX_KEY: &str = "telnyx-api-key-0123456789";
pub const GW_WEBHOOK_SECRET: &str = "generic-webhook-secret-0123456789";
pub const TENANT_WEBHOOK_SECRET: &str = "beta-webhook-secret-0123456789";
pub const TW_SENDER: &str = "+12025550133";
pub const TX_SENDER: &str = "+12025550144";
pub const BETA_SENDER: &str = "+12025550111";
pub const VG_SENDER: &str = "+12025550166";
pub const VONAGE_SECRET: &str = "vonage-api-secret-0123456789";
pub const CALLBACK_SECRET: &str = "status-callback-token-0123456789";

/// The Telnyx test key pair (a fixed seed: the test signs, consentry verifies).
pub fn telnyx_key() -> ring::signature::Ed25519KeyPair {
    ring::signature::Ed25519KeyPair::from_seed_unchecked(&[42u8; 32]).unwrap()
}
pub const ACME_SENDER: &str = "+12025550100";
pub const SHOP_SENDER: &str = "+12025550122";
/// The shop's number that sends for its brand "shoes" only.
pub const SHOES_SENDER: &str = "+12025550127";

/// How the fake gateway answers.
#[derive(Debug, Clone, Copy)]
pub enum GatewayMode {
    Accept,
    /// Answers 200 with Vonage's shape and this status ("0" is success).
    Vonage(&'static str),
    /// Answers 400 with Twilio's error shape and Telnyx's, at once.
    GatewayError,
    Fail(u16),
    Stall(Duration),
    /// Answers 429 (too many requests) with `Retry-After` in seconds.
    Throttle(u64),
}

/// One request as the fake gateway saw it.
#[derive(Debug, Clone)]
pub struct GatewayRequest {
    /// Whether consentry's record of this message was committed when the gateway received it
    /// (`None` unless [`FakeGateway::watch_database`] was called).
    pub record_committed: Option<bool>,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Value,
    /// The body as received (a form's repeated fields are one key in `body`).
    pub raw: axum::body::Bytes,
}

/// A real HTTP server on 127.0.0.1 that records what it receives.
#[derive(Clone)]
pub struct FakeGateway {
    pub address: SocketAddr,
    requests: Arc<Mutex<Vec<GatewayRequest>>>,
    mode: Arc<Mutex<GatewayMode>>,
    database: Arc<Mutex<Option<TestDatabase>>>,
}

impl FakeGateway {
    pub async fn start() -> FakeGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = FakeGateway {
            address: listener.local_addr().unwrap(),
            requests: Arc::default(),
            mode: Arc::new(Mutex::new(GatewayMode::Accept)),
            database: Arc::default(),
        };
        let state = gateway.clone();
        let router = axum::Router::new().fallback(
            move |uri: http::Uri, headers: http::HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let mode = *state.mode.lock().unwrap();
                    let raw = body.clone();
                    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
                        // A form body: its fields as a JSON object, for the assertions.
                        let fields: serde_json::Map<String, Value> = form_urlencoded::parse(&body)
                            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                            .collect();
                        if fields.is_empty() {
                            Value::Null
                        } else {
                            Value::Object(fields)
                        }
                    });
                    let database = state.database.lock().unwrap().clone();
                    let record_committed = match database {
                        Some(database) => Some(record_exists(&database, body["id"].as_str()).await),
                        None => None,
                    };
                    state.requests.lock().unwrap().push(GatewayRequest {
                        record_committed,
                        path: uri.path().to_owned(),
                        headers,
                        body,
                        raw,
                    });
                    let count = state.requests.lock().unwrap().len();
                    use axum::response::IntoResponse as _;
                    let answer = match mode {
                        // Every gateway's id field: http-json's id, Twilio's sid, Telnyx's data.id.
                        GatewayMode::Accept => (
                            http::StatusCode::OK,
                            axum::Json(json!({
                                "id": format!("gw-{count}"),
                                "sid": format!("SMgw{count}"),
                                "data": { "id": format!("tx-{count}") },
                            })),
                        ),
                        GatewayMode::Vonage(status) => (
                            http::StatusCode::OK,
                            axum::Json(json!({ "message-count": "1", "messages": [{
                                "status": status, "message-id": format!("vg-{count}"),
                                "error-text": if status == "0" { "" } else { "Number barred" },
                            }]})),
                        ),
                        GatewayMode::GatewayError => (
                            http::StatusCode::BAD_REQUEST,
                            axum::Json(json!({
                                "code": 21211, "message": "Invalid 'To' Phone Number",
                                "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400,
                            })),
                        ),
                        GatewayMode::Fail(status) => (
                            http::StatusCode::from_u16(status).unwrap(),
                            axum::Json(json!({ "error": "refused" })),
                        ),
                        GatewayMode::Stall(delay) => {
                            tokio::time::sleep(delay).await;
                            (http::StatusCode::OK, axum::Json(json!({ "id": "late" })))
                        }
                        GatewayMode::Throttle(_) => (
                            http::StatusCode::TOO_MANY_REQUESTS,
                            axum::Json(json!({ "code": 20429, "message": "Too Many Requests" })),
                        ),
                    };
                    let mut response = answer.into_response();
                    if let GatewayMode::Throttle(seconds) = mode {
                        response
                            .headers_mut()
                            .insert("retry-after", http::HeaderValue::from(seconds));
                    }
                    response
                }
            },
        );
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        gateway
    }

    /// From now on, check at each request whether its record is committed in this database.
    pub fn watch_database(&self, database: TestDatabase) {
        *self.database.lock().unwrap() = Some(database);
    }

    pub fn set_mode(&self, mode: GatewayMode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn requests(&self) -> Vec<GatewayRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}/messages", self.address)
    }
}

/// Whether a message row is visible to a separate connection, i.e. committed.
async fn record_exists(database: &TestDatabase, id: Option<&str>) -> bool {
    let id = id.unwrap_or_default();
    let count: i64 = match database {
        TestDatabase::Sqlite(path) => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .read_only(true);
            let mut connection =
                <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
                    .await
                    .unwrap();
            sqlx::query_scalar("SELECT count(*) FROM messages WHERE id = ?")
                .bind(id)
                .fetch_one(&mut connection)
                .await
                .unwrap()
        }
        TestDatabase::Postgres(url) => {
            let mut connection = postgres_connection(url).await;
            sqlx::query_scalar("SELECT count(*) FROM messages WHERE id = $1")
                .bind(id)
                .fetch_one(&mut connection)
                .await
                .unwrap()
        }
    };
    count == 1
}

/// The PostgreSQL database the suite runs on, when `CONSENTRY_TEST_DATABASE_URL` names one.
pub fn postgres_base_url() -> Option<String> {
    std::env::var("CONSENTRY_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// The schema of a data folder on PostgreSQL: the same for one folder within a run (a restart
/// finds its records), different across folders and across runs.
fn postgres_schema(folder: &Path) -> String {
    static RUN: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        let mut bytes = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
        bytes
    });
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(run);
    context.update(folder.as_os_str().as_encoded_bytes());
    let digest = context.finish();
    let hex: String = digest.as_ref()[..10]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("t_{hex}")
}

/// The URL that points consentry at a data folder's schema: the base URL with its
/// `search_path` set through the connection's `options`.
fn postgres_url_for(base: &str, folder: &Path) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    format!(
        "{base}{separator}options=-c%20search_path%3D{}",
        postgres_schema(folder)
    )
}

async fn postgres_connection(url: &str) -> sqlx::PgConnection {
    <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap()
}

/// The database a test's consentry writes to, for checks through a connection of its own.
#[derive(Debug, Clone)]
pub enum TestDatabase {
    /// The SQLite file.
    Sqlite(PathBuf),
    /// A URL whose `search_path` is the test's schema.
    Postgres(String),
}

impl TestDatabase {
    /// The database of the data folder `folder` (as the test configuration points at it).
    pub fn for_folder(folder: &Path) -> TestDatabase {
        match postgres_base_url() {
            Some(base) => TestDatabase::Postgres(postgres_url_for(&base, folder)),
            None => TestDatabase::Sqlite(folder.join("data").join("consentry.db")),
        }
    }

    /// Runs a query that returns one integer (a second, read-only connection on SQLite).
    pub async fn count(&self, sql: &str) -> i64 {
        match self {
            TestDatabase::Sqlite(path) => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(true);
                let mut connection =
                    <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
                        .await
                        .unwrap();
                sqlx::query_scalar(sql)
                    .fetch_one(&mut connection)
                    .await
                    .unwrap()
            }
            TestDatabase::Postgres(url) => {
                let mut connection = postgres_connection(url).await;
                sqlx::query_scalar(sql)
                    .fetch_one(&mut connection)
                    .await
                    .unwrap()
            }
        }
    }

    /// Runs a query that returns one text value.
    pub async fn text(&self, sql: &str) -> String {
        match self {
            TestDatabase::Sqlite(path) => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(true);
                let mut connection =
                    <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
                        .await
                        .unwrap();
                sqlx::query_scalar(sql)
                    .fetch_one(&mut connection)
                    .await
                    .unwrap()
            }
            TestDatabase::Postgres(url) => {
                let mut connection = postgres_connection(url).await;
                sqlx::query_scalar(sql)
                    .fetch_one(&mut connection)
                    .await
                    .unwrap()
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, TestDatabase::Postgres(_))
    }

    /// Drops a trigger, as someone with write access to the database could.
    pub async fn drop_trigger(&self, name: &str, table: &str) {
        let sql = match self {
            TestDatabase::Sqlite(_) => format!("DROP TRIGGER IF EXISTS {name}"),
            TestDatabase::Postgres(_) => format!("DROP TRIGGER IF EXISTS {name} ON {table}"),
        };
        self.execute(&sql).await.unwrap();
    }

    /// Runs a statement on a connection of its own, as someone with access to the database.
    pub async fn execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            TestDatabase::Sqlite(path) => {
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
                let mut connection =
                    <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options).await?;
                Ok(sqlx::query(sql)
                    .execute(&mut connection)
                    .await?
                    .rows_affected())
            }
            TestDatabase::Postgres(url) => {
                let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
                Ok(sqlx::query(sql)
                    .execute(&mut connection)
                    .await?
                    .rows_affected())
            }
        }
    }

    /// Creates what must exist before consentry starts on it (a PostgreSQL schema).
    pub async fn prepare(&self, folder: &Path) {
        if let (TestDatabase::Postgres(_), Some(base)) = (self, postgres_base_url()) {
            let mut connection = postgres_connection(&base).await;
            sqlx::query(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                postgres_schema(folder)
            ))
            .execute(&mut connection)
            .await
            .unwrap();
        }
    }
}

/// An address on which nothing listens.
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}/messages")
}

/// A running consentry.
pub struct TestApp {
    pub api: SocketAddr,
    pub admin: SocketAddr,
    /// The SMPP front's address, when the configuration has `[smpp]`.
    pub smpp: Option<SocketAddr>,
    pub folder: PathBuf,
    pub fingerprint: String,
    pub client: reqwest::Client,
    /// Where this consentry's records are.
    pub database: TestDatabase,
    /// The beta tenant's own application, where its webhook deliveries go.
    pub tenant_app: Option<FakeGateway>,
    /// The running application's state: its clock, its workers' single steps.
    pub state: std::sync::Arc<consentry::state::AppState>,
    /// Applies a new configuration to the running application, as SIGHUP does.
    pub reloader: std::sync::Arc<consentry::app::Reloader>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    _temp: Option<Arc<tempfile::TempDir>>,
}

/// The configuration the tests use, with secrets written into `folder`.
pub fn test_config(folder: &Path, gateway_url: &str) -> String {
    test_config_with(folder, gateway_url, "http://127.0.0.1:9/unused")
}

/// The configuration the tests use, with the beta tenant's webhook at `tenant_app_url`.
pub fn test_config_with(folder: &Path, gateway_url: &str, tenant_app_url: &str) -> String {
    use ring::signature::KeyPair as _;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/fixtures");
    for (name, value) in [
        ("gateway.secret", GATEWAY_SECRET),
        ("hs.secret", HS_SECRET),
        ("twilio.secret", TWILIO_TOKEN),
        ("telnyx.secret", TELNYX_KEY),
        ("gw-webhook.secret", GW_WEBHOOK_SECRET),
        ("beta-webhook.secret", TENANT_WEBHOOK_SECRET),
        ("vonage.secret", VONAGE_SECRET),
        ("callback.secret", CALLBACK_SECRET),
    ] {
        std::fs::write(folder.join(name), format!("{value}\n")).unwrap();
    }
    let gateway_base = gateway_url.trim_end_matches("/messages");
    // On PostgreSQL, the folder's own schema; on SQLite, the default file in the data folder.
    let database = match TestDatabase::for_folder(folder) {
        TestDatabase::Postgres(url) => format!("\n[database]\nurl = \"{url}\"\n"),
        TestDatabase::Sqlite(_) => String::new(),
    };
    let telnyx_public =
        base64::engine::general_purpose::STANDARD.encode(telnyx_key().public_key().as_ref());
    format!(
        r#"
data_dir = "data"

[server]
public_url = "https://proxy.example.com"

[jwt]
dev_issuer = true

[[jwt.issuers]]
issuer = "{IDP}"
audience = "consentry"
[[jwt.issuers.keys]]
kid = "rsa1"
algorithm = "RS256"
public_key_file = "{fixtures}/rsa-public.pem"
[[jwt.issuers.keys]]
kid = "hs1"
algorithm = "HS256"
secret = {{ file = "hs.secret" }}

[[tenants]]
id = "acme"
senders = ["{ACME_SENDER}", "ACME"]
upstream = "gw"
purposes = ["transactional", "informational"]

[[tenants]]
id = "beta"
senders = ["{BETA_SENDER}"]
upstream = "sandbox"
program_name = "Beta"
webhook = {{ url = "{tenant_app_url}", secret = {{ file = "beta-webhook.secret" }} }}

[[tenants]]
id = "tw-shop"
senders = ["{TW_SENDER}"]
upstream = "tw"
program_name = "TW Shop"
help_contact = "Call 800-555-0199"
status_callback_secret = {{ file = "callback.secret" }}
twilio_fetch_body = true

[[tenants]]
id = "vg-shop"
senders = ["{VG_SENDER}"]
upstream = "vg"
default_purpose = "transactional"

[[tenants]]
id = "tx-shop"
senders = ["{TX_SENDER}"]
upstream = "tx"
program_name = "TX Shop"
webhook = {{ url = "{tenant_app_url}", secret = {{ file = "beta-webhook.secret" }} }}

[outbox]
retry_base_ms = 100
retry_max_ms = 400

[log]
checkpoint_interval_ms = 100

[[upstreams]]
name = "tw"
kind = "twilio"
url = "{gateway_base}"
account_sid = "AC00000000000000000000000000000001"
credential = {{ file = "twilio.secret" }}
public_url = "{TWILIO_URL}"

[[upstreams]]
name = "vg"
kind = "vonage"
url = "{gateway_base}"
account_sid = "vonage-api-key"
credential = {{ file = "vonage.secret" }}

[[upstreams]]
name = "tx"
kind = "telnyx"
url = "{gateway_base}"
credential = {{ file = "telnyx.secret" }}
webhook_public_key = "{telnyx_public}"

[[tenants]]
id = "shop"
senders = ["{SHOP_SENDER}", "{SHOES_SENDER}"]
upstream = "gw"
[[tenants.brands]]
id = "shoes"
campaigns = ["spring-sale", "loyalty"]
senders = ["{SHOES_SENDER}"]
[[tenants.brands]]
id = "hats"

[[upstreams]]
name = "gw"
kind = "http-json"
url = "{gateway_url}"
credential = {{ file = "gateway.secret" }}
webhook_secret = {{ file = "gw-webhook.secret" }}
connect_timeout_ms = 500
request_timeout_ms = 1000
{database}"#,
        fixtures = fixtures.display(),
    )
}

impl TestApp {
    /// Starts consentry in a fresh folder with the test configuration.
    pub async fn spawn(gateway_url: &str) -> TestApp {
        let temp = Arc::new(tempfile::tempdir().unwrap());
        let folder = temp.path().to_path_buf();
        let tenant_app = FakeGateway::start().await;
        let text = test_config_with(&folder, gateway_url, &tenant_app.url());
        let mut app = TestApp::spawn_with(&folder, &text).await;
        app._temp = Some(temp);
        app.tenant_app = Some(tenant_app);
        app
    }

    /// Starts consentry with `config_text` written into `folder` (kept by the caller).
    pub async fn spawn_with(folder: &Path, config_text: &str) -> TestApp {
        let database = TestDatabase::for_folder(folder);
        database.prepare(folder).await;
        let path = folder.join("consentry.toml");
        std::fs::write(&path, config_text).unwrap();
        let config = Config::load(&path).unwrap();
        let clock = consentry::state::Clock::starting_at(TEST_START.parse().unwrap());
        let app = App::build_with_clock(config, clock).await.unwrap();
        let state = app.state();
        let reloader = app.reloader();
        let fingerprint = app.fingerprint().to_owned();
        let cert = std::fs::read(app.cert_path()).unwrap();
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let smpp = match config_text.contains("[smpp]") {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let (api_address, admin_address) = (api.local_addr().unwrap(), admin.local_addr().unwrap());
        let smpp_address = smpp.as_ref().map(|smpp| smpp.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = consentry::Listeners { api, admin, smpp };
        let done = tokio::spawn(app.run(listeners, async {
            let _ = stopped.await;
        }));
        TestApp {
            api: api_address,
            admin: admin_address,
            smpp: smpp_address,
            folder: folder.to_path_buf(),
            fingerprint,
            client: client(&cert, None),
            database,
            tenant_app: None,
            state,
            reloader,
            stop: Some(stop),
            done: Some(done),
            _temp: None,
        }
    }

    /// Stops the server and waits until it has finished.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap();
        }
    }

    /// Stops the server and keeps its folder (its configuration and data) for the caller,
    /// for checks that must not race its background workers.
    pub async fn stop_keeping_folder(mut self) -> Option<Arc<tempfile::TempDir>> {
        let temp = self._temp.take();
        self.stop().await;
        temp
    }

    pub fn data_dir(&self) -> PathBuf {
        self.folder.join("data")
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.api.port())
    }

    /// A development token for `tenant` with `scope`, signed with the data folder's key.
    pub fn token(&self, tenant: &str, scope: &str) -> String {
        self.sign_dev(
            &json!({ "alg": "EdDSA", "typ": "JWT", "kid": "dev" }),
            &claims("consentry-dev", tenant, scope),
        )
    }

    /// Signs any header and claims with the development Ed25519 key, for crafting tokens.
    pub fn sign_dev(&self, header: &Value, claims: &Value) -> String {
        let pkcs8 = std::fs::read(self.data_dir().join("keys/jwt-dev.pk8")).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
        let signing_input = format!("{}.{}", segment(header), segment(claims));
        let signature = pair.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(signature.as_ref()))
    }

    pub async fn send(&self, token: &str, message: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/messages"))
            .bearer_auth(token)
            .json(message)
            .send()
            .await
            .unwrap()
    }

    /// `/metrics` of the admin listener, as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A client that trusts only `cert`; `version` forces HTTP/1.1 or h2.
pub fn client(cert: &[u8], version: Option<http::Version>) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert).unwrap())
        .timeout(Duration::from_secs(10));
    let builder = match version {
        Some(http::Version::HTTP_11) => builder.http1_only(),
        Some(http::Version::HTTP_2) => builder.http2_prior_knowledge(),
        _ => builder,
    };
    builder.build().unwrap()
}

/// Valid claims for an issuer, tenant and scope, good for an hour.
pub fn claims(issuer: &str, tenant: &str, scope: &str) -> Value {
    let now = jiff::Timestamp::now().as_second();
    json!({
        "iss": issuer, "aud": "consentry", "sub": "test-app", "tenant": tenant,
        "scope": scope, "iat": now, "nbf": now, "exp": now + 3600,
    })
}

/// A native send request from acme's sender.
pub fn message(to: &str, body: &str, purpose: &str) -> Value {
    json!({ "to": to, "from": ACME_SENDER, "body": body, "purpose": purpose })
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn segment(value: &Value) -> String {
    b64(value.to_string().as_bytes())
}

/// The `error.code` of a JSON error answer.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/api/fixtures")
            .join(name),
    )
    .unwrap()
}

/// A send request from the shop tenant's sender.
pub fn shop_message(to: &str, purpose: &str, brand: Option<&str>, campaign: Option<&str>) -> Value {
    let mut message = json!({ "to": to, "from": SHOP_SENDER, "body": "Spring sale: 20% off", "purpose": purpose });
    if let Some(brand) = brand {
        message["brand"] = json!(brand);
    }
    if let Some(campaign) = campaign {
        message["campaign"] = json!(campaign);
    }
    message
}

/// Written consent with the evidence TCPA asks for.
pub fn written_opt_in(number: &str) -> Value {
    json!({
        "number": number,
        "action": "opt_in",
        "level": "express_written",
        "method": "web_form",
        "evidence": {
            "disclosure_text": "By checking this box you agree to receive marketing texts from Shop at this number. Consent is not a condition of purchase. Msg & data rates may apply. Reply STOP to stop.",
            "disclosure_version": "2026-10",
            "language": "en",
            "ip": "203.0.113.7",
            "user_agent": "Mozilla/5.0",
            "page_url": "https://shop.example/signup",
            "not_condition_of_purchase": true,
            "extra": { "form_id": "signup-3" }
        }
    })
}

impl TestApp {
    /// Records one consent event.
    pub async fn consent(&self, token: &str, event: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/consents"))
            .bearer_auth(token)
            .json(event)
            .send()
            .await
            .unwrap()
    }

    /// Imports a file body of the given content type.
    pub async fn import(
        &self,
        token: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url("/v1/consents/import"))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

impl TestApp {
    /// Posts a Twilio webhook, signed as Twilio signs it (unless `signature` overrides it).
    pub async fn twilio_webhook(
        &self,
        params: &[(&str, &str)],
        signature: Option<&str>,
    ) -> reqwest::Response {
        let owned: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let signed = consentry::dialect::twilio::sign(TWILIO_TOKEN, TWILIO_URL, &owned);
        let mut request = self
            .client
            .post(self.url("/v1/inbound/tw"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(params)
                    .finish(),
            );
        match signature {
            Some("") => {}
            Some(other) => request = request.header("x-twilio-signature", other),
            None => request = request.header("x-twilio-signature", signed),
        }
        request.send().await.unwrap()
    }

    /// Posts a Telnyx `message.received` webhook signed at `timestamp`.
    pub async fn telnyx_webhook(
        &self,
        id: &str,
        from: &str,
        text: &str,
        timestamp: i64,
    ) -> reqwest::Response {
        let body = json!({
            "data": {
                "event_type": "message.received",
                "id": format!("ev-{id}"),
                "payload": {
                    "id": id,
                    "from": { "phone_number": from },
                    "to": [{ "phone_number": TX_SENDER }],
                    "text": text,
                }
            }
        })
        .to_string();
        let signed = format!("{timestamp}|{body}");
        let signature = base64::engine::general_purpose::STANDARD
            .encode(telnyx_key().sign(signed.as_bytes()).as_ref());
        self.client
            .post(self.url("/v1/inbound/tx"))
            .header("content-type", "application/json")
            .header("telnyx-timestamp", timestamp.to_string())
            .header("telnyx-signature-ed25519", signature)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// A recipient's message through the `gw` upstream's webhook (an `http-json` gateway),
    /// signed with its secret.
    pub async fn gw_reply(&self, id: &str, from: &str, to: &str, body: &str) -> reqwest::Response {
        let reply = json!({ "id": id, "from": from, "to": to, "body": body }).to_string();
        self.client
            .post(self.url("/v1/inbound/gw"))
            .header(
                "x-webhook-signature",
                consentry::dialect::generic::sign(GW_WEBHOOK_SECRET.as_bytes(), reply.as_bytes()),
            )
            .body(reply)
            .send()
            .await
            .unwrap()
    }

    /// Simulates a recipient's reply through the sandbox.
    pub async fn sandbox_reply(&self, from: &str, body: &str) -> reqwest::Response {
        let token = self.token("beta", "admin");
        self.client
            .post(self.url("/v1/sandbox/replies"))
            .bearer_auth(token)
            .json(&json!({ "from": from, "to": BETA_SENDER, "body": body }))
            .send()
            .await
            .unwrap()
    }

    /// Counts rows in the database (a second connection, read-only on SQLite).
    pub async fn count(&self, sql: &str) -> i64 {
        self.database.count(sql).await
    }
}

/// Written consent dated 2026-01-01, before any test clock.
pub async fn opt_in(app: &TestApp, token: &str, number: &str) {
    let mut event = written_opt_in(number);
    event["occurred_at"] = json!("2026-01-01T00:00:00Z");
    assert_eq!(app.consent(token, &event).await.status(), 201);
}

/// A message's record, as `GET /v1/messages/{id}` answers it.
/// The messages in doubt of the last hour (allowed, no gateway answer recorded), as `consentry
/// messages in-doubt` lists them.
pub async fn in_doubt(app: &TestApp) -> Vec<consentry::store::InDoubt> {
    let now = app.state.clock.now().as_microsecond();
    app.state
        .messages()
        .in_doubt(now - 3_600_000_000, now + 1_000_000, 10)
        .await
        .unwrap()
}

pub async fn status_of(app: &TestApp, token: &str, id: &str) -> Value {
    app.get(token, &format!("/v1/messages/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

/// Waits (briefly) for a message to reach a status: the background scheduler may release it
/// before or after the test's own step.
pub async fn wait_for_status(app: &TestApp, token: &str, id: &str, status: &str) -> Value {
    for _ in 0..100 {
        let record = status_of(app, token, id).await;
        if record["status"] == status {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{id} never became {status}: {}",
        status_of(app, token, id).await
    );
}
