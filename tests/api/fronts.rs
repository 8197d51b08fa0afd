//! Gateway-compatible fronts and upstreams: requests in Twilio's, Telnyx's and Vonage's own
//! shapes, answers and denials in theirs.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::helpers::*;

const ACCOUNT: &str = "AC00000000000000000000000000000009";
const OPTED_OUT: &str = "+14155550777";

pub(crate) fn basic(token: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{token}"));
    format!("Basic {encoded}")
}

async fn twilio_post(
    app: &TestApp,
    account: &str,
    authorization: &str,
    form: &str,
) -> (u16, Value) {
    let response = app
        .client
        .post(app.url(&format!("/2010-04-01/Accounts/{account}/Messages.json")))
        .header("authorization", authorization)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-consentry-purpose", "transactional")
        .body(form.to_owned())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// `GET .../Messages/{sid}.json` through the Twilio front.
async fn twilio_fetch(app: &TestApp, authorization: &str, sid: &str) -> (u16, Value) {
    let response = app
        .client
        .get(app.url(&format!(
            "/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}.json"
        )))
        .header("authorization", authorization)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The message SID the Twilio front gives a consentry message id.
pub(crate) fn sid_of(id: &str) -> String {
    format!("SM{}", id.trim_start_matches("msg_"))
}

async fn opt_out(app: &TestApp, tenant: &str, number: &str) {
    let token = app.token(tenant, "consents:write");
    let event = json!({ "number": number, "action": "opt_out", "method": "keyword" });
    assert_eq!(app.consent(&token, &event).await.status(), 201);
}

#[tokio::test]
async fn the_twilio_front_speaks_twilio() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send messages:read");
    opt_out(&app, "acme", OPTED_OUT).await;

    let (status, created) = twilio_post(
        &app,
        ACCOUNT,
        &basic(&token),
        "To=%2B14155550123&From=%2B12025550100&Body=Your+code+is+1234",
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "queued");
    assert_eq!(created["to"], "+14155550123");
    assert_eq!(created["body"], "Your code is 1234");
    assert_eq!(created["account_sid"], ACCOUNT);
    let sid = created["sid"].as_str().unwrap();
    assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
    assert_eq!(gateway.requests().len(), 1);

    // Fetched back from consentry's record.
    let fetched: Value = app
        .client
        .get(app.url(&format!(
            "/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}.json"
        )))
        .header("authorization", basic(&token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["sid"], sid);
    assert_eq!(fetched["status"], "sent");
    // messages:read alone does not decrypt (see the fetch's own test).
    assert_eq!(fetched["body"], "");

    // A Bearer token works too.
    let (status, _) = twilio_post(
        &app,
        ACCOUNT,
        &format!("Bearer {token}"),
        "To=%2B14155550124&From=%2B12025550100&Body=hi",
    )
    .await;
    assert_eq!(status, 201);

    // Denials and bad input, in Twilio's error shape; nothing more is forwarded.
    let long = "a".repeat(1601);
    let cases: Vec<(String, u16, u64)> = vec![
        (
            format!("To=%2B{}&From=%2B12025550100&Body=hi", &OPTED_OUT[1..]),
            400,
            21610,
        ),
        (
            "To=%2B14155550123&To=%2B14155550124&From=%2B12025550100&Body=hi".into(),
            400,
            93100,
        ),
        ("From=%2B12025550100&Body=hi".into(), 400, 21604),
        (
            format!("To=%2B14155550123&From=%2B12025550100&Body={long}"),
            400,
            21617,
        ),
        (
            "To=+14155550123&From=%2B12025550100&Body=hi".into(),
            400,
            21211,
        ),
        (
            "To=%2B14155550123&From=%2B12025550199&Body=hi".into(),
            400,
            21606,
        ),
        ("To=%2B14155550123&From=%2B12025550100".into(), 400, 21602),
        (
            "To=%2B14155550123&From=%2B12025550100&Body=hi&ContentSid=HX0000".into(),
            400,
            93101,
        ),
    ];
    for (form, expected_status, expected_code) in cases {
        let (status, error) = twilio_post(&app, ACCOUNT, &basic(&token), &form).await;
        assert_eq!(
            (status, error["code"].as_u64()),
            (expected_status, Some(expected_code)),
            "{form}: {error}"
        );
        assert_eq!(error["status"], expected_status);
        assert!(error["message"].is_string() && error["more_info"].is_string());
    }
    let (status, error) = twilio_post(
        &app,
        "AC99999999999999999999999999999999",
        &basic(&token),
        "To=%2B14155550123&From=%2B12025550100&Body=hi",
    )
    .await;
    assert_eq!(
        (status, error["code"].as_u64()),
        (401, Some(20003)),
        "wrong account SID in the path"
    );
    let (status, _) = twilio_post(
        &app,
        ACCOUNT,
        &basic("not-a-token"),
        "To=%2B14155550123&From=%2B12025550100&Body=hi",
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(gateway.requests().len(), 2);
}

#[tokio::test]
async fn the_telnyx_front_speaks_telnyx() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    opt_out(&app, "acme", OPTED_OUT).await;
    let send = |to: &str| {
        app.client
            .post(app.url("/v2/messages"))
            .bearer_auth(&token)
            .header("x-consentry-purpose", "transactional")
            .json(&json!({ "from": ACME_SENDER, "to": to, "text": "Your code is 1234" }))
            .send()
    };
    let response = send("+14155550123").await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["record_type"], "message");
    assert_eq!(body["data"]["to"][0]["phone_number"], "+14155550123");
    assert_eq!(body["data"]["to"][0]["status"], "queued");

    let response = send(OPTED_OUT).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "40300");
    assert_eq!(body["errors"][0]["meta"]["consentry_code"], "opted_out");

    let duplicate = app
        .client
        .post(app.url("/v2/messages"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"from":"+12025550100","to":"+14155550123","to":"+14155550124","text":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), 400);
    assert_eq!(gateway.requests().len(), 1);
}

