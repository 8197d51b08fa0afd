//! Quiet hours in the recipient's time zone: deferral, release, cancellation, the dry run.

use serde_json::{Value, json};

use crate::helpers::*;

const MIAMI: &str = "+13055550123";
const SCOPES: &str = "messages:send messages:read consents:write consents:read";

#[tokio::test]
async fn marketing_to_miami_at_2030_is_deferred_to_0800_and_released_then() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;

    app.state.clock.set("2026-11-19T01:30:00Z".parse().unwrap()); // Wed 20:30 in Miami
    let response = app
        .send(&token, &shop_message(MIAMI, "marketing", None, None))
        .await;
    assert_eq!(response.status(), 202);
    let scheduled: Value = response.json().await.unwrap();
    assert_eq!(scheduled["status"], "scheduled");
    assert_eq!(scheduled["release_at"], "2026-11-19T13:00:00Z"); // Thu 08:00 in Miami
    assert_eq!(scheduled["reasons"][0]["code"], "outside_window");
    let id = scheduled["id"].as_str().unwrap();
    assert_eq!(status_of(&app, &token, id).await["status"], "scheduled");

    // Not yet: nothing leaves before 08:00.
    app.state.clock.set("2026-11-19T12:59:00Z".parse().unwrap());
    consentry::scheduler::release_due(&app.state).await.unwrap();
    assert!(gateway.requests().is_empty());

    app.state.clock.set("2026-11-19T13:00:01Z".parse().unwrap());
    consentry::scheduler::release_due(&app.state).await.unwrap();
    let record = wait_for_status(&app, &token, id, "sent").await;
    assert_eq!(record["decision"], "deferred");
    let requests = gateway.requests();
    assert_eq!(requests.len(), 1, "released exactly once");
    assert_eq!(requests[0].body["id"], id);
    assert_eq!(requests[0].body["to"], MIAMI);
    // Another pass releases nothing more.
    consentry::scheduler::release_due(&app.state).await.unwrap();
    assert_eq!(gateway.requests().len(), 1);

    // The release is a decision of its own: its leaf names the opt-in it rested on, and
    // `audit verify` replays it against the consent before it in the log.
    let named = app
        .count(
            "SELECT count(*) FROM message_releases WHERE basis LIKE '%\"consent_event\":\"evt_%'",
        )
        .await;
    assert_eq!(named, 1);
    let auditor = app.token("shop", "audit:read");
    crate::audit::checkpoint_covering_all(&app, &auditor).await;
    let (ok, said) = crate::audit::verify(&app);
    assert!(ok && said.contains("1 decisions replayed"), "{said}");
}

#[tokio::test]
async fn an_opt_out_before_the_release_cancels_the_message() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;
    app.state.clock.set("2026-11-19T01:30:00Z".parse().unwrap());
    let scheduled: Value = app
        .send(&token, &shop_message(MIAMI, "marketing", None, None))
        .await
        .json()
        .await
        .unwrap();
    let id = scheduled["id"].as_str().unwrap();

    app.state.clock.set("2026-11-19T02:00:00Z".parse().unwrap());
    let stop = json!({ "number": MIAMI, "action": "opt_out", "method": "keyword" });
    assert_eq!(app.consent(&token, &stop).await.status(), 201);

    app.state.clock.set("2026-11-19T13:00:01Z".parse().unwrap());
    consentry::scheduler::release_due(&app.state).await.unwrap();
    let record = wait_for_status(&app, &token, id, "cancelled").await;
    assert_eq!(record["reasons"][0]["code"], "opted_out");
    assert!(gateway.requests().is_empty());
    // The deferral and the denial at release each name the policy set they were decided under.
    let versioned = "LIKE '{\"policies\":\"________________\"}'";
    let deferred = app
        .count(&format!(
            "SELECT count(*) FROM messages WHERE decision = 'deferred' AND basis {versioned}"
        ))
        .await;
    let denied = app
        .count(&format!(
            "SELECT count(*) FROM message_releases WHERE decision = 'denied' AND basis {versioned}"
        ))
        .await;
    assert_eq!((deferred, denied), (1, 1));
}

