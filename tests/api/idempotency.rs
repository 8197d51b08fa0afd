//! `Idempotency-Key`: a retried send gets its first answer, byte for byte, and is not decided
//! or forwarded again.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::helpers::*;

async fn keyed(app: &TestApp, token: &str, key: &str, message: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/messages"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(message)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_gets_the_first_answer_without_a_second_send() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let send = message("+14155550123", "Your code is 1234", "transactional");

    let first = keyed(&app, &token, "order-7", &send).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_bytes = first.bytes().await.unwrap();
    for _ in 0..3 {
        let retry = keyed(&app, &token, "order-7", &send).await;
        assert_eq!(retry.status(), 201);
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(retry.headers()["content-type"], "application/json");
        assert_eq!(retry.bytes().await.unwrap(), first_bytes, "byte for byte");
    }
    assert_eq!(gateway.requests().len(), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM messages").await, 1);

    // The same key with another request: 422, nothing sent.
    let other = keyed(
        &app,
        &token,
        "order-7",
        &message("+14155550123", "Your code is 9999", "transactional"),
    )
    .await;
    assert_eq!(other.status(), 422);
    assert_eq!(error_code(other).await, "idempotency_key_reused");

    // Keys are the tenant's: another tenant's same key is its own.
    let beta = app.token("beta", "messages:send");
    let beta_send = json!({
        "to": "+14155550123", "from": BETA_SENDER, "body": "hi", "purpose": "transactional"
    });
    let response = keyed(&app, &beta, "order-7", &beta_send).await;
    assert_eq!(response.status(), 201);
    assert!(response.headers().get("idempotent-replayed").is_none());

    // A malformed key is refused before anything happens.
    let response = keyed(&app, &token, &"k".repeat(300), &send).await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "invalid_idempotency_key");
    // Without a key, a second request is a second send, as before.
    assert_eq!(app.send(&token, &send).await.status(), 201);
}

#[tokio::test]
async fn a_denial_is_replayed_not_decided_again() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    // Marketing without an opt-in: denied.
    let send = message("+14155550123", "Sale today", "marketing");
    let first = keyed(&app, &token, "campaign-1/+14155550123", &send).await;
    assert_eq!(first.status(), 403);
    let first_bytes = first.bytes().await.unwrap();
    let retry = keyed(&app, &token, "campaign-1/+14155550123", &send).await;
    assert_eq!(retry.status(), 403);
    assert_eq!(retry.bytes().await.unwrap(), first_bytes);
    assert_eq!(app.count("SELECT COUNT(*) FROM messages").await, 1);
    assert!(gateway.requests().is_empty());
}

#[tokio::test]
async fn concurrent_duplicates_send_once_and_the_others_get_409() {
    let gateway = FakeGateway::start().await;
    gateway.set_mode(GatewayMode::Stall(Duration::from_millis(500)));
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let send = message("+14155550123", "once", "transactional");
    let answers =
        futures_util::future::join_all((0..10).map(|_| keyed(&app, &token, "double-click", &send)))
            .await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        9,
        "{statuses:?}"
    );
    for answer in answers {
        if answer.status() == 409 {
            assert_eq!(error_code(answer).await, "idempotency_key_in_use");
        }
    }
    assert_eq!(gateway.requests().len(), 1);
}

#[tokio::test]
async fn keys_expire_after_a_day_and_erasure_deletes_kept_answers() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let send = message("+14155550123", "first", "transactional");
    assert_eq!(keyed(&app, &token, "daily", &send).await.status(), 201);
    // The answer is kept in the writes that follow the answer (a later claim is queued after
    // it); a reader on another connection sees it a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app
        .count("SELECT COUNT(*) FROM idempotency_keys WHERE answer IS NOT NULL")
        .await
        != 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the answer was not kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The answer is sealed: the number and text are not in it in clear.
    let sql = if app.database.is_postgres() {
        "SELECT upper(encode(answer, 'hex')) FROM idempotency_keys"
    } else {
        "SELECT hex(answer) FROM idempotency_keys"
    };
    let stored = app.database.text(sql).await;
    assert!(stored.len() > 100);
    assert!(!stored.contains(&hex_of("+14155550123")));
    assert!(!stored.contains(&hex_of("first")));

    // A day later, the key is free again.
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(25);
    app.state.clock.set(later);
    let again = keyed(
        &app,
        &token,
        "daily",
        &message("+14155550123", "second", "transactional"),
    )
    .await;
    assert_eq!(again.status(), 201);
    assert!(again.headers().get("idempotent-replayed").is_none());
    assert_eq!(gateway.requests().len(), 2);

    // Erasing the number deletes the kept answers that name it.
    let eraser = app.token("acme", "admin");
    let erased = app
        .client
        .post(app.url("/v1/erasure"))
        .bearer_auth(&eraser)
        .json(&json!({ "number": "+14155550123" }))
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);
    assert_eq!(app.count("SELECT COUNT(*) FROM idempotency_keys").await, 0);
}