#[tokio::test]
async fn the_vonage_front_speaks_vonage() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    opt_out(&app, "acme", OPTED_OUT).await;
    let send = |to: &str| {
        let form = format!(
            "api_key=anything&api_secret={token}&from=12025550100&to={}&text=Your+code+is+1234",
            &to[1..]
        );
        app.client
            .post(app.url("/sms/json"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-consentry-purpose", "transactional")
            .body(form)
            .send()
    };
    let body: Value = send("+14155550123").await.unwrap().json().await.unwrap();
    assert_eq!(body["message-count"], "1");
    assert_eq!(body["messages"][0]["status"], "0");
    assert!(body["messages"][0]["message-id"].is_string());
    let body: Value = send(OPTED_OUT).await.unwrap().json().await.unwrap();
    assert_eq!(body["messages"][0]["status"], "7");
    assert!(
        body["messages"][0]["error-text"]
            .as_str()
            .unwrap()
            .starts_with("opted_out")
    );
    let duplicate = app
        .client
        .post(app.url("/sms/json"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"api_key":"k","api_secret":"{token}","from":"12025550100","to":"14155550123","to":"14155550124","text":"hi"}}"#))
        .send()
        .await
        .unwrap();
    let body: Value = duplicate.json().await.unwrap();
    assert_eq!(body["messages"][0]["status"], "2", "a field given twice");
    assert_eq!(gateway.requests().len(), 1);
}

/// Vonage's current SDKs send the API key and secret as HTTP Basic: the JWT is the password,
/// the API key (the user) is not read, as the form's `api_key` is not.
#[tokio::test]
async fn the_vonage_front_takes_the_token_as_the_basic_password() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let basic_as = |user: &str, password: &str| {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    };
    let send = |authorization: Option<String>, form: String| {
        let mut request = app
            .client
            .post(app.url("/sms/json"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-consentry-purpose", "transactional")
            .body(form);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "Vonage answers 200, with a status");
            let answer: Value = response.json().await.unwrap();
            answer["messages"][0].clone()
        }
    };
    let message = "from=12025550100&to=14155550123&text=Your+code+is+1234".to_owned();

    // As the SDK sends it: Basic, nothing in the form.
    let sent = send(Some(basic_as("my-api-key", &token)), message.clone()).await;
    assert_eq!(sent["status"], "0", "{sent}");
    assert!(sent["message-id"].is_string());
    // Any user name, and the scheme's name in any case (RFC 7617).
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!(":{token}"));
    let sent = send(Some(format!("basic {encoded}")), message.clone()).await;
    assert_eq!(sent["status"], "0", "{sent}");
    // The same token in the form and in the header is one credential.
    let both = format!("api_key=k&api_secret={token}&{message}");
    let sent = send(Some(basic_as("k", &token)), both).await;
    assert_eq!(sent["status"], "0", "{sent}");
    // JSON bodies too.
    let response = app
        .client
        .post(app.url("/sms/json"))
        .header("authorization", basic_as("k", &token))
        .header("x-consentry-purpose", "transactional")
        .json(&json!({ "from": "12025550100", "to": "14155550123", "text": "hi" }))
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["messages"][0]["status"], "0", "{answer}");
    assert_eq!(gateway.requests().len(), 4);

    // Refusals, in Vonage's statuses with consentry's code first in the text; nothing sent.
    let other = app.token("acme", "messages:send consents:read");
    let cases: Vec<(Option<String>, String, &str, &str)> = vec![
        (None, message.clone(), "4", "missing_token"),
        (
            Some(basic_as("k", "not-a-token")),
            message.clone(),
            "4",
            "malformed_token",
        ),
        (
            Some("Basic !!!".to_owned()),
            message.clone(),
            "4",
            "malformed_token",
        ),
        (
            Some(basic_as("k", &app.token("acme", "messages:read"))),
            message.clone(),
            "4",
            "insufficient_scope",
        ),
        (
            Some(basic_as("k", &other)),
            format!("api_key=k&api_secret={token}&{message}"),
            "2",
            "duplicate_parameter",
        ),
    ];
    for (authorization, form, status, code) in cases {
        let refused = send(authorization.clone(), form).await;
        assert_eq!(refused["status"], status, "{authorization:?}: {refused}");
        let text = refused["error-text"].as_str().unwrap();
        assert!(
            text.starts_with(code),
            "{authorization:?}: {code} expected, got {text}"
        );
    }
    assert_eq!(gateway.requests().len(), 4);
}