/// Messages held overnight are released in groups: those to one number are decided one after
/// the other, each seeing the ones before it under its cap, beside another number's.
#[tokio::test]
async fn messages_held_overnight_for_one_number_are_released_under_its_cap() {
    const ORLANDO: &str = "+14075550123";
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;
    opt_in(&app, &token, ORLANDO).await;
    app.state.clock.set("2026-11-19T01:30:00Z".parse().unwrap()); // Wed 20:30 in Florida
    let mut held = Vec::new();
    for to in [MIAMI, MIAMI, ORLANDO, MIAMI, MIAMI, MIAMI] {
        let response = app
            .send(&token, &shop_message(to, "marketing", None, None))
            .await;
        assert_eq!(response.status(), 202);
        let scheduled: Value = response.json().await.unwrap();
        held.push(scheduled["id"].as_str().unwrap().to_owned());
    }

    app.state.clock.set("2026-11-19T13:00:01Z".parse().unwrap());
    consentry::scheduler::release_due(&app.state).await.unwrap();
    let mut statuses = Vec::new();
    for id in &held {
        let record = status_of(&app, &token, id).await;
        if record["status"] == "cancelled" {
            assert_eq!(record["reasons"][0]["code"], "frequency_cap", "{record}");
        }
        statuses.push(record["status"].as_str().unwrap().to_owned());
    }
    // Florida's cap: three marketing messages a day to a number; Orlando's is its own.
    let sent = |to: &str| {
        gateway
            .requests()
            .iter()
            .filter(|request| request.body["to"] == to)
            .count()
    };
    assert_eq!((sent(MIAMI), sent(ORLANDO)), (3, 1), "{statuses:?}");
    assert_eq!(statuses[2], "sent");
    assert_eq!(
        statuses
            .iter()
            .filter(|status| *status == "cancelled")
            .count(),
        2,
        "{statuses:?}"
    );
    // Each release is a leaf of its own; `audit verify` replays the four that let a message
    // through against the opt-ins before them.
    let releases = app
        .count("SELECT count(*) FROM log_leaves WHERE kind = 'release'")
        .await;
    assert_eq!(releases, 6);
    let auditor = app.token("shop", "audit:read");
    crate::audit::checkpoint_covering_all(&app, &auditor).await;
    let (ok, said) = crate::audit::verify(&app);
    assert!(ok && said.contains("4 decisions replayed"), "{said}");
}

#[tokio::test]
async fn a_restart_before_the_release_loses_nothing() {
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let config = test_config(folder.path(), &gateway.url());

    let first = TestApp::spawn_with(folder.path(), &config).await;
    let token = first.token("shop", SCOPES);
    opt_in(&first, &token, MIAMI).await;
    first
        .state
        .clock
        .set("2026-11-19T01:30:00Z".parse().unwrap());
    let scheduled: Value = first
        .send(&token, &shop_message(MIAMI, "marketing", None, None))
        .await
        .json()
        .await
        .unwrap();
    let id = scheduled["id"].as_str().unwrap().to_owned();
    first.stop().await;

    let second = TestApp::spawn_with(folder.path(), &config).await;
    second
        .state
        .clock
        .set("2026-11-19T13:00:01Z".parse().unwrap());
    consentry::scheduler::release_due(&second.state)
        .await
        .unwrap();
    wait_for_status(&second, &token, &id, "sent").await;
    assert_eq!(gateway.requests().len(), 1);
}

