//! The consent ledger through the API, and its enforcement on every send.

use serde_json::{Value, json};

use crate::helpers::*;

const SCOPES: &str = "messages:send messages:read consents:write consents:read";

/// Sends and returns (status, error code or "").
async fn attempt(app: &TestApp, token: &str, message: &Value) -> (u16, String) {
    let response = app.send(token, message).await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn consent_decides_each_send_from_opt_in_to_opt_out_and_back() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    let number = "+14155550123";
    let marketing = shop_message(number, "marketing", None, None);
    let informational = shop_message(number, "informational", None, None);
    let transactional = shop_message(number, "transactional", None, None);

    // Nothing on record: marketing and informational need consent, transactional does not.
    assert_eq!(
        attempt(&app, &token, &marketing).await,
        (403, "no_consent".into())
    );
    assert_eq!(
        attempt(&app, &token, &informational).await,
        (403, "no_consent".into())
    );
    assert_eq!(
        attempt(&app, &token, &transactional).await,
        (201, String::new())
    );

    // Express consent is not enough for marketing.
    let express = app
        .consent(
            &token,
            &json!({ "number": number, "action": "opt_in", "method": "keyword" }),
        )
        .await;
    assert_eq!(express.status(), 201);
    assert_eq!(
        attempt(&app, &token, &informational).await,
        (201, String::new())
    );
    assert_eq!(
        attempt(&app, &token, &marketing).await,
        (403, "no_consent".into())
    );

    // Written consent with its evidence allows marketing.
    let response = app.consent(&token, &written_opt_in("(415) 555-0123")).await;
    assert_eq!(response.status(), 201);
    let opt_in: Value = response.json().await.unwrap();
    assert_eq!(opt_in["number"], number);
    assert_eq!(opt_in["level"], "express_written");
    assert_eq!(opt_in["recorded_by"], "test-app");
    assert_eq!(opt_in["evidence"]["ip"], "203.0.113.7");
    assert_eq!(
        attempt(&app, &token, &marketing).await,
        (201, String::new())
    );

    // An opt-out blocks every purpose, and the denial names the event and its scope.
    let response = app
        .consent(
            &token,
            &json!({ "number": "415.555.0123", "action": "opt_out", "method": "keyword" }),
        )
        .await;
    let opt_out: Value = response.json().await.unwrap();
    for message in [&marketing, &informational, &transactional] {
        let response = app.send(&token, message).await;
        assert_eq!(response.status(), 403);
        let denial: Value = response.json().await.unwrap();
        assert_eq!(denial["error"]["code"], "opted_out");
        assert_eq!(denial["error"]["reasons"][0]["event"], opt_out["id"]);
        assert_eq!(denial["error"]["reasons"][0]["scope"], "tenant");
        // The denied message is recorded like any other.
        let id = denial["error"]["id"].as_str().unwrap();
        let record: Value = app
            .get(&token, &format!("/v1/messages/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(record["status"], "denied");
        assert_eq!(record["reasons"][0]["code"], "opted_out");
    }

    // A new written opt-in, later, allows marketing again.
    let response = app.consent(&token, &written_opt_in("1 415 555 0123")).await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        attempt(&app, &token, &marketing).await,
        (201, String::new())
    );

    // Only the allowed sends reached the gateway: 1 transactional, 1 informational, 2 marketing.
    assert_eq!(gateway.requests().len(), 4);

    // The history keeps every event, with its evidence; the state says what is sendable.
    let encoded = "%2B1%20415%20555%200123";
    let consents: Value = app
        .get(&token, &format!("/v1/consents/{encoded}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(consents["number"], number);
    let history = consents["history"].as_array().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[1]["evidence"]["extra"]["form_id"], "signup-3");
    let tenant_marketing = consents["state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scope"]["brand"].is_null() && s["purpose"] == "marketing")
        .unwrap();
    assert_eq!(tenant_marketing["status"], "opted_in");
    assert_eq!(tenant_marketing["sendable"], true);
}

#[tokio::test]
async fn scopes_nest_from_tenant_to_brand_to_campaign() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    let number = "+14155550150";
    let mut written = written_opt_in(number);
    written["occurred_at"] = json!("2026-01-01T00:00:00Z");
    assert_eq!(app.consent(&token, &written).await.status(), 201);
    let spring = shop_message(number, "marketing", Some("shoes"), Some("spring-sale"));
    let loyalty = shop_message(number, "marketing", None, Some("loyalty"));
    let hats = shop_message(number, "marketing", Some("hats"), None);
    assert_eq!(attempt(&app, &token, &spring).await.0, 201);

    // An opt-out of the brand blocks its campaigns, not the other brand.
    let brand_out = json!({
        "number": number, "action": "opt_out", "scope": { "brand": "shoes" },
        "occurred_at": "2026-02-01T00:00:00Z",
    });
    assert_eq!(app.consent(&token, &brand_out).await.status(), 201);
    assert_eq!(
        attempt(&app, &token, &spring).await,
        (403, "opted_out".into())
    );
    assert_eq!(
        attempt(&app, &token, &loyalty).await,
        (403, "opted_out".into())
    );
    assert_eq!(attempt(&app, &token, &hats).await.0, 201);

    // A campaign opt-in from before the brand opt-out does not undo it...
    let mut old_campaign = written_opt_in(number);
    old_campaign["scope"] = json!({ "campaign": "spring-sale" });
    old_campaign["occurred_at"] = json!("2026-01-15T00:00:00Z");
    assert_eq!(app.consent(&token, &old_campaign).await.status(), 201);
    assert_eq!(
        attempt(&app, &token, &spring).await,
        (403, "opted_out".into())
    );

    // ...a later one re-opens that campaign only.
    let mut new_campaign = written_opt_in(number);
    new_campaign["scope"] = json!({ "brand": "shoes", "campaign": "spring-sale" });
    new_campaign["occurred_at"] = json!("2026-03-01T00:00:00Z");
    assert_eq!(app.consent(&token, &new_campaign).await.status(), 201);
    assert_eq!(attempt(&app, &token, &spring).await.0, 201);
    assert_eq!(
        attempt(&app, &token, &loyalty).await,
        (403, "opted_out".into())
    );

    // An opt-out for marketing only leaves transactional messages to the brand alone.
    let marketing_out = json!({
        "number": number, "action": "opt_out",
        "scope": { "brand": "hats", "purposes": ["marketing"] },
    });
    assert_eq!(app.consent(&token, &marketing_out).await.status(), 201);
    assert_eq!(
        attempt(&app, &token, &hats).await,
        (403, "opted_out".into())
    );
    let hats_receipt = shop_message(number, "transactional", Some("hats"), None);
    assert_eq!(attempt(&app, &token, &hats_receipt).await.0, 201);

    // An unknown brand or campaign in a send is a 400 naming the field.
    let unknown = shop_message(number, "marketing", Some("gloves"), None);
    assert_eq!(
        attempt(&app, &token, &unknown).await,
        (400, "unknown_scope".into())
    );
}