#[tokio::test]
async fn the_vonage_upstream_sends_vonages_request_and_reads_its_answer() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("vg-shop", "messages:send messages:read");
    let message = json!({ "to": "+14155550123", "from": VG_SENDER, "body": "Your code is 1234", "purpose": "transactional" });

    gateway.set_mode(GatewayMode::Vonage("0"));
    let response = app.send(&token, &message).await;
    assert_eq!(response.status(), 201);
    let sent: Value = response.json().await.unwrap();
    assert_eq!(sent["upstream"]["message_id"], "vg-1");
    let request = &gateway.requests()[0];
    assert_eq!(request.path, "/sms/json");
    assert_eq!(request.body["api_key"], "vonage-api-key");
    assert_eq!(request.body["api_secret"], VONAGE_SECRET);
    assert_eq!(request.body["to"], "14155550123");
    assert_eq!(request.body["from"], &VG_SENDER[1..]);
    assert_eq!(request.body["text"], "Your code is 1234");
    assert!(request.headers.get("authorization").is_none());

    // Vonage refuses with HTTP 200 and a status: recorded as failed.
    gateway.set_mode(GatewayMode::Vonage("7"));
    let response = app.send(&token, &message).await;
    assert_eq!(response.status(), 502);
    let failed: Value = response.json().await.unwrap();
    assert_eq!(failed["error"]["code"], "upstream_rejected");
    let id = failed["error"]["id"].as_str().unwrap();
    let record: Value = app
        .get(&token, &format!("/v1/messages/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "failed");
}

#[tokio::test]
async fn the_twilio_and_telnyx_upstreams_send_their_own_requests() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    for (tenant, from) in [("tw-shop", TW_SENDER), ("tx-shop", TX_SENDER)] {
        let token = app.token(tenant, "messages:send");
        let message = json!({ "to": "+14155550123", "from": from, "body": "hello", "purpose": "transactional" });
        assert_eq!(app.send(&token, &message).await.status(), 201);
    }
    let requests = gateway.requests();
    assert_eq!(
        requests[0].path,
        "/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages.json"
    );
    let expected = base64::engine::general_purpose::STANDARD
        .encode(format!("AC00000000000000000000000000000001:{TWILIO_TOKEN}"));
    assert_eq!(
        requests[0].headers["authorization"],
        format!("Basic {expected}").as_str()
    );
    assert_eq!(requests[0].body["To"], "+14155550123");
    assert_eq!(requests[0].body["From"], TW_SENDER);
    assert_eq!(requests[0].body["Body"], "hello");
    assert_eq!(
        requests[0].body["StatusCallback"],
        "https://proxy.example.com/v1/inbound/tw"
    );
    assert_eq!(requests[1].path, "/v2/messages");
    assert_eq!(
        requests[1].headers["authorization"],
        format!("Bearer {TELNYX_KEY}").as_str()
    );
    assert_eq!(
        requests[1].body,
        json!({ "from": TX_SENDER, "to": "+14155550123", "text": "hello", "webhook_url": "https://proxy.example.com/v1/inbound/tx" })
    );
}