#[tokio::test]
async fn the_dry_run_explains_a_quiet_hours_decision_and_records_nothing() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;
    let mut request = shop_message(MIAMI, "marketing", None, None);
    request["at"] = json!("2026-11-19T01:30:00Z");
    let response = app
        .client
        .post(app.url("/v1/decisions"))
        .bearer_auth(&token)
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["decision"], "defer");
    assert_eq!(answer["release_at"], "2026-11-19T13:00:00Z");
    assert_eq!(answer["location"]["regions"], json!(["US-FL"]));
    assert_eq!(answer["location"]["zones"], json!(["America/New_York"]));
    let florida = answer["trace"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["rule"] == "us-fl-hours")
        .expect("the Florida rule is in the trace");
    assert_eq!(florida["result"], "outside the window");
    assert!(
        florida["local_time"].as_str().unwrap().contains("20:30"),
        "{florida}"
    );
    assert!(florida["source"].as_str().unwrap().contains("501.059"));

    // The same message in the afternoon is allowed; at 10 p.m. to a Florida number the cap is
    // still counted from real sends only: the dry run sent nothing.
    request["at"] = json!("2026-11-18T18:00:00Z");
    let answer: Value = app
        .client
        .post(app.url("/v1/decisions"))
        .bearer_auth(&token)
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["decision"], "allow");
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 0);
    assert!(gateway.requests().is_empty());
}

#[tokio::test]
async fn the_dry_run_takes_only_rfc_3339_times() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;
    let ask = |at: &str| {
        let mut request = shop_message(MIAMI, "marketing", None, None);
        request["at"] = json!(at);
        app.client
            .post(app.url("/v1/decisions"))
            .bearer_auth(&token)
            .json(&request)
            .send()
    };
    // The widest offsets RFC 3339 allows: the same instant, 12:58 in Miami.
    for at in ["2026-11-18T17:59:00-23:59", "2026-11-20T17:57:00+23:59"] {
        let response = ask(at).await.unwrap();
        assert_eq!(response.status(), 200, "{at}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["at"], "2026-11-19T17:58:00Z", "{at}");
        assert_eq!(answer["decision"], "allow", "{at}");
    }
    // Past ±23:59, or not RFC 3339 at all: the API's 400, naming the field.
    for at in [
        "2026-11-19T01:30:00+25:00",
        "2026-11-19T01:30:00-24:00",
        "2026-11-19T01:30:00+05:60",
        "2026-11-19T01:30:00+0500",
        "2026-11-19T01:30Z",
        "2026-11-19T01:30:00",
    ] {
        let response = ask(at).await.unwrap();
        assert_eq!(response.status(), 400, "{at}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_at", "{at}: {body}");
        assert_eq!(body["error"]["field"], "at", "{at}");
        assert!(body["error"]["message"].is_string(), "{at}");
    }
    let response = ask("2026-11-19T01:30:00+25:00").await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("out of range"),
        "{body}"
    );
}

#[tokio::test]
async fn the_florida_cap_counts_real_sends() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;
    for _ in 0..3 {
        let response = app
            .send(&token, &shop_message(MIAMI, "marketing", None, None))
            .await;
        assert_eq!(response.status(), 201);
    }
    let fourth = app
        .send(&token, &shop_message(MIAMI, "marketing", None, None))
        .await;
    assert_eq!(fourth.status(), 403);
    assert_eq!(error_code(fourth).await, "frequency_cap");
    // Transactional messages are not capped.
    let receipt = app
        .send(&token, &shop_message(MIAMI, "transactional", None, None))
        .await;
    assert_eq!(receipt.status(), 201);
    assert_eq!(gateway.requests().len(), 4);
}

#[tokio::test]
async fn concurrent_sends_never_exceed_the_cap() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;
    let message = shop_message(MIAMI, "marketing", None, None);
    let sends = (0..12).map(|_| app.send(&token, &message));
    let statuses: Vec<u16> = futures_util::future::join_all(sends)
        .await
        .iter()
        .map(|response| response.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(gateway.requests().len(), 3);
}

