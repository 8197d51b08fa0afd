//! `POST /v1/messages/batch`: each recipient decided, recorded and forwarded on its own, the
//! lines streamed back in order, and a retried batch sending nothing twice.

use serde_json::{Value, json};

use crate::helpers::*;

const ANN: &str = "+14155550181";
const CY: &str = "+14155550182";
const BO: &str = "+14155550183";
const DI: &str = "+14155550184";

async fn post_batch(
    app: &TestApp,
    token: &str,
    key: Option<&str>,
    batch: &Value,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/v1/messages/batch"))
        .bearer_auth(token)
        .json(batch);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

/// The NDJSON lines of a batch's answer.
async fn lines(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn a_batch_decides_each_recipient_streams_lines_in_order_and_resumes() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send consents:write");
    let opt_out = json!({ "number": CY, "action": "opt_out" });
    assert_eq!(app.consent(&token, &opt_out).await.status(), 201);
    let batch = json!({
        "from": ACME_SENDER, "purpose": "transactional",
        "body": "Hi {{name}}, your order shipped",
        "recipients": [
            { "to": ANN, "vars": { "name": "Ann" } },
            { "to": "12", "vars": { "name": "Nobody" } },
            { "to": CY, "vars": { "name": "Cy" } },
            { "to": BO, "body": "Your code is 4242" },
            { "to": DI },
        ]
    });

    let first = lines(post_batch(&app, &token, Some("batch-1"), &batch).await).await;
    assert_eq!(first.len(), 6, "{first:?}");
    let statuses: Vec<&str> = first[..5]
        .iter()
        .map(|line| line["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["sent", "invalid", "denied", "sent", "invalid"]);
    for (index, line) in first[..5].iter().enumerate() {
        assert_eq!(line["index"], index, "in order: {line}");
    }
    assert_eq!(first[1]["error"]["code"], "invalid_recipient");
    assert_eq!(first[2]["reasons"][0]["code"], "opted_out");
    assert_eq!(first[4]["error"]["code"], "missing_variable");
    assert_eq!(first[0]["to"], "+1415555****", "numbers masked");
    assert_eq!(
        first[5]["summary"],
        json!({ "recipients": 5, "sent": 2, "scheduled": 0, "denied": 1, "failed": 0, "invalid": 2 })
    );
    let mut bodies: Vec<String> = gateway
        .requests()
        .iter()
        .map(|request| request.body["body"].as_str().unwrap().to_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["Hi Ann, your order shipped", "Your code is 4242"]);
    // Each decided recipient has its record.
    assert_eq!(
        app.count("SELECT COUNT(*) FROM messages WHERE tenant = 'acme'")
            .await,
        3
    );

    // The same batch again: what was done is replayed, nothing is sent twice.
    let again = lines(post_batch(&app, &token, Some("batch-1"), &batch).await).await;
    for index in [0, 2, 3] {
        assert_eq!(again[index]["replayed"], true, "{}", again[index]);
        assert_eq!(again[index]["status"], first[index]["status"]);
        assert_eq!(again[index]["id"], first[index]["id"]);
    }
    assert_eq!(gateway.requests().len(), 2, "nothing sent twice");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM messages WHERE tenant = 'acme'")
            .await,
        3
    );

    // The same key for another message is refused on that line only.
    let mut changed = batch.clone();
    changed["recipients"][0]["vars"]["name"] = json!("Anne");
    let refused = lines(post_batch(&app, &token, Some("batch-1"), &changed).await).await;
    assert_eq!(refused[0]["error"]["code"], "idempotency_key_reused");
    assert_eq!(refused[3]["replayed"], true);
    assert_eq!(gateway.requests().len(), 2);

    // Without a key, a batch sends again.
    let unkeyed = lines(post_batch(&app, &token, None, &batch).await).await;
    assert_eq!(unkeyed[0]["status"], "sent");
    assert!(unkeyed[0].get("replayed").is_none());
    assert_eq!(gateway.requests().len(), 4);
}

#[tokio::test]
async fn a_batch_out_of_bounds_is_refused_whole() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let recipients = |n: usize| -> Vec<Value> { (0..n).map(|_| json!({ "to": ANN })).collect() };
    for n in [0, 10_001] {
        let batch = json!({
            "from": ACME_SENDER, "purpose": "transactional", "body": "hi",
            "recipients": recipients(n)
        });
        let response = post_batch(&app, &token, None, &batch).await;
        assert_eq!(response.status(), 400, "{n}");
        assert_eq!(error_code(response).await, "invalid_batch");
    }
    // A recipient's own bad key is its line's refusal, not the batch's.
    let batch = json!({
        "from": ACME_SENDER, "purpose": "transactional", "body": "hi",
        "recipients": [{ "to": ANN, "idempotency_key": "" }, { "to": BO }]
    });
    let answered = lines(post_batch(&app, &token, Some("b"), &batch).await).await;
    assert_eq!(answered[0]["error"]["code"], "invalid_idempotency_key");
    assert_eq!(answered[1]["status"], "sent");
    let sender = app.token("acme", "messages:read");
    let batch = json!({
        "from": ACME_SENDER, "purpose": "transactional", "body": "hi", "recipients": recipients(1)
    });
    assert_eq!(post_batch(&app, &sender, None, &batch).await.status(), 403);
    assert_eq!(
        gateway.requests().len(),
        1,
        "only the one valid line was sent"
    );
}

/// A client that goes away mid-batch: the lines begun finish (each recorded one is forwarded
/// and has its outcome), the rest are not begun, and the retry with the batch's key sends the
/// rest, none twice.
#[tokio::test]
async fn a_batch_cut_short_leaves_no_line_half_done_and_resumes() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let recipients: Vec<Value> = (0..400)
        .map(|i| json!({ "to": format!("+1415300{i:04}") }))
        .collect();
    let batch = json!({
        "from": ACME_SENDER, "purpose": "transactional", "body": "Your order has shipped",
        "recipients": recipients
    });
    let mut response = post_batch(&app, &token, Some("cut"), &batch).await;
    assert_eq!(response.status(), 200);
    // Read the first chunk, then go away.
    let first = response.chunk().await.unwrap().unwrap();
    let line: Value = serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["index"], 0, "{line}");
    drop(response);

    // The lines begun finish: every record is forwarded, has its outcome and its line kept.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let records = app.count("SELECT COUNT(*) FROM messages").await;
        let outcomes = app.count("SELECT COUNT(*) FROM message_outcomes").await;
        let pending = app
            .count("SELECT COUNT(*) FROM idempotency_keys WHERE state = 'pending'")
            .await;
        if records == outcomes && gateway.requests().len() as i64 == records && pending == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{records} records, {outcomes} outcomes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The retry sends the rest, none twice.
    let again = lines(post_batch(&app, &token, Some("cut"), &batch).await).await;
    assert_eq!(again.last().unwrap()["summary"]["sent"], 400);
    assert_eq!(gateway.requests().len(), 400, "each recipient once");
    let mut sent_to: Vec<String> = gateway
        .requests()
        .iter()
        .map(|request| request.body["to"].as_str().unwrap().to_owned())
        .collect();
    sent_to.sort();
    sent_to.dedup();
    assert_eq!(sent_to.len(), 400);
}