#[tokio::test]
async fn delivery_statuses_reach_the_record_and_the_tenant() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let tenant_app = app.tenant_app.clone().unwrap();

    // Twilio reports a delivery: the record says delivered.
    let token = app.token("tw-shop", "messages:send messages:read");
    let message = json!({ "to": "+14155550123", "from": TW_SENDER, "body": "hello", "purpose": "transactional" });
    let sent: Value = app.send(&token, &message).await.json().await.unwrap();
    assert_eq!(sent["upstream"]["message_id"], "SMgw1");
    let status = [
        ("MessageSid", "SMgw1"),
        ("MessageStatus", "delivered"),
        ("AccountSid", "AC00000000000000000000000000000001"),
    ];
    assert_eq!(app.twilio_webhook(&status, None).await.status(), 200);
    let id = sent["id"].as_str().unwrap();
    let record: Value = app
        .get(&token, &format!("/v1/messages/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "delivered");

    // Telnyx reports a failure: the record says undelivered, and the tenant hears of it.
    let token = app.token("tx-shop", "messages:send messages:read");
    let message = json!({ "to": "+14155550123", "from": TX_SENDER, "body": "hello", "purpose": "transactional" });
    let sent: Value = app.send(&token, &message).await.json().await.unwrap();
    let gateway_id = sent["upstream"]["message_id"].as_str().unwrap().to_owned();
    let body = json!({ "data": { "event_type": "message.finalized", "id": "ev-9", "payload": {
        "id": gateway_id, "to": [{ "phone_number": "+14155550123", "status": "delivery_failed" }],
        "errors": [{ "code": "40008", "title": "Undeliverable" }] } } })
    .to_string();
    let timestamp = jiff::Timestamp::now().as_second();
    let signature = base64::engine::general_purpose::STANDARD.encode(
        telnyx_key()
            .sign(format!("{timestamp}|{body}").as_bytes())
            .as_ref(),
    );
    let response = app
        .client
        .post(app.url("/v1/inbound/tx"))
        .header("telnyx-timestamp", timestamp.to_string())
        .header("telnyx-signature-ed25519", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = sent["id"].as_str().unwrap();
    let record: Value = app
        .get(&token, &format!("/v1/messages/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "undelivered");
    assert_eq!(record["error_code"], "40008");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tenant_app.requests().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let delivered = &tenant_app.requests()[0];
    assert_eq!(delivered.body["type"], "delivery_status");
    assert_eq!(delivered.body["message_id"], id);
    assert_eq!(delivered.body["status"], "delivery_failed");
}

/// The official Python SDKs (Twilio, Telnyx, Vonage), unchanged but for their base URL or
/// host, against consentry over TLS.
/// `.ci/run` installs them in a virtual environment and names its Python in
/// `CONSENTRY_SDK_PYTHON`; without it this test says so and checks nothing.
#[tokio::test]
async fn the_official_python_sdks_work_against_consentry() {
    let Ok(python) = std::env::var("CONSENTRY_SDK_PYTHON") else {
        eprintln!("CONSENTRY_SDK_PYTHON is not set: the SDK test did not run (.ci/run sets it)");
        return;
    };
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send messages:read");
    // The Vonage SDK has no public way to add X-Consentry-Purpose: its token names the purpose.
    let mut vonage_claims = claims("consentry-dev", "acme", "messages:send");
    vonage_claims["purposes"] = json!(["transactional"]);
    let vonage_token = app.sign_dev(
        &json!({ "alg": "EdDSA", "typ": "JWT", "kid": "dev" }),
        &vonage_claims,
    );
    opt_out(&app, "acme", OPTED_OUT).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/check_sdks.py");
    let mut command = std::process::Command::new(python);
    command
        .arg(script)
        .env(
            "CONSENTRY_URL",
            format!("https://localhost:{}", app.api.port()),
        )
        .env("CONSENTRY_TOKEN", &token)
        .env("CONSENTRY_VONAGE_TOKEN", &vonage_token)
        .env("CONSENTRY_FROM", ACME_SENDER)
        .env("CONSENTRY_OPTED_OUT", OPTED_OUT)
        .env(
            "CONSENTRY_SEND_AT",
            (app.state.clock.now() + jiff::SignedDuration::from_hours(24))
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
        )
        .env("SSL_CERT_FILE", app.data_dir().join("tls/cert.pem"))
        .env("REQUESTS_CA_BUNDLE", app.data_dir().join("tls/cert.pem"));
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for sdk in ["twilio", "telnyx", "vonage"] {
        assert!(stdout.contains(&format!("{sdk}: ok")), "{sdk}: {stdout}");
    }
    let requests = gateway.requests();
    assert_eq!(
        requests.len(),
        4,
        "one message per SDK and the Twilio SDK's MMS reached the gateway; the scheduled one, canceled, did not"
    );
    assert!(
        requests.iter().any(|request| request.body["media_urls"]
            == json!([
                "https://media.example/cat.jpg",
                "https://media.example/dog.png"
            ])),
        "the MMS's media reached the gateway"
    );
}

#[tokio::test]
async fn the_applications_status_callback_hears_the_status_as_from_twilio() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let application = FakeGateway::start().await;
    let callback = format!("http://{}/twilio/status", application.address);
    let token = app.token("tw-shop", "messages:send");
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("To", "+14155550123")
        .append_pair("From", TW_SENDER)
        .append_pair("Body", "Your code is 1234")
        .append_pair("StatusCallback", &callback)
        .finish();
    let (status, created) = twilio_post(&app, ACCOUNT, &basic(&token), &form).await;
    assert_eq!(status, 201, "{created}");
    let sid = created["sid"].as_str().unwrap().to_owned();

    // Twilio (behind consentry) reports the delivery to consentry's webhook.
    let report = [
        ("MessageSid", "SMgw1"),
        ("MessageStatus", "delivered"),
        ("AccountSid", "AC00000000000000000000000000000001"),
    ];
    assert_eq!(app.twilio_webhook(&report, None).await.status(), 200);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while application.requests().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let heard = &application.requests()[0];
    assert_eq!(heard.path, "/twilio/status");
    assert_eq!(
        heard.body["MessageSid"],
        sid.as_str(),
        "the SID the application was given"
    );
    assert_eq!(heard.body["MessageStatus"], "delivered");
    assert_eq!(heard.body["AccountSid"], ACCOUNT);
    let params: Vec<(String, String)> = heard
        .body
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let signature = heard.headers["x-twilio-signature"].to_str().unwrap();
    assert_eq!(
        consentry::dialect::twilio::verify(CALLBACK_SECRET, &callback, &params, Some(signature)),
        Ok(()),
        "signed as Twilio signs, with the tenant's status_callback_secret"
    );

    // A tenant without a status_callback_secret cannot ask for callbacks.
    let token = app.token("acme", "messages:send");
    let form = format!("To=%2B14155550123&From=%2B12025550100&Body=hi&StatusCallback={callback}");
    let (status, error) = twilio_post(&app, ACCOUNT, &basic(&token), &form).await;
    assert_eq!((status, error["code"].as_u64()), (400, Some(93101)));
}

#[tokio::test]
async fn a_gateways_own_error_is_recorded_with_the_failure() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    gateway.set_mode(GatewayMode::GatewayError);
    let token = app.token("tw-shop", "messages:send messages:read");
    let message = json!({ "to": "+14155550123", "from": TW_SENDER, "body": "hello", "purpose": "transactional" });
    let response = app.send(&token, &message).await;
    assert_eq!(response.status(), 502);
    let failed: Value = response.json().await.unwrap();
    assert_eq!(failed["error"]["code"], "upstream_rejected");
    let text = failed["error"]["message"].as_str().unwrap();
    assert!(
        text.contains("HTTP 400") && text.contains("21211"),
        "{text}"
    );
    let id = failed["error"]["id"].as_str().unwrap();
    let record: Value = app
        .get(&token, &format!("/v1/messages/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "failed");
}

#[tokio::test]
async fn a_message_fetched_through_the_twilio_front_follows_its_status() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("tw-shop", "messages:send messages:read consents:write");
    let auth = basic(&token);
    let form = |to: &str| format!("To=%2B{}&From=%2B{}&Body=hello", &to[1..], &TW_SENDER[1..]);

    // Sent: the gateway (Twilio) answered SMgw1; then it reports the delivery.
    let (status, created) = twilio_post(&app, ACCOUNT, &auth, &form("+14155550123")).await;
    assert_eq!((status, created["status"].as_str()), (201, Some("queued")));
    let sid = created["sid"].as_str().unwrap().to_owned();
    let (status, fetched) = twilio_fetch(&app, &auth, &sid).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["status"], "sent");
    assert!(fetched["date_sent"].is_string());
    assert!(fetched["error_code"].is_null());
    let report = [
        ("MessageSid", "SMgw1"),
        ("MessageStatus", "delivered"),
        ("AccountSid", "AC00000000000000000000000000000001"),
    ];
    assert_eq!(app.twilio_webhook(&report, None).await.status(), 200);
    let (_, fetched) = twilio_fetch(&app, &auth, &sid).await;
    assert_eq!(fetched["status"], "delivered", "{fetched}");
    assert!(fetched["date_sent"].is_string());
    assert!(fetched["error_code"].is_null());

    // Undelivered, with Twilio's own error code passed on as Twilio's.
    let (_, created) = twilio_post(&app, ACCOUNT, &auth, &form("+14155550124")).await;
    let report = [
        ("MessageSid", "SMgw2"),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
        ("AccountSid", "AC00000000000000000000000000000001"),
    ];
    assert_eq!(app.twilio_webhook(&report, None).await.status(), 200);
    let (_, fetched) = twilio_fetch(&app, &auth, created["sid"].as_str().unwrap()).await;
    assert_eq!(fetched["status"], "undelivered", "{fetched}");
    assert_eq!(fetched["error_code"], 30003);

    // A send through a messaging service is answered `accepted`, as Twilio answers it.
    let (status, created) = twilio_post(
        &app,
        ACCOUNT,
        &auth,
        "To=%2B14155550125&MessagingServiceSid=MG00000000000000000000000000000001&Body=hi",
    )
    .await;
    assert_eq!(
        (status, created["status"].as_str()),
        (201, Some("accepted"))
    );

    // A gateway that fails: failed, with consentry's documented code for it.
    gateway.set_mode(GatewayMode::Fail(500));
    let (status, _) = twilio_post(&app, ACCOUNT, &auth, &form("+14155550126")).await;
    assert_eq!(status, 502);
    gateway.set_mode(GatewayMode::Accept);
    let failed_id: String = app
        .database
        .text("SELECT message_id FROM message_outcomes WHERE status = 'failed'")
        .await;
    let (_, fetched) = twilio_fetch(&app, &auth, &sid_of(&failed_id)).await;
    assert_eq!(fetched["status"], "failed", "{fetched}");
    assert_eq!(fetched["error_code"], 93500);

    // Denied at send time (an opt-out): failed, with Twilio's code for it.
    opt_out(&app, "tw-shop", "+14155550127").await;
    let native = json!({ "to": "+14155550127", "from": TW_SENDER, "body": "hi", "purpose": "transactional" });
    let denied: Value = app.send(&token, &native).await.json().await.unwrap();
    let denied_id = denied["error"]["id"].as_str().unwrap();
    let (_, fetched) = twilio_fetch(&app, &auth, &sid_of(denied_id)).await;
    assert_eq!(fetched["status"], "failed", "{fetched}");
    assert_eq!(fetched["error_code"], 21610);
    assert!(fetched["date_sent"].is_null());

    // Deferred (marketing at 23:00 in New York): scheduled; opted out before its release:
    // canceled.
    let new_york = "+12125550123";
    let mut consent = written_opt_in(new_york);
    consent["occurred_at"] = json!("2026-01-01T00:00:00Z");
    assert_eq!(app.consent(&token, &consent).await.status(), 201);
    app.state.clock.set("2026-11-19T04:00:00Z".parse().unwrap());
    let marketing =
        json!({ "to": new_york, "from": TW_SENDER, "body": "Sale", "purpose": "marketing" });
    let response = app.send(&token, &marketing).await;
    assert_eq!(response.status(), 202);
    let deferred: Value = response.json().await.unwrap();
    let deferred_sid = sid_of(deferred["id"].as_str().unwrap());
    let (_, fetched) = twilio_fetch(&app, &auth, &deferred_sid).await;
    assert_eq!(fetched["status"], "scheduled", "{fetched}");
    opt_out(&app, "tw-shop", new_york).await;
    app.state.clock.set("2026-11-19T14:00:00Z".parse().unwrap());
    consentry::scheduler::release_due(&app.state).await.unwrap();
    let (_, fetched) = twilio_fetch(&app, &auth, &deferred_sid).await;
    assert_eq!(fetched["status"], "canceled", "{fetched}");
    assert!(fetched["error_code"].is_null());
    assert_eq!(
        gateway.requests().len(),
        4,
        "the denied and deferred never left"
    );
}

/// The body of a fetched message is decrypted for a token with `audit:decrypt`, or for any
/// reader of a tenant that sets `twilio_fetch_body`; every such read is logged as the native
/// API logs one, before it happens.
#[tokio::test]
async fn the_twilio_fetch_shows_a_body_only_to_who_may_decrypt_it() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let accesses = "SELECT count(*) FROM body_accesses";
    let logged = "SELECT count(*) FROM log_leaves WHERE kind = 'body_access'";

    // acme keeps the default: bodies only with audit:decrypt.
    let sender = app.token("acme", "messages:send");
    let (status, created) = twilio_post(
        &app,
        ACCOUNT,
        &basic(&sender),
        "To=%2B14155550123&From=%2B12025550100&Body=Your+code+is+1234",
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let sid = created["sid"].as_str().unwrap().to_owned();

    let reader = app.token("acme", "messages:read");
    let (status, fetched) = twilio_fetch(&app, &basic(&reader), &sid).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["status"], "sent");
    assert_eq!(fetched["body"], "", "messages:read alone: no body");
    assert_eq!(fetched["to"], "+1415555****", "and masked numbers");
    assert_eq!(fetched["from"], "+1202555****");
    assert_eq!(app.count(accesses).await, 0, "nothing was decrypted");

    let auditor = app.token("acme", "messages:read audit:decrypt");
    let (status, fetched) = twilio_fetch(&app, &basic(&auditor), &sid).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["body"], "Your code is 1234");
    assert_eq!(fetched["to"], "+14155550123");
    assert_eq!(fetched["from"], ACME_SENDER);
    assert_eq!(app.count(accesses).await, 1);
    let id = format!("msg_{}", &sid[2..]);
    assert_eq!(
        app.database
            .text("SELECT subject || ' ' || message_id FROM body_accesses")
            .await,
        format!("test-app {id}"),
        "who read which message"
    );
    assert_eq!(app.count(logged).await, 1, "the read is a leaf of the log");

    // audit:decrypt without messages:read does not fetch.
    let decrypt_only = app.token("acme", "audit:decrypt");
    let (status, error) = twilio_fetch(&app, &basic(&decrypt_only), &sid).await;
    assert_eq!((status, error["code"].as_u64()), (401, Some(20003)));
    assert_eq!(error["consentry_code"], "insufficient_scope");

    // tw-shop sets twilio_fetch_body = true: messages:read sees the body, and is logged.
    let token = app.token("tw-shop", "messages:send messages:read");
    let form = format!(
        "To=%2B14155550124&From=%2B{}&Body=Your+code+is+5678",
        &TW_SENDER[1..]
    );
    let (status, created) = twilio_post(&app, ACCOUNT, &basic(&token), &form).await;
    assert_eq!(status, 201, "{created}");
    let sid = created["sid"].as_str().unwrap();
    let (status, fetched) = twilio_fetch(&app, &basic(&token), sid).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["body"], "Your code is 5678");
    assert_eq!(fetched["to"], "+14155550124");
    assert_eq!(app.count(accesses).await, 2);
    assert_eq!(app.count(logged).await, 2);

    // Another tenant's message is not found, switch or no switch.
    let (status, error) = twilio_fetch(&app, &basic(&token), &sid_of(&id)).await;
    assert_eq!((status, error["code"].as_u64()), (404, Some(20404)));
    assert_eq!(app.count(accesses).await, 2);
}