#[tokio::test]
async fn bad_events_are_refused_naming_the_field_and_nothing_is_recorded() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    let number = "+14155550160";
    let mut no_disclosure = written_opt_in(number);
    no_disclosure["evidence"]
        .as_object_mut()
        .unwrap()
        .remove("disclosure_text");
    let mut verbal = written_opt_in(number);
    verbal["method"] = json!("verbal");
    let cases = [
        (
            json!({ "number": "555", "action": "opt_in" }),
            "invalid_number",
            "number",
        ),
        (
            json!({ "number": number, "action": "subscribe" }),
            "invalid_action",
            "action",
        ),
        (
            json!({ "number": number, "action": "opt_in", "scope": { "brand": "gloves" } }),
            "unknown_scope",
            "scope.brand",
        ),
        (
            json!({ "number": number, "action": "opt_in", "scope": { "campaign": "winter" } }),
            "unknown_scope",
            "scope.campaign",
        ),
        (
            json!({ "number": number, "action": "opt_in", "scope": { "purposes": ["spam"] } }),
            "invalid_purpose",
            "scope.purposes",
        ),
        (
            json!({ "number": number, "action": "opt_in", "method": "telepathy" }),
            "invalid_method",
            "method",
        ),
        (
            json!({ "number": number, "action": "opt_out", "level": "express" }),
            "invalid_level",
            "level",
        ),
        (
            json!({ "number": number, "action": "opt_in", "occurred_at": "2099-01-01T00:00:00Z" }),
            "invalid_occurred_at",
            "occurred_at",
        ),
        (
            json!({ "number": number, "action": "opt_in", "occurred_at": "yesterday" }),
            "invalid_occurred_at",
            "occurred_at",
        ),
        (
            // RFC 3339 offsets go to 23:59.
            json!({ "number": number, "action": "opt_in", "occurred_at": "2026-01-01T00:00:00+25:00" }),
            "invalid_occurred_at",
            "occurred_at",
        ),
        (
            json!({ "number": number, "action": "opt_in", "evidence": { "ip": "not-an-ip" } }),
            "invalid_evidence",
            "evidence.ip",
        ),
        (
            no_disclosure,
            "insufficient_evidence",
            "evidence.disclosure_text",
        ),
        (verbal, "insufficient_evidence", "method"),
    ];
    for (event, code, field) in cases {
        let response = app.consent(&token, &event).await;
        assert_eq!(response.status(), 400, "{event}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{event}");
        assert_eq!(body["error"]["field"], field, "{event}");
    }
    let consents: Value = app
        .get(&token, &format!("/v1/consents/{number}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(consents["history"], json!([]));
}

#[tokio::test]
async fn the_same_event_sent_twice_is_recorded_once() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    let mut event = written_opt_in("+14155550170");
    event["external_id"] = json!("crm-42");
    let first = app.consent(&token, &event).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let second = app.consent(&token, &event).await;
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["id"], first["id"]);
    let consents: Value = app
        .get(&token, "/v1/consents/+14155550170")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(consents["history"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn tenants_never_see_or_use_each_others_consent() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let shop = app.token("shop", SCOPES);
    let acme = app.token("acme", SCOPES);
    let number = "+14155550180";
    assert_eq!(
        app.consent(&shop, &written_opt_in(number)).await.status(),
        201
    );

    // acme reads nothing of shop's ledger, and shop's consent does not count for acme's sends.
    let seen: Value = app
        .get(&acme, &format!("/v1/consents/{number}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["history"], json!([]));
    let acme_informational = message(number, "Your order shipped", "informational");
    assert_eq!(
        attempt(&app, &acme, &acme_informational).await,
        (403, "no_consent".into())
    );

    // acme's opt-out does not touch shop's sends.
    let out = json!({ "number": number, "action": "opt_out" });
    assert_eq!(app.consent(&acme, &out).await.status(), 201);
    let shop_marketing = shop_message(number, "marketing", None, None);
    assert_eq!(attempt(&app, &shop, &shop_marketing).await.0, 201);
    let seen: Value = app
        .get(&shop, &format!("/v1/consents/{number}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["history"].as_array().unwrap().len(), 1);

    // Reading and writing need their scopes.
    let sender_only = app.token("shop", "messages:send");
    assert_eq!(app.consent(&sender_only, &out).await.status(), 403);
    assert_eq!(
        app.get(&sender_only, &format!("/v1/consents/{number}"))
            .await
            .status(),
        403
    );
}

#[tokio::test]
async fn no_endpoint_changes_or_removes_an_event() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    let number = "+14155550190";
    let recorded: Value = app
        .consent(&token, &written_opt_in(number))
        .await
        .json()
        .await
        .unwrap();
    let id = recorded["id"].as_str().unwrap();
    for path in [
        "/v1/consents".to_owned(),
        format!("/v1/consents/{number}"),
        format!("/v1/consents/{id}"),
    ] {
        for method in [
            reqwest::Method::PUT,
            reqwest::Method::PATCH,
            reqwest::Method::DELETE,
        ] {
            let response = app
                .client
                .request(method.clone(), app.url(&path))
                .bearer_auth(&token)
                .json(&json!({ "action": "opt_out" }))
                .send()
                .await
                .unwrap();
            assert!(
                matches!(response.status().as_u16(), 404 | 405),
                "{method} {path}"
            );
        }
    }
    // Not even the database lets a row change.
    for statement in [
        "UPDATE consent_events SET action = 'opt_out'",
        "DELETE FROM consent_events",
    ] {
        let refused = app.database.execute(statement).await;
        assert!(refused.unwrap_err().to_string().contains("append-only"));
    }
    let consents: Value = app
        .get(&token, &format!("/v1/consents/{number}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(consents["history"][0]["action"], "opt_in");
}

#[tokio::test]
async fn an_import_reports_each_bad_line_and_a_second_run_adds_nothing() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    let csv = "number,action,level,brand,campaign,purposes,method,occurred_at,external_id,disclosure_text,not_condition_of_purchase\n\
+14155550201,opt_in,express_written,shoes,,marketing,web_form,2026-05-01T10:00:00Z,,\"Texts from Shop, STOP to end\",true\n\
(415) 555-0202,opt_in,express,,,,paper,2026-05-01T10:00:00Z,row-2,,\n\
not-a-number,opt_in,express,,,,paper,2026-05-01T10:00:00Z,,,\n\
+14155550204,opt_out,,gloves,,,import,2026-05-01T10:00:00Z,,,\n\
+14155550205,opt_in,express_written,,,,web_form,2026-05-01T10:00:00Z,,,\n\
+14155550206,opt_out,,,,,keyword,,,,\n\
+14155550207,opt_out,,,,,keyword,2026-05-02T10:00:00Z,,,\n";
    let first: Value = app
        .import(&token, "text/csv", csv)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["lines"], 7);
    assert_eq!(first["recorded"], 3);
    assert_eq!(first["duplicates"], 0);
    assert_eq!(first["failed"], 4);
    let errors: Vec<(u64, &str, &str)> = first["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["code"].as_str().unwrap(),
                e["field"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (4, "invalid_number", "number"),
            (5, "unknown_scope", "scope.brand"),
            (6, "insufficient_evidence", "evidence.disclosure_text"),
            (7, "invalid_occurred_at", "occurred_at"),
        ]
    );
    let second: Value = app
        .import(&token, "text/csv", csv)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["recorded"], 0);
    assert_eq!(second["duplicates"], 3);

    // The imported written consent allows marketing for its brand.
    let shoes = shop_message("+14155550201", "marketing", Some("shoes"), None);
    assert_eq!(attempt(&app, &token, &shoes).await.0, 201);

    let ndjson = format!(
        "{}\n\n{}\n{{\"broken\n",
        json!({ "number": "+14155550210", "action": "opt_out", "occurred_at": "2026-05-03T00:00:00Z", "external_id": "n-1" }),
        json!({ "number": "+14155550211", "action": "opt_in", "occurred_at": "2026-05-03T00:00:00Z" }),
    );
    let result: Value = app
        .import(&token, "application/x-ndjson", ndjson.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            result["lines"].as_u64(),
            result["recorded"].as_u64(),
            result["failed"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(result["errors"][0]["line"], 4);
    assert_eq!(result["errors"][0]["code"], "invalid_line");
    let again: Value = app
        .import(&token, "application/x-ndjson", ndjson)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["duplicates"], 2);

    // A header with an unknown column is refused before any line is read.
    let bad = app
        .import(
            &token,
            "text/csv",
            "number,action,colour\n+14155550212,opt_in,red\n",
        )
        .await;
    assert_eq!(bad.status(), 400);
    assert_eq!(error_code(bad).await, "invalid_csv_header");
    let wrong_type = app.import(&token, "application/json", "[]").await;
    assert_eq!(wrong_type.status(), 415);
}

#[tokio::test]
async fn an_opt_out_is_never_swallowed_or_postponed() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    let number = "+14155550199";
    let mut opt_in = written_opt_in(number);
    opt_in["external_id"] = json!("crm-contact-9");
    assert_eq!(app.consent(&token, &opt_in).await.status(), 201);

    // The same external id on an opt-out is another event, not a duplicate of the opt-in;
    // dated two minutes ahead by a client's clock, it blocks from now on all the same.
    let ahead = app.state.clock.now() + jiff::SignedDuration::from_mins(2);
    let opt_out = json!({ "number": number, "action": "opt_out", "external_id": "crm-contact-9",
        "occurred_at": ahead.to_string() });
    let response = app.consent(&token, &opt_out).await;
    assert_eq!(response.status(), 201);
    let send = shop_message(number, "marketing", None, None);
    assert_eq!(
        attempt(&app, &token, &send).await,
        (403, "opted_out".into())
    );
}