fn hex_of(text: &str) -> String {
    text.bytes().map(|byte| format!("{byte:02X}")).collect()
}

#[tokio::test]
async fn the_twilio_front_takes_its_idempotency_token() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let account = "AC00000000000000000000000000000009";
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{account}:{token}"))
    );
    let post = || {
        app.client
            .post(app.url(&format!("/2010-04-01/Accounts/{account}/Messages.json")))
            .header("authorization", &basic)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-consentry-purpose", "transactional")
            .header("i-twilio-idempotency-token", "tw-1")
            .body("To=%2B14155550123&From=%2B12025550100&Body=Your+code+is+1234")
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status(), 201);
    let first_bytes = first.bytes().await.unwrap();
    let retry = post().await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.bytes().await.unwrap(), first_bytes);
    assert_eq!(gateway.requests().len(), 1);
}

/// Sends `message` (under `key`, if given) and goes away once the gateway has it: the client
/// drops its connection while consentry waits for the gateway's answer.
async fn send_and_leave(
    app: &TestApp,
    gateway: &FakeGateway,
    token: &str,
    key: Option<&str>,
    message: &Value,
) {
    let mut request = app
        .client
        .post(app.url("/v1/messages"))
        .bearer_auth(token)
        .json(message);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let sending = tokio::spawn(request.send());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gateway.requests().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing reached the gateway"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sending.abort();
    assert!(sending.await.is_err_and(|error| error.is_cancelled()));
}

/// A client that gives up while its send is at the gateway (its own timeout, a dropped
/// connection) does not cut the send in half: the gateway's answer is still recorded, so the
/// message is not left in doubt, and the key keeps the answer, so the client's retry gets it
/// instead of `idempotency_key_in_use` for a day.
#[tokio::test]
async fn a_send_whose_client_gave_up_still_records_its_answer_for_the_retry() {
    let gateway = FakeGateway::start().await;
    // Under the test configuration's 1 s timeout for the gateway's answer.
    gateway.set_mode(GatewayMode::Stall(Duration::from_millis(900)));
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send messages:read");
    let send = message("+14155550123", "Your code is 1234", "transactional");
    send_and_leave(&app, &gateway, &token, Some("impatient-1"), &send).await;
    // Its handler still runs, and says so.
    assert!(
        app.metrics()
            .await
            .contains("\nconsentry_requests_in_flight 1.0\n"),
        "{}",
        app.metrics().await
    );

    // The send goes on without its client: its gateway's answer is recorded.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !in_doubt(&app).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the send stopped with its client: {:?}",
            in_doubt(&app).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The retry gets the first answer, and nothing is sent twice.
    gateway.set_mode(GatewayMode::Accept);
    let mut retry = keyed(&app, &token, "impatient-1", &send).await;
    while retry.status() == 409 {
        // The answer is kept just after the outcome; a retry may come between the two.
        assert!(
            std::time::Instant::now() < deadline,
            "the answer was never kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        retry = keyed(&app, &token, "impatient-1", &send).await;
    }
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let answer: Value = retry.json().await.unwrap();
    assert_eq!(answer["status"], "sent", "{answer}");
    let id = answer["id"].as_str().unwrap();
    assert_eq!(status_of(&app, &token, id).await["status"], "sent");
    assert_eq!(gateway.requests().len(), 1);
}

/// Stopping waits for a request whose client went away: the gateway's answer is recorded
/// before the server has stopped, not cut off with it.
#[tokio::test]
async fn stopping_waits_for_a_send_whose_client_went_away() {
    let gateway = FakeGateway::start().await;
    // Under the test configuration's 1 s timeout for the gateway's answer.
    gateway.set_mode(GatewayMode::Stall(Duration::from_millis(800)));
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let send = message("+14155550123", "Your code is 1234", "transactional");
    send_and_leave(&app, &gateway, &token, None, &send).await;
    let database = app.database.clone();
    let _folder = app.stop_keeping_folder().await;
    assert_eq!(
        database
            .count("SELECT COUNT(*) FROM message_outcomes WHERE status = 'sent'")
            .await,
        1
    );
    assert_eq!(gateway.requests().len(), 1);
}
