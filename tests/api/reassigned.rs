//! Numbers that change hands: a carrier's deactivation file voids the consents given before
//! each deactivation; a reassigned-numbers lookup (a fake of the FCC database's question, a
//! real HTTP server here) is asked before a marketing send on an old consent, and a "yes"
//! denies it `number_reassigned` and stays in the ledger as evidence.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::helpers::*;

const SCOPES: &str = "messages:send messages:read consents:write consents:read";

/// A question as the fake lookup received it: its `Authorization` header and its body.
type Question = (Option<String>, Value);

/// A reassigned-numbers lookup on a local port: answers by number, records each question.
#[derive(Clone)]
struct FakeLookup {
    answers: Arc<Mutex<BTreeMap<String, Value>>>,
    questions: Arc<Mutex<Vec<Question>>>,
    /// Opened once for each question about a number answered "hold" (then answered "no").
    gate: Arc<tokio::sync::Semaphore>,
}

impl FakeLookup {
    async fn start(answers: &[(&str, &str)]) -> (FakeLookup, String) {
        let lookup = FakeLookup {
            answers: Default::default(),
            questions: Default::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        for (number, answer) in answers {
            lookup
                .answers
                .lock()
                .unwrap()
                .insert((*number).to_owned(), json!(answer));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/rnd/query", listener.local_addr().unwrap());
        let state = lookup.clone();
        let router = axum::Router::new().route(
            "/rnd/query",
            axum::routing::post(move |headers: http::HeaderMap, body: axum::Json<Value>| {
                let state = state.clone();
                async move {
                    let authorization = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    state
                        .questions
                        .lock()
                        .unwrap()
                        .push((authorization, body.0.clone()));
                    let number = body.0["number"].as_str().unwrap_or_default().to_owned();
                    let answer = state.answers.lock().unwrap().get(&number).cloned();
                    match answer {
                        Some(answer) if answer == "hold" => {
                            state.gate.acquire().await.unwrap().forget();
                            (http::StatusCode::OK, axum::Json(json!({ "answer": "no" })))
                        }
                        Some(answer) if answer == "fail" => (
                            http::StatusCode::INTERNAL_SERVER_ERROR,
                            axum::Json(json!({ "error": "down" })),
                        ),
                        Some(answer) => (
                            http::StatusCode::OK,
                            axum::Json(json!({ "answer": answer })),
                        ),
                        None => (
                            http::StatusCode::OK,
                            axum::Json(json!({ "answer": "no_data" })),
                        ),
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (lookup, url)
    }

    fn questions_about(&self, number: &str) -> Vec<Value> {
        self.questions
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, body)| body["number"] == number)
            .map(|(_, body)| body.clone())
            .collect()
    }
}

async fn app_with_lookup(gateway: &FakeGateway, url: &str, folder: &std::path::Path) -> TestApp {
    app_with_lookup_and(gateway, url, folder, "").await
}

/// [`app_with_lookup`] with more settings of the lookup's.
async fn app_with_lookup_and(
    gateway: &FakeGateway,
    url: &str,
    folder: &std::path::Path,
    more: &str,
) -> TestApp {
    std::fs::write(folder.join("rnd.secret"), "rnd-credential-0123456789").unwrap();
    let config = format!(
        "{}\n[reassigned_numbers]\nurl = \"{url}\"\ncredential = {{ file = \"rnd.secret\" }}\nmin_consent_age_days = 30\n{more}",
        test_config(folder, &gateway.url())
    );
    TestApp::spawn_with(folder, &config).await
}

fn marketing(to: &str) -> Value {
    shop_message(to, "marketing", None, None)
}

#[tokio::test]
async fn a_yes_from_the_lookup_denies_the_send_and_stays_in_the_ledger() {
    let (yes, no, no_data, fresh) = (
        "+14155550191",
        "+14155550192",
        "+14155550193",
        "+14155550195",
    );
    let (lookup, url) = FakeLookup::start(&[(yes, "yes"), (no, "no"), (fresh, "yes")]).await;
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let app = app_with_lookup(&gateway, &url, folder.path()).await;
    let token = app.token("shop", SCOPES);
    for number in [yes, no, no_data] {
        opt_in(&app, &token, number).await; // dated 2026-01-01: older than 30 days
    }

    let response = app.send(&token, &marketing(yes)).await;
    assert_eq!(response.status(), 403);
    let denial: Value = response.json().await.unwrap();
    assert_eq!(denial["error"]["code"], "number_reassigned", "{denial}");
    let event = denial["error"]["reasons"][0]["event"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        lookup.questions_about(yes),
        vec![json!({ "number": yes, "since": "2026-01-01" })]
    );
    assert_eq!(
        lookup.questions.lock().unwrap()[0].0.as_deref(),
        Some("Bearer rnd-credential-0123456789")
    );
    // Remembered in the ledger: the next send is denied without asking again.
    let again = app.send(&token, &marketing(yes)).await;
    assert_eq!(error_code(again).await, "number_reassigned");
    assert_eq!(lookup.questions_about(yes).len(), 1);
    // The answer is evidence: an opt-out of the whole tenant, method reassigned_lookup.
    let history: Value = app
        .get(&token, &format!("/v1/consents/{yes}"))
        .await
        .json()
        .await
        .unwrap();
    let recorded = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == event.as_str())
        .unwrap_or_else(|| panic!("{event} in {history}"));
    assert_eq!(recorded["action"], "opt_out");
    assert_eq!(recorded["method"], "reassigned_lookup");
    assert_eq!(recorded["evidence"]["extra"]["answer"], "yes", "{recorded}");
    assert_eq!(
        recorded["evidence"]["extra"]["question"]["disconnected_since"],
        "2026-01-01"
    );

    // "No" and "no data" send; an answer is reused for the same number and date.
    for number in [no, no_data, no] {
        assert_eq!(
            app.send(&token, &marketing(number)).await.status(),
            201,
            "{number}"
        );
    }
    assert_eq!(lookup.questions_about(no).len(), 1, "cached");
    // A transactional message is not asked about, nor a consent younger than 30 days.
    let transactional = shop_message(fresh, "transactional", None, None);
    assert_eq!(app.send(&token, &transactional).await.status(), 201);
    let young = json!({ "number": fresh, "action": "opt_in", "level": "express_written",
        "method": "web_form", "evidence": written_opt_in(fresh)["evidence"] });
    assert_eq!(app.consent(&token, &young).await.status(), 201);
    assert_eq!(app.send(&token, &marketing(fresh)).await.status(), 201);
    assert!(lookup.questions_about(fresh).is_empty());
    assert_eq!(gateway.requests().len(), 5);
}

/// A batch's lookup that waits on the network holds no recipient's turn: a send to another
/// recipient of the batch goes through meanwhile, and the batch ends once the lookup answers.
#[tokio::test]
async fn a_slow_lookup_holds_up_no_other_recipients_send() {
    let (slow, other) = ("+14155550181", "+14155550182");
    let (lookup, url) = FakeLookup::start(&[(slow, "hold"), (other, "no")]).await;
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let app = app_with_lookup_and(
        &gateway,
        &url,
        folder.path(),
        "request_timeout_ms = 60000\n",
    )
    .await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, slow).await;
    opt_in(&app, &token, other).await;
    let batch = json!({
        "from": SHOP_SENDER, "purpose": "marketing", "body": "Spring sale: 20% off",
        "recipients": [{ "to": slow }, { "to": other }],
    });
    let request = app
        .client
        .post(app.url("/v1/messages/batch"))
        .bearer_auth(&token)
        .json(&batch)
        .send();
    let batch = tokio::spawn(async move { request.await.unwrap().text().await.unwrap() });
    while lookup.questions_about(slow).is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // The lookup about `slow` is still waiting: `other`'s turn is free.
    let receipt = shop_message(other, "transactional", None, None);
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        app.send(&token, &receipt),
    )
    .await
    .expect("a send to another recipient waited for the lookup");
    assert_eq!(response.status(), 201);
    assert!(!batch.is_finished());
    assert_eq!(gateway.requests().len(), 1);

    lookup.gate.add_permits(1);
    let lines: Vec<Value> = batch
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let statuses: Vec<&str> = lines
        .iter()
        .filter_map(|line| line["status"].as_str())
        .collect();
    assert_eq!(statuses, ["sent", "sent"], "{lines:?}");
    assert_eq!(gateway.requests().len(), 3);
    // Each number was asked once, before the turn; the turn used the answers.
    assert_eq!(lookup.questions_about(slow).len(), 1);
    assert_eq!(lookup.questions_about(other).len(), 1);
}

#[tokio::test]
async fn a_lookup_that_fails_stops_the_send_and_sends_nothing() {
    let number = "+14155550196";
    let (_lookup, url) = FakeLookup::start(&[(number, "fail")]).await;
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let app = app_with_lookup(&gateway, &url, folder.path()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, number).await;
    let response = app.send(&token, &marketing(number)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_code(response).await, "reassigned_lookup_unavailable");
    assert!(gateway.requests().is_empty());
    assert_eq!(
        app.count("SELECT count(*) FROM messages").await,
        0,
        "nothing recorded"
    );
}

#[tokio::test]
async fn a_deactivation_file_voids_the_consents_given_before_each_deactivation() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    let (changed, kept) = ("+14155550197", "+14155550198");
    opt_in(&app, &token, changed).await; // 2026-01-01
    let mut later = written_opt_in(kept);
    later["occurred_at"] = json!("2026-11-12T10:00:00Z");
    assert_eq!(app.consent(&token, &later).await.status(), 201);
    assert_eq!(app.send(&token, &marketing(changed)).await.status(), 201);

    let file = format!(
        "number,deactivated_at,carrier\n\
         {changed},2026-11-10,T-Mobile\n\
         {kept},2026-11-10,Verizon\n\
         +14155550199,10 November,AT&T\n"
    );
    let response = app
        .client
        .post(app.url("/v1/consents/deactivations"))
        .bearer_auth(&token)
        .header("content-type", "text/csv")
        .body(file)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let summary: Value = response.json().await.unwrap();
    assert_eq!(summary["lines"], 3, "{summary}");
    assert_eq!(summary["recorded"], 2, "{summary}");
    assert_eq!(summary["failed"], 1, "{summary}");
    assert_eq!(
        summary["errors"][0]["code"], "invalid_deactivated_at",
        "{summary}"
    );

    // Consent from before the deactivation no longer counts, whatever the purpose.
    let denied = app.send(&token, &marketing(changed)).await;
    assert_eq!(denied.status(), 403);
    let denial: Value = denied.json().await.unwrap();
    assert_eq!(denial["error"]["code"], "number_reassigned");
    assert!(
        denial["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2026-11-10T23:59:59Z"),
        "{denial}"
    );
    let transactional = shop_message(changed, "transactional", None, None);
    assert_eq!(
        error_code(app.send(&token, &transactional).await).await,
        "number_reassigned"
    );
    // Consent given after it (the new owner's) counts.
    assert_eq!(app.send(&token, &marketing(kept)).await.status(), 201);
    let mut new_owner = written_opt_in(changed);
    new_owner["occurred_at"] = json!("2026-11-15T09:00:00Z");
    assert_eq!(app.consent(&token, &new_owner).await.status(), 201);
    assert_eq!(app.send(&token, &marketing(changed)).await.status(), 201);

    // The same file again adds nothing; a file without the date column is refused whole.
    let response = app
        .client
        .post(app.url("/v1/consents/deactivations"))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body(format!(
            "{{\"number\": \"{changed}\", \"deactivated_at\": \"2026-11-10\", \"carrier\": \"T-Mobile\"}}\n"
        ))
        .send()
        .await
        .unwrap();
    let summary: Value = response.json().await.unwrap();
    assert_eq!(summary["duplicates"], 1, "{summary}");
    let response = app
        .client
        .post(app.url("/v1/consents/deactivations"))
        .bearer_auth(&token)
        .header("content-type", "text/csv")
        .body(format!("number,date\n{changed},2026-11-10\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "invalid_csv_header");
    // An opt-in may not claim to be a deactivation.
    let mut forged = written_opt_in(changed);
    forged["method"] = json!("number_deactivated");
    assert_eq!(
        error_code(app.consent(&token, &forged).await).await,
        "invalid_method"
    );
}
