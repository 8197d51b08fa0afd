//! Pacing: an upstream's configured rate holds its sends, the ones over it wait durably in the
//! queue and leave at their instants, one interval apart; a gateway's 429 pauses the upstream
//! and the throttled message is sent again after the pause, never lost and never sent twice.

use serde_json::Value;

use crate::helpers::*;

const SCOPES: &str = "messages:send messages:read";

/// An application whose `gw` upstream takes `rate`.
async fn paced_app(gateway: &FakeGateway, folder: &std::path::Path, rate: &str) -> TestApp {
    let config = test_config(folder, &gateway.url()).replacen(
        "name = \"gw\"\n",
        &format!("name = \"gw\"\nrate = {rate}\n"),
        1,
    );
    assert!(
        config.contains("rate = "),
        "the gw upstream is in the test config"
    );
    TestApp::spawn_with(folder, &config).await
}

fn at(text: &Value) -> jiff::Timestamp {
    text.as_str().unwrap().parse().unwrap()
}

async fn release_at(app: &TestApp, instant: jiff::Timestamp) {
    app.state.clock.set(instant);
    consentry::scheduler::release_due(&app.state).await.unwrap();
}

#[tokio::test]
async fn sends_over_the_rate_wait_in_the_queue_and_leave_one_interval_apart() {
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let app = paced_app(&gateway, folder.path(), "{ per_second = 2 }").await;
    let token = app.token("acme", SCOPES);

    let mut answers = Vec::new();
    for index in 0..5 {
        let to = format!("+1415555017{index}");
        let response = app
            .send(&token, &message(&to, "Your code is 1234", "transactional"))
            .await;
        answers.push((
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        ));
    }
    assert_eq!(
        answers[0].0, 201,
        "the first goes at once: {:?}",
        answers[0]
    );
    let mut instants = Vec::new();
    for (status, answer) in &answers[1..] {
        assert_eq!(*status, 202, "{answer}");
        assert_eq!(answer["status"], "scheduled");
        assert_eq!(answer["reasons"][0]["code"], "paced", "{answer}");
        instants.push(at(&answer["release_at"]));
    }
    // Reserved one interval (500 ms) apart, whenever each request came.
    for pair in instants.windows(2) {
        assert_eq!(
            pair[1].duration_since(pair[0]).as_millis(),
            500,
            "{instants:?}"
        );
    }
    assert_eq!(gateway.requests().len(), 1);

    // Each leaves at its instant, once, and no sooner.
    for (index, instant) in instants.iter().enumerate() {
        release_at(&app, *instant - jiff::SignedDuration::from_millis(400)).await;
        assert_eq!(
            gateway.requests().len(),
            1 + index,
            "not before its instant"
        );
        release_at(&app, *instant).await;
        let id = answers[index + 1].1["id"].as_str().unwrap();
        wait_for_status(&app, &token, id, "sent").await;
        assert_eq!(gateway.requests().len(), 2 + index);
    }
    let requests = gateway.requests();
    for (_, answer) in &answers {
        let sent = requests
            .iter()
            .filter(|request| request.body["id"] == answer["id"])
            .count();
        assert_eq!(sent, 1, "{answer} sent once");
    }

    // A Twilio SDK sees a paced message as Twilio shows one waiting for throughput: queued.
    let twilio = |to: &'static str| {
        app.client
            .post(app.url("/2010-04-01/Accounts/AC00000000000000000000000000000009/Messages.json"))
            .basic_auth("AC00000000000000000000000000000009", Some(&token))
            .header("x-consentry-purpose", "transactional")
            .form(&[("To", to), ("From", ACME_SENDER), ("Body", "hi")])
            .send()
    };
    let first: Value = twilio("+14155550179").await.unwrap().json().await.unwrap();
    let response = twilio("+14155550178").await.unwrap();
    assert_eq!(response.status(), 201);
    let second: Value = response.json().await.unwrap();
    assert!(
        [first["status"].as_str(), second["status"].as_str()].contains(&Some("queued")),
        "{first} {second}"
    );

    // The queue and the rate on /metrics.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("consentry_paced_rate_per_second{upstream=\"gw\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("consentry_paced_waiting{upstream=\"gw\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stopping_instance_does_not_wait_for_a_paced_backlog_to_drain() {
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let app = paced_app(&gateway, folder.path(), "{ per_second = 1 }").await;
    let token = app.token("acme", SCOPES);
    // A campaign far over the rate: all but the first wait in the queue, each one interval
    // after the last.
    const RECIPIENTS: usize = 3000;
    let recipients: Vec<Value> = (0..RECIPIENTS)
        .map(|i| serde_json::json!({ "to": format!("+1415{:07}", 2_000_000 + i) }))
        .collect();
    let batch = serde_json::json!({
        "from": ACME_SENDER, "body": "Your order has shipped", "purpose": "transactional",
        "recipients": recipients,
    });
    let answer = app
        .client
        .post(app.url("/v1/messages/batch"))
        .bearer_auth(&token)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.unwrap();
    assert!(
        text.matches("\"status\":\"scheduled\"").count() >= RECIPIENTS - 1,
        "{text:.300}"
    );

    // The whole backlog comes due at once (as after a long restart): its forwards keep the
    // pace, one a second, for most of an hour. The instance is stopped once they have begun.
    app.state
        .clock
        .set(app.state.clock.now() + jiff::SignedDuration::from_hours(2));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while gateway.requests().len() < 4 {
        assert!(std::time::Instant::now() < deadline, "nothing was released");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let stopping = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(30), app.stop())
        .await
        .expect("the instance stopped");
    // A release waits for its forward's turn before it is decided, so nothing waits on the
    // pace once the stop comes: what waited is left queued.
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(5),
        "stopping took {:?}",
        stopping.elapsed()
    );
    // It finished what it had begun and left the rest queued, for its restart: no release
    // is recorded as allowed without its forward's outcome.
    let sent = gateway.requests().len();
    assert!(
        sent < RECIPIENTS / 2,
        "{sent} of {RECIPIENTS} were released before the instance stopped"
    );
    let db = TestDatabase::for_folder(folder.path());
    let unsent = db
        .count(
            "SELECT count(*) FROM message_releases r WHERE r.decision = 'allowed' AND NOT \
             EXISTS (SELECT 1 FROM message_outcomes o WHERE o.message_id = r.message_id)",
        )
        .await;
    assert_eq!(unsent, 0);
    let allowed = db
        .count("SELECT count(*) FROM message_releases WHERE decision = 'allowed'")
        .await;
    let at_once = db
        .count("SELECT count(*) FROM messages WHERE decision = 'allowed'")
        .await;
    assert_eq!(
        (allowed + at_once) as usize,
        sent,
        "each message allowed, at once or at its release, was forwarded once"
    );
    // What it claimed and did not release is back in the queue, for its restart or another
    // instance to release at once, not held until the claim's five-minute lease lapses.
    let held = db
        .count(
            "SELECT count(*) FROM deferred_messages WHERE NOT done AND claimed_at_us IS NOT NULL",
        )
        .await;
    assert_eq!(held, 0, "claims left behind by the stop");
    let queued = db
        .count("SELECT count(*) FROM deferred_messages WHERE NOT done")
        .await;
    assert!(queued as usize >= RECIPIENTS - sent, "{queued} left queued");
}

