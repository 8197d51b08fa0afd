//! Scheduled sends: a native `send_at` and Twilio's `SendAt` + `ScheduleType=fixed` hold a
//! message until its time, when every rule is applied again (quiet hours at the scheduled
//! time); the sender may call it off before then.

use serde_json::{Value, json};

use crate::fronts::{basic, sid_of};
use crate::helpers::*;

const MIAMI: &str = "+13055550123";
const SCOPES: &str = "messages:send messages:read consents:write consents:read";
const ACCOUNT: &str = "AC00000000000000000000000000000009";

async fn cancel(app: &TestApp, token: &str, id: &str) -> (u16, Value) {
    let response = app
        .client
        .post(app.url(&format!("/v1/messages/{id}/cancel")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A Twilio-front request (`Messages.json`, or a message's own path) with a form body.
async fn twilio(app: &TestApp, token: &str, path: &str, purpose: &str, form: &str) -> (u16, Value) {
    let response = app
        .client
        .post(app.url(&format!("/2010-04-01/Accounts/{ACCOUNT}/{path}")))
        .header("authorization", basic(token))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-consentry-purpose", purpose)
        .body(form.to_owned())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn scheduled(to: &str, send_at: &str) -> Value {
    let mut request = shop_message(to, "marketing", None, None);
    request["send_at"] = json!(send_at);
    request
}

/// Runs the scheduler's pass at `at` (the application's clock).
async fn release_at(app: &TestApp, at: &str) {
    app.state.clock.set(at.parse().unwrap());
    consentry::scheduler::release_due(&app.state).await.unwrap();
}

#[tokio::test]
async fn a_native_send_at_holds_the_message_until_then_and_sends_it_once() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;

    // The clock is Wed 13:00 in Miami; sent for Thu 11:00 there.
    let response = app
        .send(&token, &scheduled(MIAMI, "2026-11-19T16:00:00Z"))
        .await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "scheduled");
    assert_eq!(answer["release_at"], "2026-11-19T16:00:00Z");
    assert_eq!(answer["reasons"][0]["code"], "scheduled");
    let id = answer["id"].as_str().unwrap();
    assert_eq!(status_of(&app, &token, id).await["status"], "scheduled");

    release_at(&app, "2026-11-19T15:59:00Z").await;
    assert!(
        gateway.requests().is_empty(),
        "nothing leaves before its time"
    );
    release_at(&app, "2026-11-19T16:00:01Z").await;
    wait_for_status(&app, &token, id, "sent").await;
    release_at(&app, "2026-11-19T16:05:00Z").await;
    let requests = gateway.requests();
    assert_eq!(requests.len(), 1, "sent exactly once");
    assert_eq!(requests[0].body["id"], id);

    // Sent: it can no longer be called off.
    let (status, error) = cancel(&app, &token, id).await;
    assert_eq!(status, 409);
    assert_eq!(error["error"]["code"], "not_cancellable");
    assert_eq!(error["error"]["status"], "sent");
}

#[tokio::test]
async fn what_can_never_be_sent_is_refused_at_once_and_bad_times_are_named() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);

    // No consent: refused now, not held and cancelled later.
    let response = app
        .send(&token, &scheduled(MIAMI, "2026-11-19T16:00:00Z"))
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(error_code(response).await, "no_consent");

    opt_in(&app, &token, MIAMI).await;
    for (send_at, why) in [
        ("2026-11-18T17:00:00Z", "not in the future"),
        ("2026-12-24T18:00:00Z", "more than 35 days"),
        ("tomorrow at noon", "not an RFC 3339 time"),
    ] {
        let response = app.send(&token, &scheduled(MIAMI, send_at)).await;
        assert_eq!(response.status(), 400, "{send_at}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_send_at", "{send_at}");
        assert_eq!(body["error"]["field"], "send_at");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(why), "{send_at}: {text}");
    }
    assert!(gateway.requests().is_empty());
}