/// A front message that names no purpose takes the token's when its `purposes` claim names
/// exactly one; the header still wins; otherwise the tenant's default.
#[tokio::test]
async fn a_token_with_one_purpose_gives_it_to_front_messages() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token_for = |purposes: Option<Value>| {
        let mut claims = claims("consentry-dev", "acme", "messages:send messages:read");
        if let Some(purposes) = purposes {
            claims["purposes"] = purposes;
        }
        app.sign_dev(
            &json!({ "alg": "EdDSA", "typ": "JWT", "kid": "dev" }),
            &claims,
        )
    };
    // acme allows transactional and informational; its default_purpose is marketing.
    let vonage = |token: &str, purpose_header: Option<&str>| {
        let form = format!(
            "api_key=anything&api_secret={token}&from=12025550100&to=14155550123&text=Your+code+is+1234"
        );
        let mut request = app
            .client
            .post(app.url("/sms/json"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form);
        if let Some(purpose) = purpose_header {
            request = request.header("x-consentry-purpose", purpose);
        }
        async move {
            let answer: Value = request.send().await.unwrap().json().await.unwrap();
            answer["messages"][0].clone()
        }
    };

    // One purpose in the token, no header: that purpose.
    let one = token_for(Some(json!(["transactional"])));
    let sent = vonage(&one, None).await;
    assert_eq!(sent["status"], "0", "{sent}");
    let id = sent["message-id"].as_str().unwrap();
    let record: Value = app
        .get(&one, &format!("/v1/messages/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["purpose"], "transactional");

    // The header wins over the token: informational is outside this token's bounds.
    let refused = vonage(&one, Some("informational")).await;
    assert_eq!(refused["status"], "90", "{refused}");
    assert!(
        refused["error-text"]
            .as_str()
            .unwrap()
            .starts_with("purpose_not_allowed"),
        "{refused}"
    );

    // No purposes claim, or two: the tenant's default (marketing), which acme may not send.
    for token in [
        token_for(None),
        token_for(Some(json!(["transactional", "informational"]))),
    ] {
        let refused = vonage(&token, None).await;
        assert_eq!(refused["status"], "90", "{refused}");
        assert!(
            refused["error-text"]
                .as_str()
                .unwrap()
                .starts_with("purpose_not_allowed"),
            "{refused}"
        );
    }

    // The same on every front: Twilio without the header.
    let response = app
        .client
        .post(app.url(&format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json")))
        .header("authorization", basic(&one))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("To=%2B14155550124&From=%2B12025550100&Body=hi")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let id = format!("msg_{}", &created["sid"].as_str().unwrap()[2..]);
    let record: Value = app
        .get(&one, &format!("/v1/messages/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["purpose"], "transactional");
    assert_eq!(gateway.requests().len(), 2);
}
