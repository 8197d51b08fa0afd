//! MMS: media URLs through the native API and the Twilio and Telnyx fronts, forwarded to the
//! gateways that take them (http-json, Twilio, Telnyx) in each one's own shape, refused for a
//! gateway that sends text only (Vonage), and kept with a held message until its release.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::helpers::*;

const ACCOUNT: &str = "AC00000000000000000000000000000009";
const CAT: &str = "https://media.example/cat.jpg";
const DOG: &str = "https://media.example/dog.png?size=large";

fn basic(token: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{token}"));
    format!("Basic {encoded}")
}

#[tokio::test]
async fn media_reach_each_gateway_in_its_own_shape() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;

    // Native, to the http-json gateway: an MMS may have no text.
    let token = app.token("acme", "messages:send");
    let mut mms = message("+14155550123", "", "transactional");
    mms["media_urls"] = json!([CAT, DOG]);
    let response = app.send(&token, &mms).await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    // Through a Twilio upstream: one MediaUrl field per URL, in order.
    let twilio = app.token("tw-shop", "messages:send");
    let mut mms = json!({ "to": "+14155550123", "from": TW_SENDER, "body": "Look", "purpose": "transactional" });
    mms["media_urls"] = json!([CAT, DOG]);
    assert_eq!(app.send(&twilio, &mms).await.status(), 201);
    // Through a Telnyx upstream: media_urls.
    let telnyx = app.token("tx-shop", "messages:send");
    mms["from"] = json!(TX_SENDER);
    assert_eq!(app.send(&telnyx, &mms).await.status(), 201);

    let requests = gateway.requests();
    assert_eq!(requests[0].body["media_urls"], json!([CAT, DOG]));
    assert_eq!(requests[0].body["body"], "");
    let form = std::str::from_utf8(&requests[1].raw).unwrap();
    let media: Vec<String> = form_urlencoded::parse(form.as_bytes())
        .filter(|(name, _)| name == "MediaUrl")
        .map(|(_, value)| value.into_owned())
        .collect();
    assert_eq!(media, vec![CAT, DOG], "{form}");
    assert_eq!(requests[2].body["media_urls"], json!([CAT, DOG]));

    // Vonage's SMS API sends text only: refused, not sent without its media.
    let vonage = app.token("vg-shop", "messages:send");
    mms["from"] = json!(VG_SENDER);
    let response = app.send(&vonage, &mms).await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "media_not_supported");
    assert_eq!(gateway.requests().len(), 3);
}

#[tokio::test]
async fn media_urls_are_checked_and_an_sms_still_needs_text() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let eleven: Vec<String> = (0..11)
        .map(|i| format!("https://media.example/{i}.jpg"))
        .collect();
    for (media, why) in [
        (json!(eleven), "at most 10"),
        (
            json!(["ftp://media.example/cat.jpg"]),
            "https:// or http://",
        ),
        (json!(["/cat.jpg"]), "https:// or http://"),
        (json!(["not a url at all"]), "not a URL"),
    ] {
        let mut mms = message("+14155550123", "Look", "transactional");
        mms["media_urls"] = media.clone();
        let response = app.send(&token, &mms).await;
        assert_eq!(response.status(), 400, "{media}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_media_url", "{media}");
        assert_eq!(body["error"]["field"], "media_urls");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(why), "{media}: {text}");
    }
    let response = app
        .send(&token, &message("+14155550123", "", "transactional"))
        .await;
    assert_eq!(error_code(response).await, "invalid_body");
    assert!(gateway.requests().is_empty());
}

#[tokio::test]
async fn the_twilio_and_telnyx_fronts_take_media() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let form = format!(
        "To=%2B14155550123&From=%2B12025550100&MediaUrl={}&MediaUrl={}",
        form_urlencoded::byte_serialize(CAT.as_bytes()).collect::<String>(),
        form_urlencoded::byte_serialize(DOG.as_bytes()).collect::<String>(),
    );
    let response = app
        .client
        .post(app.url(&format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json")))
        .header("authorization", basic(&token))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-consentry-purpose", "transactional")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let response = app
        .client
        .post(app.url("/v2/messages"))
        .bearer_auth(&token)
        .header("x-consentry-purpose", "transactional")
        .json(&json!({ "from": ACME_SENDER, "to": "+14155550124", "media_urls": [CAT] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let requests = gateway.requests();
    assert_eq!(requests[0].body["media_urls"], json!([CAT, DOG]));
    assert_eq!(requests[1].body["media_urls"], json!([CAT]));
}

#[tokio::test]
async fn a_held_mms_is_released_with_its_media() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send messages:read");
    let mut mms = message("+14155550123", "Tomorrow's menu", "transactional");
    mms["media_urls"] = json!([CAT]);
    mms["send_at"] = json!("2026-11-19T18:00:00Z");
    let held: Value = app.send(&token, &mms).await.json().await.unwrap();
    assert_eq!(held["status"], "scheduled", "{held}");
    app.state.clock.set("2026-11-19T18:00:01Z".parse().unwrap());
    consentry::scheduler::release_due(&app.state).await.unwrap();
    wait_for_status(&app, &token, held["id"].as_str().unwrap(), "sent").await;
    let requests = gateway.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body["media_urls"], json!([CAT]));
    assert_eq!(requests[0].body["body"], "Tomorrow's menu");
}