#[tokio::test]
async fn a_held_message_called_off_is_never_sent_and_stays_cancelled() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;
    let answer: Value = app
        .send(&token, &scheduled(MIAMI, "2026-11-19T16:00:00Z"))
        .await
        .json()
        .await
        .unwrap();
    let id = answer["id"].as_str().unwrap();

    // Another tenant's token does not see it.
    let other = app.token("acme", SCOPES);
    let (status, error) = cancel(&app, &other, id).await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "message_not_found");
    // A token that may only read may not call it off.
    let reader = app.token("shop", "messages:read");
    assert_eq!(cancel(&app, &reader, id).await.0, 403);

    let (status, view) = cancel(&app, &token, id).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "cancelled");
    assert_eq!(view["reasons"][0]["code"], "cancelled_by_sender");
    // A retry answers the same.
    let (status, again) = cancel(&app, &token, id).await;
    assert_eq!(status, 200);
    assert_eq!(again["status"], "cancelled");

    release_at(&app, "2026-11-19T16:00:01Z").await;
    release_at(&app, "2026-11-20T16:00:01Z").await;
    assert!(
        gateway.requests().is_empty(),
        "a cancelled message never leaves"
    );
    assert_eq!(status_of(&app, &token, id).await["status"], "cancelled");
}

#[tokio::test]
async fn twilio_send_at_at_night_in_the_recipients_zone_is_held_until_morning() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;

    // 22:00 in Miami on Thursday: within every rule now (Wed 13:00), outside them then.
    let form = "To=%2B13055550123&MessagingServiceSid=MG00000000000000000000000000000001\
                &Body=Flash+sale&ScheduleType=fixed&SendAt=2026-11-20T03:00:00Z";
    let (status, resource) = twilio(&app, &token, "Messages.json", "marketing", form).await;
    assert_eq!(status, 201, "{resource}");
    assert_eq!(resource["status"], "scheduled");
    let sid = resource["sid"].as_str().unwrap().to_owned();
    let id = format!("msg_{}", sid.trim_start_matches("SM"));
    assert_eq!(sid_of(&id), sid);

    // At the scheduled time the recipient's night holds it until 08:00 Friday in Miami.
    release_at(&app, "2026-11-20T03:00:01Z").await;
    assert!(gateway.requests().is_empty(), "not sent at night");
    let record = status_of(&app, &token, &id).await;
    assert_eq!(record["status"], "scheduled");
    assert_eq!(record["release_at"], "2026-11-20T13:00:00Z");
    assert_eq!(record["reasons"][0]["code"], "outside_window");

    release_at(&app, "2026-11-20T13:00:01Z").await;
    wait_for_status(&app, &token, &id, "sent").await;
    assert_eq!(gateway.requests().len(), 1);
    assert_eq!(gateway.requests()[0].body["to"], MIAMI);
}

#[tokio::test]
async fn twilio_scheduling_speaks_twilios_codes_and_cancels_as_twilio_does() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    opt_in(&app, &token, MIAMI).await;
    let service = "To=%2B13055550123&MessagingServiceSid=MG00000000000000000000000000000001\
                   &Body=Flash+sale";

    for (form, code) in [
        // Less than 300 s ahead (the clock is 18:00:00Z and moves on).
        (
            format!("{service}&ScheduleType=fixed&SendAt=2026-11-18T18:04:00Z"),
            35115,
        ),
        (
            format!("{service}&ScheduleType=fixed&SendAt=2026-12-31T18:00:00Z"),
            35115,
        ),
        (format!("{service}&ScheduleType=fixed"), 35111),
        (format!("{service}&SendAt=2026-11-19T16:00:00Z"), 35126),
        (
            format!("{service}&ScheduleType=daily&SendAt=2026-11-19T16:00:00Z"),
            35126,
        ),
        (
            "To=%2B13055550123&From=%2B12025550122&Body=Sale\
             &ScheduleType=fixed&SendAt=2026-11-19T16:00:00Z"
                .to_owned(),
            35118,
        ),
    ] {
        let (status, error) = twilio(&app, &token, "Messages.json", "marketing", &form).await;
        assert_eq!(status, 400, "{form}: {error}");
        assert_eq!(error["code"], code, "{form}: {error}");
    }

    let form = format!("{service}&ScheduleType=fixed&SendAt=2026-11-19T16:00:00Z");
    let (status, resource) = twilio(&app, &token, "Messages.json", "marketing", &form).await;
    assert_eq!(status, 201, "{resource}");
    let sid = resource["sid"].as_str().unwrap().to_owned();
    let path = format!("Messages/{sid}.json");

    let (status, error) = twilio(&app, &token, &path, "marketing", "Body=").await;
    assert_eq!(
        status, 400,
        "redaction is not an update consentry makes: {error}"
    );
    let (status, canceled) = twilio(&app, &token, &path, "marketing", "Status=canceled").await;
    assert_eq!(status, 200, "{canceled}");
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(canceled["sid"], sid.as_str());
    release_at(&app, "2026-11-19T16:00:01Z").await;
    assert!(gateway.requests().is_empty());

    // A message sent at once cannot be canceled: Twilio's 30409.
    let (status, sent) = twilio(&app, &token, "Messages.json", "marketing", service).await;
    assert_eq!(status, 201, "{sent}");
    let path = format!("Messages/{}.json", sent["sid"].as_str().unwrap());
    let (status, error) = twilio(&app, &token, &path, "marketing", "Status=canceled").await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["code"], 30409);
}

