//! Recipients' replies: STOP, START and HELP through gateway webhooks and the sandbox.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const RECIPIENT: &str = "+14155550123";

fn tw_send(to: &str) -> Value {
    json!({ "to": to, "from": TW_SENDER, "body": "Your order shipped", "purpose": "transactional" })
}

fn twilio_reply<'a>(sid: &'a str, body: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("MessageSid", sid),
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("From", RECIPIENT),
        ("To", TW_SENDER),
        ("Body", body),
        ("NumMedia", "0"),
    ]
}

async fn twiml_messages(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/xml");
    let xml = response.text().await.unwrap();
    xml.split("<Message>")
        .skip(1)
        .map(|part| part.split("</Message>").next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn stop_through_twilio_blocks_the_next_send_and_is_confirmed_once() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("tw-shop", "messages:send consents:read");
    assert_eq!(app.send(&token, &tw_send(RECIPIENT)).await.status(), 201);

    let answers = twiml_messages(
        app.twilio_webhook(&twilio_reply("SM1", "Stop please"), None)
            .await,
    )
    .await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(
        answers[0].starts_with("TW Shop: You are unsubscribed"),
        "{answers:?}"
    );

    let response = app.send(&token, &tw_send("(415) 555-0123")).await;
    assert_eq!(response.status(), 403);
    assert_eq!(error_code(response).await, "opted_out");

    // The same webhook again (Twilio retries): one event, no second confirmation.
    let again = twiml_messages(
        app.twilio_webhook(&twilio_reply("SM1", "Stop please"), None)
            .await,
    )
    .await;
    assert!(again.is_empty());
    let consents: Value = app
        .get(&token, &format!("/v1/consents/{RECIPIENT}"))
        .await
        .json()
        .await
        .unwrap();
    let history = consents["history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["method"], "keyword");
    assert_eq!(history[0]["evidence"]["inbound_message_id"], "SM1");
    assert_eq!(history[0]["evidence"]["extra"]["text"], "Stop please");
    assert_eq!(history[0]["evidence"]["extra"]["to"], TW_SENDER);
    let confirmations = app
        .count("SELECT count(*) FROM messages WHERE reply_kind = 'opt_out_confirmation'")
        .await;
    assert_eq!(confirmations, 1);

    // HELP answers the help text and changes nothing.
    let help = twiml_messages(app.twilio_webhook(&twilio_reply("SM2", "HELP"), None).await).await;
    assert_eq!(help.len(), 1);
    assert!(
        help[0].contains("Call 800-555-0199") && help[0].contains("Msg &amp; data rates may apply")
    );
    assert_eq!(app.send(&token, &tw_send(RECIPIENT)).await.status(), 403);

    // START opts back in, with a confirmation.
    let start = twiml_messages(
        app.twilio_webhook(&twilio_reply("SM3", "START"), None)
            .await,
    )
    .await;
    assert_eq!(start.len(), 1);
    assert!(start[0].contains("subscribed again"));
    assert_eq!(app.send(&token, &tw_send(RECIPIENT)).await.status(), 201);
    let consents: Value = app
        .get(&token, &format!("/v1/consents/{RECIPIENT}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(consents["history"].as_array().unwrap().len(), 2);

    // Only the two allowed sends reached the gateway; replies rode in the TwiML answers.
    assert_eq!(gateway.requests().len(), 2);
}

#[tokio::test]
async fn bad_webhooks_are_refused_and_leave_no_trace() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let stop = twilio_reply("SM9", "STOP");

    let unsigned = app.twilio_webhook(&stop, Some("")).await;
    assert_eq!(unsigned.status(), 401);
    assert_eq!(error_code(unsigned).await, "missing_signature");
    let forged = app
        .twilio_webhook(&stop, Some("GvWf1cFY/Q7PnoempGyD5oXAezc="))
        .await;
    assert_eq!(error_code(forged).await, "invalid_signature");
    // Signed for one text, delivered with another.
    let owned: Vec<(String, String)> = stop
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let signature = consentry::dialect::twilio::sign(TWILIO_TOKEN, TWILIO_URL, &owned);
    let altered = app
        .twilio_webhook(&twilio_reply("SM9", "START"), Some(&signature))
        .await;
    assert_eq!(error_code(altered).await, "invalid_signature");
    let mut extra = stop.clone();
    extra.push(("OptOutType", "STOP"));
    let extended = app.twilio_webhook(&extra, Some(&signature)).await;
    assert_eq!(error_code(extended).await, "invalid_signature");
    // Signed by the right key for another URL.
    let elsewhere = consentry::dialect::twilio::sign(
        TWILIO_TOKEN,
        "https://evil.example/v1/inbound/tw",
        &owned,
    );
    assert_eq!(
        app.twilio_webhook(&stop, Some(&elsewhere)).await.status(),
        401
    );

    let now = jiff::Timestamp::now().as_second();
    let stale = app
        .telnyx_webhook("tx-9", RECIPIENT, "STOP", now - 3600)
        .await;
    assert_eq!(stale.status(), 401);
    assert_eq!(error_code(stale).await, "stale_webhook");

    let generic = app
        .client
        .post(app.url("/v1/inbound/gw"))
        .header(
            "x-webhook-signature",
            consentry::dialect::generic::sign(b"wrong", b"{}"),
        )
        .body(r#"{"id":"g-1","from":"+14155550123","to":"+12025550100","body":"STOP"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(generic.status(), 401);
    let unknown = app
        .client
        .post(app.url("/v1/inbound/nope"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    assert_eq!(app.count("SELECT count(*) FROM inbound_messages").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM consent_events").await, 0);
}

#[tokio::test]
async fn a_telnyx_stop_is_recorded_and_confirmed_through_the_send_api() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let now = jiff::Timestamp::now().as_second();
    let response = app.telnyx_webhook("tx-1", RECIPIENT, "ARRET", now).await;
    assert_eq!(response.status(), 200);

    let requests = gateway.requests();
    assert_eq!(requests.len(), 1, "one confirmation through Telnyx's API");
    assert_eq!(requests[0].path, "/v2/messages");
    assert_eq!(
        requests[0].headers["authorization"],
        format!("Bearer {TELNYX_KEY}").as_str()
    );
    assert_eq!(requests[0].body["to"], RECIPIENT);
    assert_eq!(requests[0].body["from"], TX_SENDER);
    let text = requests[0].body["text"].as_str().unwrap();
    assert!(
        text.starts_with("TX Shop : Vous êtes désinscrit"),
        "answered in French: {text}"
    );

    let token = app.token("tx-shop", "messages:send");
    let send =
        json!({ "to": RECIPIENT, "from": TX_SENDER, "body": "hi", "purpose": "transactional" });
    let response = app.send(&token, &send).await;
    assert_eq!(error_code(response).await, "opted_out");
    assert_eq!(gateway.requests().len(), 1);
}

#[tokio::test]
async fn a_generic_gateway_webhook_verifies_its_hmac() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let body = json!({ "id": "g-1", "from": RECIPIENT, "to": ACME_SENDER, "body": "unsubscribe" })
        .to_string();
    let response = app
        .client
        .post(app.url("/v1/inbound/gw"))
        .header(
            "x-webhook-signature",
            consentry::dialect::generic::sign(GW_WEBHOOK_SECRET.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token = app.token("acme", "messages:send");
    let response = app
        .send(&token, &message(RECIPIENT, "hi", "transactional"))
        .await;
    assert_eq!(error_code(response).await, "opted_out");
}

#[tokio::test]
async fn sandbox_replies_run_the_webhook_path() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("beta", "messages:send admin");
    let send =
        json!({ "to": RECIPIENT, "from": BETA_SENDER, "body": "hi", "purpose": "transactional" });
    assert_eq!(app.send(&token, &send).await.status(), 201);

    assert_eq!(
        app.sandbox_reply(RECIPIENT, "please stop texting me")
            .await
            .status(),
        200
    );
    assert_eq!(error_code(app.send(&token, &send).await).await, "opted_out");
    let sandbox: Value = app
        .get(&token, "/v1/sandbox/messages")
        .await
        .json()
        .await
        .unwrap();
    let bodies: Vec<&str> = sandbox["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(bodies[1].starts_with("Beta: You are unsubscribed"));
}

#[tokio::test]
async fn uncertain_replies_wait_for_review_and_block_until_resolved() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("beta", "messages:send consents:read consents:write");
    let send =
        json!({ "to": RECIPIENT, "from": BETA_SENDER, "body": "hi", "purpose": "transactional" });

    app.sandbox_reply(RECIPIENT, "Can you stop by tomorrow?")
        .await;
    assert_eq!(
        error_code(app.send(&token, &send).await).await,
        "pending_review"
    );
    let reviews: Value = app.get(&token, "/v1/reviews").await.json().await.unwrap();
    let review = reviews["reviews"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(reviews["reviews"][0]["recipient"], "+1415555****");

    let resolve = |id: String, outcome: &'static str| {
        let app = &app;
        let token = token.clone();
        async move {
            app.client
                .post(app.url(&format!("/v1/reviews/{id}/resolve")))
                .bearer_auth(token)
                .json(&json!({ "outcome": outcome }))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(resolve(review.clone(), "not_opt_out").await.status(), 200);
    assert_eq!(resolve(review, "opt_out").await.status(), 409);
    assert_eq!(app.send(&token, &send).await.status(), 201);

    app.sandbox_reply(RECIPIENT, "🛑").await;
    let reviews: Value = app.get(&token, "/v1/reviews").await.json().await.unwrap();
    let review = reviews["reviews"][0]["id"].as_str().unwrap().to_owned();
    let resolved: Value = resolve(review, "opt_out").await.json().await.unwrap();
    assert!(resolved["consent_event"].is_string());
    assert_eq!(error_code(app.send(&token, &send).await).await, "opted_out");
}

#[tokio::test]
async fn the_tenant_webhook_gets_each_reply_once_after_it_comes_back() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let tenant_app = app.tenant_app.clone().unwrap();
    tenant_app.set_mode(GatewayMode::Fail(503));
    app.sandbox_reply(RECIPIENT, "What time do you open?").await;

    // Down: retried with backoff.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tenant_app.requests().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tenant_app.requests().len() >= 3, "retried while down");
    tenant_app.set_mode(GatewayMode::Accept);
    let failed = tenant_app.requests().len();

    // Up: delivered, then never again.
    while tenant_app.requests().len() == failed && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let requests = tenant_app.requests();
    assert_eq!(
        requests.len(),
        failed + 1,
        "delivered exactly once after recovery"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM webhook_outbox WHERE delivered_at_us IS NOT NULL")
            .await,
        1
    );

    let delivered = requests.last().unwrap();
    assert_eq!(delivered.body["type"], "inbound_message");
    assert_eq!(delivered.body["from"], RECIPIENT);
    assert_eq!(delivered.body["body"], "What time do you open?");
    assert_eq!(delivered.body["classification"]["class"], "other");
    let timestamp: i64 = delivered.headers["x-consentry-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let expected = consentry::outbox::signature(
        TENANT_WEBHOOK_SECRET.as_bytes(),
        timestamp,
        delivered.body.to_string().as_bytes(),
    );
    assert_eq!(
        delivered.headers["x-consentry-signature"],
        expected.as_str()
    );
    assert_eq!(
        delivered.headers["x-consentry-delivery"], requests[0].headers["x-consentry-delivery"],
        "every attempt carries the same delivery id"
    );
}

#[tokio::test]
async fn a_stop_to_a_brands_own_number_blocks_what_that_number_sends() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", "messages:send consents:write");
    let mut opt_in = written_opt_in(RECIPIENT);
    opt_in["occurred_at"] = json!("2026-01-01T00:00:00Z");
    assert_eq!(app.consent(&token, &opt_in).await.status(), 201);

    let body =
        json!({ "id": "g-7", "from": RECIPIENT, "to": SHOES_SENDER, "body": "STOP" }).to_string();
    let response = app
        .client
        .post(app.url("/v1/inbound/gw"))
        .header(
            "x-webhook-signature",
            consentry::dialect::generic::sign(GW_WEBHOOK_SECRET.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // From the brand's number, with or without naming the brand: blocked.
    let from_shoes =
        json!({ "to": RECIPIENT, "from": SHOES_SENDER, "body": "Sale", "purpose": "marketing" });
    assert_eq!(
        error_code(app.send(&token, &from_shoes).await).await,
        "opted_out"
    );
    let mut named = from_shoes.clone();
    named["brand"] = json!("hats");
    assert_eq!(
        error_code(app.send(&token, &named).await).await,
        "unknown_scope"
    );
    // The tenant's shared number, for the other brand: still allowed (the STOP named shoes).
    let hats = shop_message(RECIPIENT, "marketing", Some("hats"), None);
    assert_eq!(app.send(&token, &hats).await.status(), 201);
}

#[tokio::test]
async fn a_sandbox_reply_reaches_only_the_callers_tenant() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    // acme's admin writes STOP to beta's sandbox number.
    let acme = app.token("acme", "admin");
    let response = app
        .client
        .post(app.url("/v1/sandbox/replies"))
        .bearer_auth(acme)
        .json(&json!({ "from": RECIPIENT, "to": BETA_SENDER, "body": "STOP" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let beta = app.token("beta", "messages:send");
    let send =
        json!({ "to": RECIPIENT, "from": BETA_SENDER, "body": "hi", "purpose": "transactional" });
    assert_eq!(
        app.send(&beta, &send).await.status(),
        201,
        "beta's ledger is untouched"
    );
}