/// A batch decides a recipient named several times one message after the other, each seeing
/// the ones before it; and a batch and single sends to the same number at once share its cap.
#[tokio::test]
async fn a_batch_counts_its_own_sends_and_the_sends_beside_it_under_a_cap() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;
    let batch = json!({
        "from": SHOP_SENDER, "purpose": "marketing", "body": "Spring sale: 20% off",
        "recipients": (0..6).map(|_| json!({ "to": MIAMI })).collect::<Vec<_>>(),
    });
    let post = || {
        app.client
            .post(app.url("/v1/messages/batch"))
            .bearer_auth(&token)
            .json(&batch)
            .send()
    };
    let text = post().await.unwrap().text().await.unwrap();
    let statuses: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            line["status"].as_str().map(str::to_owned)
        })
        .collect();
    assert_eq!(
        statuses,
        ["sent", "sent", "sent", "denied", "denied", "denied"],
        "in order, each seeing the ones before: {text}"
    );
    assert_eq!(gateway.requests().len(), 3);

    // Another number: a batch and six single sends at once, one cap of 3 between them.
    const TAMPA: &str = "+18135550123";
    opt_in(&app, &token, TAMPA).await;
    let batch = json!({
        "from": SHOP_SENDER, "purpose": "marketing", "body": "Spring sale: 20% off",
        "recipients": (0..6).map(|_| json!({ "to": TAMPA })).collect::<Vec<_>>(),
    });
    let message = shop_message(TAMPA, "marketing", None, None);
    let batch_sent = async {
        let response = app
            .client
            .post(app.url("/v1/messages/batch"))
            .bearer_auth(&token)
            .json(&batch)
            .send()
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        text.matches(r#""status":"sent""#).count()
    };
    let singles = futures_util::future::join_all((0..6).map(|_| app.send(&token, &message)));
    let (batch_sent, singles) = tokio::join!(batch_sent, singles);
    let singles_sent = singles.iter().filter(|r| r.status() == 201).count();
    assert_eq!(
        batch_sent + singles_sent,
        3,
        "{batch_sent} + {singles_sent}"
    );
    assert_eq!(gateway.requests().len(), 6);
}

#[tokio::test]
async fn a_claim_that_is_never_finished_is_taken_again_after_its_lease() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;
    app.state.clock.set("2026-11-19T01:30:00Z".parse().unwrap());
    let scheduled: Value = app
        .send(&token, &shop_message(MIAMI, "marketing", None, None))
        .await
        .json()
        .await
        .unwrap();
    let id = scheduled["id"].as_str().unwrap();

    // A worker claims it, then dies before deciding.
    let morning: jiff::Timestamp = "2026-11-19T13:00:01Z".parse().unwrap();
    let claimed = app
        .state
        .store
        .claim_due(morning.as_microsecond(), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        app.state
            .store
            .claim_due(morning.as_microsecond(), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // After the lease, the next pass releases it, once.
    app.state
        .clock
        .set(morning + jiff::SignedDuration::from_mins(6));
    consentry::scheduler::release_due(&app.state).await.unwrap();
    wait_for_status(&app, &token, id, "sent").await;
    consentry::scheduler::release_due(&app.state).await.unwrap();
    assert_eq!(gateway.requests().len(), 1);
}

#[tokio::test]
async fn two_instances_on_one_database_never_exceed_a_cap_together() {
    if std::env::var("CONSENTRY_TEST_DATABASE_URL").is_err() {
        eprintln!("several instances need PostgreSQL: set CONSENTRY_TEST_DATABASE_URL");
        return;
    }
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let config = test_config(folder.path(), &gateway.url());
    // Two instances, each with its own pool, in-process locks and clock (the second's runs a
    // little behind the first's, as clocks of two machines do), on one schema.
    let first = TestApp::spawn_with(folder.path(), &config).await;
    let second = TestApp::spawn_with(folder.path(), &config).await;
    let token = first.token("shop", SCOPES);
    opt_in(&first, &token, MIAMI).await;
    let message = shop_message(MIAMI, "marketing", None, None);
    let sends = (0..16).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        app.send(&token, &message)
    });
    let statuses: Vec<u16> = futures_util::future::join_all(sends)
        .await
        .iter()
        .map(|response| response.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        13,
        "{statuses:?}"
    );
    assert_eq!(gateway.requests().len(), 3);
}
