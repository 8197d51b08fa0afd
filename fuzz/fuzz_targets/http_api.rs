//! The API as a client reaches it: `http::api_router` over an `App` built once (SQLite in a
//! temporary folder, the sandbox gateway, the development issuer), called in process with
//! one request per input. This is the only public way to the fronts' private parsers
//! (`http::fronts::form_fields`, `number_field`, `header_credential`, the Telnyx and Vonage
//! JSON shapes) and to the consent endpoints' validation (`http::consents::validate`,
//! `csv_header`, `csv_input`).
//!
//! First byte: the route (low 4 bits) and the `X-Consentry-Purpose` header (high bits). Then:
//! - 0 Twilio `Messages.json` (form, Basic auth), 1 Telnyx `/v2/messages` (JSON, Bearer),
//!   2 Vonage `/sms/json` as a form, 3 as JSON: the rest is the body;
//! - 4 `POST /v1/consents` (JSON), 5 `/v1/consents/import` NDJSON, 6 CSV: the rest is the body;
//! - 7 a generic (`http-json`) inbound webhook, 8 a Twilio inbound webhook (form): the rest is
//!   the body, signed here with the upstream's secret so that it reaches the parser;
//! - 9 the Twilio front with the `Authorization` header taken from the input (first field)
//!   and a form body (the rest);
//! - 10 the Vonage front with the credentials in the form only (no header).
//!
//! Property: no panic anywhere in a request (axum does not catch them), and no answer is a
//! 500.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use consentry::auth::{mint_dev_token, DevClaims};
use consentry::config::Config;
use consentry::datadir::DataDir;
use consentry::App;
use fuzz_common::Fields;
use http::{header, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

const WEBHOOK_SECRET: &str = "generic-webhook-secret-for-fuzzing";
const TWILIO_TOKEN: &str = "twilio-auth-token-for-fuzzing";
const TWILIO_URL: &str = "https://consentry.example/v1/inbound/tw";
const ACCOUNT: &str = "ACfuzz";

struct Setup {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    token: String,
    _dir: tempfile::TempDir,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    std::env::set_var("CONSENTRY_FUZZ_GEN_SECRET", WEBHOOK_SECRET);
    std::env::set_var("CONSENTRY_FUZZ_GEN_CREDENTIAL", "gateway-credential");
    std::env::set_var("CONSENTRY_FUZZ_TWILIO_TOKEN", TWILIO_TOKEN);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let config_text = format!(
        r#"
data_dir = "{data}"

[jwt]
dev_issuer = true

[[tenants]]
id = "demo"
senders = ["+12025550100", "ACME", "12345"]
upstream = "sandbox"
purposes = ["marketing", "informational", "transactional"]
default_region = "US"
default_purpose = "transactional"

[[tenants]]
id = "gb"
senders = ["+447911123456"]
upstream = "tw"
default_region = "GB"

[[upstreams]]
name = "gen"
kind = "http-json"
url = "http://127.0.0.1:9/messages"
credential = {{ env = "CONSENTRY_FUZZ_GEN_CREDENTIAL" }}
webhook_secret = {{ env = "CONSENTRY_FUZZ_GEN_SECRET" }}
connect_timeout_ms = 50
request_timeout_ms = 100

[[upstreams]]
name = "tw"
kind = "twilio"
url = "http://127.0.0.1:9"
account_sid = "ACupstream"
credential = {{ env = "CONSENTRY_FUZZ_TWILIO_TOKEN" }}
public_url = "{TWILIO_URL}"
connect_timeout_ms = 50
request_timeout_ms = 100
"#,
        data = dir.path().join("data").display()
    );
    let config = Config::parse(&config_text, std::path::Path::new(".")).expect("the config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let app = runtime
        .block_on(App::build(config))
        .expect("the app builds");
    let key = DataDir::open(app.data_dir())
        .and_then(|data| data.dev_jwt_key())
        .expect("the dev key");
    let now = jiff::Timestamp::now().as_second();
    let token = mint_dev_token(
        &key.pkcs8,
        &DevClaims {
            iss: consentry::config::DEV_ISSUER.into(),
            aud: consentry::config::DEFAULT_AUDIENCE.into(),
            sub: "fuzzer".into(),
            tenant: "demo".into(),
            scope: "messages:send messages:read consents:write consents:read admin".into(),
            iat: now,
            nbf: now,
            exp: now + 30 * 24 * 3600,
        },
    )
    .expect("a dev token");
    let router = consentry::http::api_router(app.state());
    Setup {
        runtime,
        router,
        token,
        _dir: dir,
    }
});

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fuzz_target!(|data: &[u8]| {
    let setup = &*SETUP;
    let mut fields = Fields::new(data);
    let selector = fields.byte();
    let bearer = format!("Bearer {}", setup.token);
    let form = "application/x-www-form-urlencoded";
    let json = "application/json";
    let twilio_path = format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json");

    let mut authorization: Option<String> = Some(bearer.clone());
    let (path, content_type, body): (String, &str, Vec<u8>) = match selector & 0x0F {
        0 => {
            authorization = Some(basic(ACCOUNT, &setup.token));
            (twilio_path, form, fields.rest().to_vec())
        }
        1 => ("/v2/messages".into(), json, fields.rest().to_vec()),
        2 => ("/sms/json".into(), form, fields.rest().to_vec()),
        3 => ("/sms/json".into(), json, fields.rest().to_vec()),
        4 => ("/v1/consents".into(), json, fields.rest().to_vec()),
        5 => (
            "/v1/consents/import".into(),
            "application/x-ndjson",
            fields.rest().to_vec(),
        ),
        6 => ("/v1/consents/import".into(), "text/csv", fields.rest().to_vec()),
        7 => {
            let body = fields.rest().to_vec();
            authorization = None;
            ("/v1/inbound/gen".into(), json, body)
        }
        8 => {
            authorization = None;
            ("/v1/inbound/tw".into(), form, fields.rest().to_vec())
        }
        9 => {
            let value = fields.text();
            authorization = Some(value);
            (twilio_path, form, fields.rest().to_vec())
        }
        10 => {
            authorization = None;
            let mut body = fields.rest().to_vec();
            body.extend_from_slice(format!("&api_secret={}", setup.token).as_bytes());
            ("/sms/json".into(), form, body)
        }
        _ => return,
    };

    let mut request = Request::builder()
        .method("POST")
        .uri(format!("https://consentry.example{path}"))
        .header(header::HOST, "consentry.example")
        .header(header::CONTENT_TYPE, content_type);
    if let Some(value) = &authorization {
        if http::HeaderValue::from_str(value).is_err() {
            return;
        }
        request = request.header(header::AUTHORIZATION, value);
    }
    match selector >> 4 {
        1 => request = request.header("x-consentry-purpose", "marketing"),
        2 => request = request.header("x-consentry-purpose", "informational"),
        3 => request = request.header("x-consentry-purpose", "transactional"),
        4 => request = request.header("x-consentry-purpose", "bulk"),
        _ => {}
    }
    match selector & 0x0F {
        7 => {
            let signature = consentry::dialect::generic::sign(WEBHOOK_SECRET.as_bytes(), &body);
            request = request.header(consentry::dialect::generic::SIGNATURE_HEADER, signature);
        }
        8 => {
            let params: Vec<(String, String)> = form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let signature = consentry::dialect::twilio::sign(TWILIO_TOKEN, TWILIO_URL, &params);
            request = request.header(consentry::dialect::twilio::SIGNATURE_HEADER, signature);
        }
        _ => {}
    }
    let request = request
        .body(axum::body::Body::from(body))
        .expect("a request");
    let response = setup
        .runtime
        .block_on(setup.router.clone().oneshot(request))
        .expect("the router is infallible");
    assert_ne!(
        response.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "a 500 for {path}"
    );
});