#[tokio::test]
async fn a_batch_schedules_its_recipients_each_at_its_time() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("shop", SCOPES);
    let (first, second) = ("+14155550181", "+14155550182");
    opt_in(&app, &token, first).await;
    opt_in(&app, &token, second).await;
    let batch = json!({
        "from": SHOP_SENDER,
        "purpose": "marketing",
        "body": "Spring sale",
        "send_at": "2026-11-19T18:00:00Z",
        "recipients": [
            { "to": first },
            { "to": second, "send_at": "2026-11-20T18:00:00Z" },
        ],
    });
    let response = app
        .client
        .post(app.url("/v1/messages/batch"))
        .bearer_auth(&token)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["status"], "scheduled", "{text}");
    assert_eq!(lines[1]["status"], "scheduled", "{text}");

    release_at(&app, "2026-11-19T18:00:01Z").await;
    let sent = lines[0]["id"].as_str().unwrap();
    wait_for_status(&app, &token, sent, "sent").await;
    assert_eq!(gateway.requests().len(), 1, "only the first is due");
    release_at(&app, "2026-11-20T18:00:01Z").await;
    wait_for_status(&app, &token, lines[1]["id"].as_str().unwrap(), "sent").await;
    assert_eq!(gateway.requests().len(), 2);

    // A batch's own time is checked once, before any line.
    let mut wrong = batch.clone();
    wrong["send_at"] = json!("yesterday");
    let response = app
        .client
        .post(app.url("/v1/messages/batch"))
        .bearer_auth(&token)
        .json(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "invalid_send_at");
}

#[tokio::test]
async fn telnyx_send_at_is_held_not_ignored_and_delete_calls_it_off() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send messages:read");
    let response = app
        .client
        .post(app.url("/v2/messages"))
        .bearer_auth(&token)
        .header("x-consentry-purpose", "transactional")
        .json(
            &json!({ "from": ACME_SENDER, "to": "+14155550140", "text": "See you at 9",
                       "send_at": "2026-11-19T14:00:00Z" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let held: Value = response.json().await.unwrap();
    assert!(gateway.requests().is_empty(), "held, not sent at once");

    // Another, called off with Telnyx's DELETE /v2/messages/{id}.
    let response = app
        .client
        .post(app.url("/v2/messages"))
        .bearer_auth(&token)
        .header("x-consentry-purpose", "transactional")
        .json(
            &json!({ "from": ACME_SENDER, "to": "+14155550141", "text": "Cancelled",
                       "send_at": "2026-11-19T14:00:00Z" }),
        )
        .send()
        .await
        .unwrap();
    let second: Value = response.json().await.unwrap();
    let second_id = second["data"]["id"].as_str().unwrap();
    let cancel = |id: String| {
        app.client
            .delete(app.url(&format!("/v2/messages/{id}")))
            .bearer_auth(&token)
            .send()
    };
    let response = cancel(second_id.to_owned()).await.unwrap();
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(
        cancelled["data"]["to"][0]["status"], "cancelled",
        "{cancelled}"
    );
    assert_eq!(cancelled["data"]["id"], second_id);
    let response = cancel("not-a-uuid".into()).await.unwrap();
    assert_eq!(response.status(), 404);

    release_at(&app, "2026-11-19T14:00:01Z").await;
    for _ in 0..100 {
        if !gateway.requests().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        gateway.requests().len(),
        1,
        "the cancelled one never leaves"
    );
    assert_eq!(gateway.requests()[0].body["to"], "+14155550140");
    // Sent: Telnyx's cancel is refused.
    let sent = held["data"]["id"].as_str().unwrap().to_owned();
    let response = cancel(sent).await.unwrap();
    assert_eq!(response.status(), 400);
    let refused: Value = response.json().await.unwrap();
    assert!(refused.to_string().contains("not_cancellable"), "{refused}");
}
