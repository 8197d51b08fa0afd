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

/// A `consentry serve` process on a data folder, killed (SIGKILL) when dropped.
struct Serving {
    child: std::process::Child,
    port: u16,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(folder: &std::path::Path) -> Serving {
    use std::io::BufRead as _;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_consentry"))
        .args([
            "serve",
            "--config",
            "consentry.toml",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--admin-listen", "127.0.0.1:0"])
        .current_dir(folder)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed and waited for on drop, whatever happens next.
    let mut serving = Serving { child, port: 0 };
    let mut stdout = std::io::BufReader::new(serving.child.stdout.take().unwrap()).lines();
    for line in stdout.by_ref() {
        let line = line.unwrap();
        if let Some(address) = line.trim().strip_prefix("API (TLS):   https://") {
            serving.port = address.rsplit(':').next().unwrap().parse().unwrap();
            std::thread::spawn(move || stdout.for_each(drop));
            return serving;
        }
    }
    panic!("consentry did not say where it listens");
}

/// The instance is killed (SIGKILL) in the middle of a batch and started again on its data:
/// the retry with the batch's key sends the recipients not begun, and no recipient reaches the
/// gateway twice; a line cut between its record and its gateway's answer stays in doubt
/// (`idempotency_key_in_use`), never sent again.
#[tokio::test]
async fn a_batch_whose_instance_is_killed_sends_each_recipient_at_most_once_on_retry() {
    // Eight groups of the batch's 256: the kill comes while the first four are under way.
    const RECIPIENTS: usize = 2000;
    let gateway = FakeGateway::start().await;
    gateway.set_mode(GatewayMode::Stall(std::time::Duration::from_millis(40)));
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("gw.secret"), GATEWAY_SECRET).unwrap();
    std::fs::write(
        folder.path().join("consentry.toml"),
        format!(
            "data_dir = \"data\"\n[jwt]\ndev_issuer = true\n[[tenants]]\nid = \"shop\"\n\
             senders = [\"{ACME_SENDER}\"]\nupstream = \"gw\"\npurposes = [\"transactional\"]\n\
             [[upstreams]]\nname = \"gw\"\nkind = \"http-json\"\nurl = \"{}\"\n\
             credential = {{ file = \"gw.secret\" }}\n",
            gateway.url()
        ),
    )
    .unwrap();
    let first = serve(folder.path());
    let token = std::process::Command::new(env!("CARGO_BIN_EXE_consentry"))
        .args([
            "token",
            "--data-dir",
            "data",
            "--tenant",
            "shop",
            "--sub",
            "crm",
        ])
        .args(["--scope", "messages:send"])
        .current_dir(folder.path())
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let cert = std::fs::read(folder.path().join("data/tls/cert.pem")).unwrap();
    let client = client(&cert, None);
    let recipients: Vec<Value> = (0..RECIPIENTS)
        .map(|i| json!({ "to": format!("+1415301{i:04}") }))
        .collect();
    let batch = json!({
        "from": ACME_SENDER, "purpose": "transactional", "body": "Your order has shipped",
        "recipients": recipients
    });
    let post = |port: u16| {
        client
            .post(format!("https://localhost:{port}/v1/messages/batch"))
            .bearer_auth(&token)
            .header("idempotency-key", "campaign-7")
            .json(&batch)
            .send()
    };

    let mut response = post(first.port).await.unwrap();
    assert_eq!(response.status(), 200);
    let chunk = response.chunk().await.unwrap().unwrap();
    let line: Value = serde_json::from_slice(chunk.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["index"], 0, "{line}");
    drop(first); // SIGKILL, mid-batch
    drop(response);
    let before_restart = gateway.requests().len();
    assert!(
        (1..RECIPIENTS).contains(&before_restart),
        "killed mid-batch: {before_restart} of {RECIPIENTS} reached the gateway"
    );

    gateway.set_mode(GatewayMode::Accept);
    let second = serve(folder.path());
    let answer = post(second.port).await.unwrap();
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["recipients"], RECIPIENTS, "{summary}");

    // No recipient twice; every one either sent (now or before the kill) or in doubt.
    let mut count = std::collections::BTreeMap::new();
    for request in gateway.requests() {
        *count
            .entry(request.body["to"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert!(count.values().all(|n| *n == 1), "a recipient sent twice");
    for line in &lines[..RECIPIENTS] {
        match line["status"].as_str().unwrap() {
            "sent" => {}
            "failed" => assert_eq!(line["error"]["code"], "idempotency_key_in_use", "{line}"),
            other => panic!("{other}: {line}"),
        }
    }
    assert!(summary["sent"].as_u64().unwrap() > 0, "{summary}");
    let reached = count.len();
    let in_doubt = summary["failed"].as_u64().unwrap() as usize;
    assert!(
        reached + in_doubt >= RECIPIENTS && reached <= RECIPIENTS,
        "{reached} reached, {in_doubt} in doubt: {summary}"
    );

    // The messages the kill caught between their record and their gateway's answer (none,
    // when it came between two groups) are listed for the operator to look up at the gateway:
    // exactly those recorded as allowed with no answer recorded, and none of those the retry
    // sent. (`sending::a_message_is_in_doubt_…` holds one that always is.)
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_consentry"))
        .args(["messages", "in-doubt", "--config", "consentry.toml"])
        .args(["--since", "1h", "--settle", "0s"])
        .current_dir(folder.path())
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let mut listed: Vec<String> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["tenant"], "shop", "{line}");
            assert_eq!(line["allowed_by"], "send", "{line}");
            line["id"].as_str().unwrap().to_owned()
        })
        .collect();
    listed.sort();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(folder.path().join("data/consentry.db"))
        .read_only(true);
    let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
        .await
        .unwrap();
    let unanswered: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM messages m WHERE decision = 'allowed' AND NOT EXISTS \
         (SELECT 1 FROM message_outcomes o WHERE o.message_id = m.id) ORDER BY id",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    assert_eq!(listed, unanswered);
}