#[tokio::test]
async fn a_429_storm_slows_the_upstream_and_loses_no_message() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", SCOPES);

    gateway.set_mode(GatewayMode::Throttle(30));
    let mut ids = Vec::new();
    for index in 0..4 {
        let to = format!("+1415555018{index}");
        let response = app
            .send(&token, &message(&to, "Your code is 1234", "transactional"))
            .await;
        assert_eq!(response.status(), 202);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "scheduled", "{answer}");
        ids.push(answer["id"].as_str().unwrap().to_owned());
        if index == 0 {
            // The first one met the 429, and is queued for the end of the pause it asked.
            assert_eq!(
                answer["reasons"][0]["code"], "gateway_throttled",
                "{answer}"
            );
        } else {
            // The next ones wait for the pause without calling the gateway.
            assert_eq!(answer["reasons"][0]["code"], "paced", "{answer}");
        }
        let record = status_of(&app, &token, &ids[index]).await;
        assert_eq!(record["status"], "scheduled", "{record}");
    }
    assert_eq!(
        gateway.requests().len(),
        1,
        "one call met the 429; the rest waited"
    );

    // The gateway recovers; after the pause every message is sent, each exactly once.
    gateway.set_mode(GatewayMode::Accept);
    let after = app.state.clock.now() + jiff::SignedDuration::from_secs(31);
    release_at(&app, after).await;
    for id in &ids {
        wait_for_status(&app, &token, id, "sent").await;
    }
    let requests = gateway.requests();
    for id in &ids {
        let accepted = requests[1..]
            .iter()
            .filter(|request| request.body["id"] == id.as_str())
            .count();
        assert_eq!(accepted, 1, "{id} sent once after the pause");
    }
    assert_eq!(requests.len(), 1 + ids.len());
}
