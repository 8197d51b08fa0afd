//! `POST /v1/messages`: what a sender sees, and what the gateway receives.

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_valid_token_sends_one_message_with_the_gateway_credential_only() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send messages:read");

    let response = app
        .client
        .post(app.url("/v1/messages"))
        .bearer_auth(&token)
        .header("X-Client-Secret", "must-not-travel")
        .header("Cookie", "session=abc")
        .json(&message(
            "(415) 555-0123",
            "Your code is 123456",
            "transactional",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "sent");
    assert_eq!(answer["upstream"]["name"], "gw");
    assert_eq!(answer["upstream"]["message_id"], "gw-1");
    let id = answer["id"].as_str().unwrap();

    let requests = gateway.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/messages");
    assert_eq!(
        request.headers["authorization"],
        format!("Bearer {GATEWAY_SECRET}").as_str()
    );
    for (name, value) in &request.headers {
        let value = value.to_str().unwrap_or_default();
        assert!(
            !value.contains(&token),
            "the client's token travelled in {name}"
        );
        assert!(!value.contains("must-not-travel") && !value.contains("session=abc"));
    }
    assert_eq!(
        request.body,
        json!({
            "id": id, "to": "+14155550123", "from": ACME_SENDER,
            "body": "Your code is 123456", "purpose": "transactional",
        })
    );

    let record: Value = app
        .get(&token, &format!("/v1/messages/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "sent");
    assert_eq!(record["decision"], "allowed");
    assert_eq!(record["upstream_message_id"], "gw-1");
    assert_eq!(record["recipient"], "+1415555****");
}

#[tokio::test]
async fn bad_requests_get_their_own_codes_and_are_not_forwarded() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send messages:read");

    let too_long = "a".repeat(1601);
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            message("12", "hello", "transactional"),
            400,
            "invalid_recipient",
        ),
        (
            message("not a number", "hello", "transactional"),
            400,
            "invalid_recipient",
        ),
        (
            json!({ "to": "+14155550123", "from": "+12025550199", "body": "hi", "purpose": "transactional" }),
            403,
            "sender_not_allowed",
        ),
        (
            message("+14155550123", "hello", "marketing"),
            403,
            "purpose_not_allowed",
        ),
        (
            message("+14155550123", "hello", "spam"),
            400,
            "invalid_purpose",
        ),
        (
            message("+14155550123", &too_long, "transactional"),
            400,
            "invalid_body",
        ),
        (
            message("+14155550123", "", "transactional"),
            400,
            "invalid_body",
        ),
        (json!({ "to": "+14155550123" }), 400, "invalid_request"),
        (
            json!({ "to": "+14155550123", "from": ACME_SENDER, "body": "hi", "purpose": "transactional", "extra": 1 }),
            400,
            "invalid_request",
        ),
    ];
    for (request, status, code) in cases {
        let response = app.send(&token, &request).await;
        assert_eq!(response.status(), status, "{code}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].is_string());
    }

    let oversized = app
        .client
        .post(app.url("/v1/messages"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"to":"+14155550123","from":"{ACME_SENDER}","purpose":"transactional","body":"{}"}}"#,
            "a".repeat(70 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert_eq!(error_code(oversized).await, "payload_too_large");

    assert!(gateway.requests().is_empty());
}

#[tokio::test]
async fn denied_messages_are_recorded_with_their_reasons() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send messages:read");
    let response = app
        .send(&token, &message("+14155550123", "buy now", "marketing"))
        .await;
    assert_eq!(response.status(), 403);
    let denial: Value = response.json().await.unwrap();
    assert_eq!(denial["error"]["reasons"][0]["code"], "purpose_not_allowed");
    let id = denial["error"]["id"].as_str().unwrap();

    let record: Value = app
        .get(&token, &format!("/v1/messages/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "denied");
    assert_eq!(record["reasons"][0]["code"], "purpose_not_allowed");
    assert!(gateway.requests().is_empty());
}

async fn assert_failed_send(app: &TestApp, token: &str, expected: &str) {
    let response = app
        .send(token, &message("+14155550123", "hello", "transactional"))
        .await;
    assert_eq!(response.status(), 502, "{expected}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], expected);
    let id = body["error"]["id"].as_str().unwrap();
    let record: Value = app
        .get(token, &format!("/v1/messages/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error_code"], expected);
}

#[tokio::test]
async fn a_failing_gateway_gives_502_and_a_failed_record_and_the_server_keeps_serving() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send messages:read");

    gateway.set_mode(GatewayMode::Fail(500));
    assert_failed_send(&app, &token, "upstream_rejected").await;

    gateway.set_mode(GatewayMode::Stall(std::time::Duration::from_secs(3)));
    assert_failed_send(&app, &token, "upstream_timeout").await;

    gateway.set_mode(GatewayMode::Accept);
    let response = app
        .send(&token, &message("+14155550123", "hello", "transactional"))
        .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn an_unreachable_gateway_gives_502_and_a_failed_record() {
    let app = TestApp::spawn(&closed_port_url().await).await;
    let token = app.token("acme", "messages:send messages:read");
    assert_failed_send(&app, &token, "upstream_unavailable").await;
    assert_failed_send(&app, &token, "upstream_unavailable").await;
    let health = reqwest::get(format!("http://{}/healthz", app.admin))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn the_sandbox_records_messages_per_tenant_for_admins() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("beta", "messages:send messages:read admin");
    let response = app
        .send(
            &token,
            &json!({ "to": "+1 415 555 0199", "from": "+12025550111", "body": "Hi from beta", "purpose": "transactional" }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let sent: Value = response.json().await.unwrap();
    assert_eq!(sent["upstream"]["name"], "sandbox");

    let listed: Value = app
        .get(&token, "/v1/sandbox/messages")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["messages"].as_array().unwrap().len(), 1);
    assert_eq!(listed["messages"][0]["body"], "Hi from beta");
    assert_eq!(listed["messages"][0]["to"], "+14155550199");
    assert_eq!(listed["messages"][0]["message_id"], sent["id"]);

    // Other tenants see neither the sandbox messages nor the records.
    let acme = app.token("acme", "messages:read admin");
    let theirs: Value = app
        .get(&acme, "/v1/sandbox/messages")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["messages"], json!([]));
    let id = sent["id"].as_str().unwrap();
    let response = app.get(&acme, &format!("/v1/messages/{id}")).await;
    assert_eq!(response.status(), 404);

    // Listing needs the admin scope.
    let sender_only = app.token("beta", "messages:send");
    let response = app.get(&sender_only, "/v1/sandbox/messages").await;
    assert_eq!(response.status(), 403);
    assert!(gateway.requests().is_empty());
}

/// A message between its record and its gateway's answer is in doubt (`consentry messages
/// in-doubt` lists such messages after a crash); once the answer is recorded it is not.
#[tokio::test]
async fn a_message_is_in_doubt_only_until_its_gateways_answer_is_recorded() {
    let gateway = FakeGateway::start().await;
    gateway.set_mode(GatewayMode::Stall(std::time::Duration::from_millis(600)));
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    // A denied message is never in doubt: nothing was to reach the gateway.
    let denied = app
        .send(&token, &message("+14155550190", "Sale today", "marketing"))
        .await;
    assert_eq!(denied.status(), 403);

    let sending = {
        let (client, url, token) = (app.client.clone(), app.url("/v1/messages"), token.clone());
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&message(
                    "+14155550191",
                    "Your code is 1234",
                    "transactional",
                ))
                .send()
                .await
                .unwrap()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gateway.requests().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing reached the gateway"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let waiting = in_doubt(&app).await;
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0].tenant, "acme");
    assert_eq!(waiting[0].allowed_by, "send");

    let answer: Value = sending.await.unwrap().json().await.unwrap();
    assert_eq!(answer["status"], "sent", "{answer}");
    assert_eq!(waiting[0].id, answer["id"].as_str().unwrap());
    assert_eq!(in_doubt(&app).await, []);
}

/// Single sends that arrive together are decided together (`flow::combine`): one group holds
/// the sends of several tokens, and each is still decided under its own token's bounds and
/// answered on its own.
#[tokio::test]
async fn sends_decided_together_keep_each_tokens_bounds() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let full = app.token("acme", "messages:send");
    let mut narrowed = claims("consentry-dev", "acme", "messages:send");
    narrowed["senders"] = json!(["ACME"]);
    let narrow = app.sign_dev(&json!({ "alg": "EdDSA", "kid": "dev" }), &narrowed);
    // One h2 connection: the sends arrive at once.
    let cert = std::fs::read(app.data_dir().join("tls/cert.pem")).unwrap();
    let h2 = client(&cert, Some(http::Version::HTTP_2));
    let sends = (0..64).map(|i| {
        let token = if i % 2 == 0 { &full } else { &narrow };
        let request = h2
            .post(app.url("/v1/messages"))
            .bearer_auth(token)
            .json(&message(
                &format!("+1415555{:04}", 100 + i),
                "code 1234",
                "transactional",
            ))
            .send();
        async move { (i, request.await.unwrap()) }
    });
    for (i, response) in futures_util::future::join_all(sends).await {
        if i % 2 == 0 {
            assert_eq!(response.status(), 201, "send {i}");
        } else {
            assert_eq!(error_code(response).await, "sender_not_allowed", "send {i}");
        }
    }
    assert_eq!(gateway.requests().len(), 32);

    let metrics = app.metrics().await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} is not on /metrics:\n{metrics}"))
    };
    let (groups, sends) = (
        value("consentry_send_group_size_count"),
        value("consentry_send_group_size_sum"),
    );
    assert_eq!(sends, 64.0);
    assert!(
        groups < sends,
        "{groups} groups for {sends} sends: none was shared"
    );
}
