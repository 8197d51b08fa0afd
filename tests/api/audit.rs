//! The audit log end to end: lists and their scopes, proofs checked against signed
//! checkpoints, tampering caught by `consentry audit verify`, erasure and key rotation.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use consentry::audit::checkpoint::{Checkpoint, CheckpointView, unhex};
use consentry::audit::merkle;
use serde_json::{Value, json};

use crate::helpers::*;

const BINARY: &str = env!("CARGO_BIN_EXE_consentry");
const WRITER: &str = "messages:send messages:read consents:write consents:read";

/// Runs a `consentry` command on the test app's configuration.
fn cli(app: &TestApp, args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .arg("--config")
        .arg(app.folder.join("consentry.toml"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `consentry audit verify` online; returns (success, what it printed).
pub(crate) fn verify(app: &TestApp) -> (bool, String) {
    let output = cli(app, &["audit", "verify"]);
    (
        output.status.success(),
        format!(
            "{}{}",
            stdout(&output),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Waits until a checkpoint covers every leaf written so far; returns it.
pub(crate) async fn checkpoint_covering_all(app: &TestApp, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leaves = app.count("SELECT count(*) FROM log_leaves").await;
        let response = app.get(token, "/v1/audit/checkpoints/latest").await;
        if response.status() == 200 {
            let checkpoint: Value = response.json().await.unwrap();
            if checkpoint["tree_size"].as_i64() == Some(leaves) {
                return checkpoint;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint covers the {leaves} leaves"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn lines(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn with_body(mut message: Value, body: &str) -> Value {
    message["body"] = json!(body);
    message
}

async fn sent_id(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

fn public_key(app: &TestApp) -> Vec<u8> {
    let output = cli(app, &["audit", "public-key"]);
    assert!(output.status.success());
    base64::engine::general_purpose::STANDARD
        .decode(stdout(&output).trim())
        .unwrap()
}

#[tokio::test]
async fn audit_lists_follow_the_log_and_bodies_need_audit_decrypt() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let shop = app.token("shop", WRITER);
    let (one, two) = ("+14155550101", "+14155550102");
    assert_eq!(app.consent(&shop, &written_opt_in(one)).await.status(), 201);
    let first = sent_id(
        app.send(
            &shop,
            &with_body(
                shop_message(one, "transactional", None, None),
                "first secret",
            ),
        )
        .await,
    )
    .await;
    app.send(
        &shop,
        &with_body(
            shop_message(one, "transactional", None, None),
            "second secret",
        ),
    )
    .await;
    app.send(&shop, &shop_message(two, "transactional", None, None))
        .await;
    let auditor = app.token("shop", "audit:read");
    checkpoint_covering_all(&app, &auditor).await;

    let all = lines(app.get(&auditor, "/v1/audit/messages").await).await;
    assert_eq!(all.len(), 3);
    let indexes: Vec<i64> = all
        .iter()
        .map(|row| row["leaf_index"].as_i64().unwrap())
        .collect();
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    for row in &all {
        assert!(row.get("body").is_none());
        assert!(!row.to_string().contains("secret"), "a body leaked: {row}");
        assert_eq!(
            row["recipient"].as_str().unwrap().len(),
            12,
            "masked: {row}"
        );
        // The leaf is exactly what the log hashed.
        let leaf = base64::engine::general_purpose::STANDARD
            .decode(row["leaf"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            consentry::crypto::hex(&merkle::leaf_hash(&leaf)),
            row["leaf_hash"].as_str().unwrap()
        );
    }
    let filtered = lines(
        app.get(
            &auditor,
            &format!("/v1/audit/messages?number={}", "%2B14155550101"),
        )
        .await,
    )
    .await;
    assert_eq!(filtered.len(), 2);
    let page = lines(
        app.get(
            &auditor,
            &format!("/v1/audit/messages?after={}&limit=1", indexes[0]),
        )
        .await,
    )
    .await;
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["leaf_index"].as_i64(), Some(indexes[1]));
    let csv = app.get(&auditor, "/v1/audit/messages?format=csv").await;
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.starts_with("leaf_index,id,created_at,recipient"));
    let consents = lines(
        app.get(&auditor, "/v1/audit/consent-events?action=opt_in")
            .await,
    )
    .await;
    assert_eq!(consents.len(), 1);
    assert_eq!(consents[0]["action"], "opt_in");
    let bad = app.get(&auditor, "/v1/audit/messages?decision=maybe").await;
    assert_eq!(bad.status(), 400);
    assert_eq!(error_code(bad).await, "invalid_query");

    // audit:read never gets a body; audit:decrypt does, and the read is itself logged.
    let body_path = format!("/v1/audit/messages/{first}/body");
    let refused = app.get(&auditor, &body_path).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(error_code(refused).await, "insufficient_scope");
    assert_eq!(app.count("SELECT count(*) FROM body_accesses").await, 0);
    let decrypter = app.token("shop", "audit:read audit:decrypt");
    let body: Value = app.get(&decrypter, &body_path).await.json().await.unwrap();
    assert_eq!(body["body"], "first secret");
    assert_eq!(body["to"], one);
    assert_eq!(app.count("SELECT count(*) FROM body_accesses").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM log_leaves WHERE kind = 'body_access'")
            .await,
        1
    );

    // Another tenant's auditor sees none of it.
    let stranger = app.token("acme", "audit:read audit:decrypt");
    assert!(
        lines(app.get(&stranger, "/v1/audit/messages").await)
            .await
            .is_empty()
    );
    assert!(
        lines(app.get(&stranger, "/v1/audit/consent-events").await)
            .await
            .is_empty()
    );
    assert_eq!(app.get(&stranger, &body_path).await.status(), 404);
    let proof = app
        .get(
            &stranger,
            &format!("/v1/audit/proofs/inclusion?leaf_index={}", indexes[0]),
        )
        .await;
    assert_eq!(proof.status(), 404);
    let bundle: Value = app
        .get(&stranger, "/v1/audit/numbers/%2B14155550101/bundle")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bundle["messages"], json!([]));
    assert_eq!(bundle["consent_events"], json!([]));
}

#[tokio::test]
async fn proofs_verify_against_signed_checkpoints_and_forgeries_fail() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let shop = app.token("shop", WRITER);
    let auditor = app.token("shop", "audit:read");
    let number = "+14155550111";
    assert_eq!(
        app.consent(&shop, &written_opt_in(number)).await.status(),
        201
    );
    for _ in 0..3 {
        app.send(&shop, &shop_message(number, "transactional", None, None))
            .await;
    }
    let old: CheckpointView =
        serde_json::from_value(checkpoint_covering_all(&app, &auditor).await).unwrap();
    for _ in 0..4 {
        app.send(&shop, &shop_message(number, "transactional", None, None))
            .await;
    }
    let new: CheckpointView =
        serde_json::from_value(checkpoint_covering_all(&app, &auditor).await).unwrap();
    let key = public_key(&app);
    let (old, new) = (
        Checkpoint::from_view(&old).unwrap(),
        Checkpoint::from_view(&new).unwrap(),
    );
    old.verify(&key).unwrap();
    new.verify(&key).unwrap();

    // Every leaf of the tenant is in the tree; a forged path is not.
    let messages = lines(app.get(&auditor, "/v1/audit/messages").await).await;
    assert_eq!(messages.len(), 7);
    for row in &messages {
        let index = row["leaf_index"].as_u64().unwrap();
        let proof: Value = app
            .get(
                &auditor,
                &format!(
                    "/v1/audit/proofs/inclusion?leaf_index={index}&tree_size={}",
                    new.tree_size
                ),
            )
            .await
            .json()
            .await
            .unwrap();
        let path: Vec<merkle::Hash> = proof["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| unhex(h.as_str().unwrap()).unwrap())
            .collect();
        let leaf = unhex(row["leaf_hash"].as_str().unwrap()).unwrap();
        merkle::verify_inclusion(index, new.tree_size, &leaf, &path, &new.root_hash).unwrap();
        let mut forged = path.clone();
        forged[0][5] ^= 0x20;
        assert!(
            merkle::verify_inclusion(index, new.tree_size, &leaf, &forged, &new.root_hash).is_err()
        );
    }

    // The new tree extends the old one; a forged consistency proof does not show it.
    let consistency: Value = app
        .get(
            &auditor,
            &format!(
                "/v1/audit/proofs/consistency?from={}&to={}",
                old.tree_size, new.tree_size
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    let path: Vec<merkle::Hash> = consistency["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| unhex(h.as_str().unwrap()).unwrap())
        .collect();
    merkle::verify_consistency(
        old.tree_size,
        new.tree_size,
        &old.root_hash,
        &new.root_hash,
        &path,
    )
    .unwrap();
    let mut forged = path.clone();
    let last = forged.len() - 1;
    forged[last][0] ^= 1;
    assert!(
        merkle::verify_consistency(
            old.tree_size,
            new.tree_size,
            &old.root_hash,
            &new.root_hash,
            &forged
        )
        .is_err()
    );

    // One number's bundle verifies offline with nothing but the public key.
    let folder = tempfile::tempdir().unwrap();
    let key_file = folder.path().join("log.pub");
    std::fs::write(
        &key_file,
        base64::engine::general_purpose::STANDARD.encode(&key),
    )
    .unwrap();
    let bundle: Value = app
        .get(&auditor, "/v1/audit/numbers/%2B14155550111/bundle")
        .await
        .json()
        .await
        .unwrap();
    let offline = |bundle: &Value| {
        let file = folder.path().join("bundle.json");
        std::fs::write(&file, bundle.to_string()).unwrap();
        let output = Command::new(BINARY)
            .args(["audit", "verify", "--bundle"])
            .arg(&file)
            .arg("--public-key")
            .arg(&key_file)
            .output()
            .unwrap();
        (output.status.success(), stdout(&output))
    };
    let (ok, said) = offline(&bundle);
    assert!(ok, "{said}");
    assert!(said.contains("15 rows proven"), "{said}");
    let index = bundle["messages"][2]["leaf_index"].as_u64().unwrap();
    let mut forged = bundle.clone();
    let hash = forged["messages"][2]["inclusion_proof"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = match hash.strip_prefix('0') {
        Some(rest) => format!("1{rest}"),
        None => format!("0{}", &hash[1..]),
    };
    forged["messages"][2]["inclusion_proof"][0] = json!(flipped);
    let (ok, said) = offline(&forged);
    assert!(!ok);
    assert!(
        said.contains(&format!("leaf {index}: inclusion proof")),
        "{said}"
    );
    let mut altered = bundle.clone();
    let mut leaf = base64::engine::general_purpose::STANDARD
        .decode(altered["messages"][2]["leaf"].as_str().unwrap())
        .unwrap();
    let at = leaf.len() - 3;
    leaf[at] ^= 1;
    altered["messages"][2]["leaf"] = json!(base64::engine::general_purpose::STANDARD.encode(&leaf));
    let (ok, said) = offline(&altered);
    assert!(!ok);
    assert!(said.contains(&format!("leaf {index}")), "{said}");
    let mut resigned = bundle.clone();
    resigned["checkpoint"]["tree_size"] = json!(new.tree_size + 1);
    let (ok, said) = offline(&resigned);
    assert!(!ok);
    assert!(said.contains("signature"), "{said}");
    // A proof left out, a shown field the leaf does not hold, a leaf in the wrong section.
    let mut unproven = bundle.clone();
    unproven["messages"][2]["inclusion_proof"] = Value::Null;
    let (ok, said) = offline(&unproven);
    assert!(!ok);
    assert!(
        said.contains(&format!("leaf {index}: no inclusion proof")),
        "{said}"
    );
    let mut relabelled = bundle.clone();
    relabelled["messages"][2]["decision"] = json!("denied");
    let (ok, said) = offline(&relabelled);
    assert!(!ok);
    assert!(
        said.contains(&format!("leaf {index}: the row shows a decision")),
        "{said}"
    );
    let mut opted_out = bundle.clone();
    opted_out["consent_events"][0]["action"] = json!("opt_out");
    let (ok, said) = offline(&opted_out);
    assert!(!ok);
    assert!(said.contains("the row shows a action"), "{said}");
    let mut moved = bundle.clone();
    let row = moved["messages"][2].clone();
    moved["consent_events"].as_array_mut().unwrap().push(row);
    let (ok, said) = offline(&moved);
    assert!(!ok);
    assert!(
        said.contains("a message leaf among the consent_events"),
        "{said}"
    );

    // Between the two checkpoints an auditor kept, the consistency proof verifies offline.
    let write = |name: &str, value: &Value| {
        let file = folder.path().join(name);
        std::fs::write(&file, value.to_string()).unwrap();
        file
    };
    let old_file = write(
        "old.json",
        &serde_json::to_value(old.view(app.state.log_signer.origin())).unwrap(),
    );
    let new_file = write(
        "new.json",
        &serde_json::to_value(new.view(app.state.log_signer.origin())).unwrap(),
    );
    let consistent = |proof: &Value| {
        let proof_file = write("consistency.json", proof);
        let output = Command::new(BINARY)
            .args(["audit", "verify", "--consistency"])
            .arg(&proof_file)
            .arg("--old-checkpoint")
            .arg(&old_file)
            .arg("--checkpoint")
            .arg(&new_file)
            .arg("--public-key")
            .arg(&key_file)
            .output()
            .unwrap();
        (output.status.success(), stdout(&output))
    };
    let (ok, said) = consistent(&consistency);
    assert!(ok, "{said}");
    let mut forged_consistency = consistency.clone();
    let first = forged_consistency["proof"][0].as_str().unwrap().to_owned();
    forged_consistency["proof"][0] = json!(first.chars().rev().collect::<String>());
    let (ok, said) = consistent(&forged_consistency);
    assert!(!ok);
    assert!(
        said.contains(&format!("leaf {}: consistency proof", old.tree_size)),
        "{said}"
    );

    // The whole log, exported, verifies offline too; a line taken out is found.
    let leaves = folder.path().join("leaves.ndjson");
    let checkpoints = folder.path().join("checkpoints.json");
    let export = cli(
        &app,
        &[
            "audit",
            "export",
            "--out",
            leaves.to_str().unwrap(),
            "--checkpoints",
            checkpoints.to_str().unwrap(),
        ],
    );
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let offline_export = |leaves: &Path| {
        let output = Command::new(BINARY)
            .args(["audit", "verify", "--export"])
            .arg(leaves)
            .arg("--checkpoint")
            .arg(&checkpoints)
            .arg("--public-key")
            .arg(&key_file)
            .output()
            .unwrap();
        (output.status.success(), stdout(&output))
    };
    let (ok, said) = offline_export(&leaves);
    assert!(ok, "{said}");
    let text = std::fs::read_to_string(&leaves).unwrap();
    let without_third: String = text
        .lines()
        .enumerate()
        .filter(|(n, _)| *n != 3)
        .map(|(_, line)| format!("{line}\n"))
        .collect();
    let cut = folder.path().join("cut.ndjson");
    std::fs::write(&cut, without_third).unwrap();
    let (ok, said) = offline_export(&cut);
    assert!(!ok);
    assert!(said.contains("leaf 3: missing"), "{said}");
    let shorter: String = text
        .lines()
        .take(5)
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&cut, shorter).unwrap();
    let (ok, said) = offline_export(&cut);
    assert!(!ok);
    assert!(said.contains("leaf 5: truncated"), "{said}");
    // One leaf's last byte changed: named by its logged hash, not a range of leaves.
    let altered: String = text
        .lines()
        .enumerate()
        .map(|(n, line)| {
            let mut row: Value = serde_json::from_str(line).unwrap();
            if n == 2 {
                let standard = &base64::engine::general_purpose::STANDARD;
                let mut bytes = standard.decode(row["leaf"].as_str().unwrap()).unwrap();
                *bytes.last_mut().unwrap() ^= 1;
                row["leaf"] = json!(standard.encode(bytes));
            }
            format!("{row}\n")
        })
        .collect();
    std::fs::write(&cut, altered).unwrap();
    let (ok, said) = offline_export(&cut);
    assert!(!ok);
    assert!(
        said.contains("FAILED: leaf 2: the") && said.contains("was altered after it was logged"),
        "{said}"
    );
    let mut views: Value = serde_json::from_slice(&std::fs::read(&checkpoints).unwrap()).unwrap();
    let signature = views[0]["signature"].as_str().unwrap().to_owned();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    views[0]["signature"] = json!(format!("{flipped}{}", &signature[1..]));
    std::fs::write(&checkpoints, views.to_string()).unwrap();
    let (ok, said) = offline_export(&leaves);
    assert!(!ok);
    assert!(said.contains("the signature does not verify"), "{said}");
}

#[tokio::test]
async fn tampering_with_the_database_is_caught_naming_the_position() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let shop = app.token("shop", WRITER);
    let auditor = app.token("shop", "audit:read");
    let number = "+14155550121";
    assert_eq!(
        app.consent(&shop, &written_opt_in(number)).await.status(),
        201
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            sent_id(
                app.send(&shop, &shop_message(number, "transactional", None, None))
                    .await,
            )
            .await,
        );
    }
    checkpoint_covering_all(&app, &auditor).await;
    let (ok, said) = verify(&app);
    assert!(ok, "an untouched log verifies: {said}");
    assert!(said.contains("ok: 11 leaves"), "{said}");
    let db = &app.database;
    let index_of = |kind: &str, id: &str| {
        format!("SELECT leaf_index FROM log_leaves WHERE kind = '{kind}' AND ref_id = '{id}'")
    };
    let second = db.count(&index_of("message", &ids[1])).await;
    let fourth = db.count(&index_of("message", &ids[3])).await;

    // One byte of a stored row.
    db.drop_trigger("messages_are_append_only_update", "messages")
        .await;
    let original = db
        .text(&format!(
            "SELECT sender_masked FROM messages WHERE id = '{}'",
            ids[1]
        ))
        .await;
    db.execute(&format!(
        "UPDATE messages SET sender_masked = '{}X' WHERE id = '{}'",
        &original[..original.len() - 1],
        ids[1]
    ))
    .await
    .unwrap();
    let (ok, said) = verify(&app);
    assert!(!ok);
    assert!(
        said.contains(&format!(
            "leaf {second}: the message {} was altered",
            ids[1]
        )),
        "{said}"
    );
    db.execute(&format!(
        "UPDATE messages SET sender_masked = '{original}' WHERE id = '{}'",
        ids[1]
    ))
    .await
    .unwrap();
    assert!(verify(&app).0, "restored");

    // Two rows' contents swapped.
    db.execute(&format!(
        "CREATE TABLE swap AS SELECT id, payload FROM messages WHERE id IN ('{}', '{}')",
        ids[1], ids[3]
    ))
    .await
    .unwrap();
    for (to, from) in [(&ids[1], &ids[3]), (&ids[3], &ids[1])] {
        db.execute(&format!("UPDATE messages SET payload = (SELECT payload FROM swap WHERE swap.id = '{from}') WHERE id = '{to}'"))
            .await
            .unwrap();
    }
    let (ok, said) = verify(&app);
    assert!(!ok);
    assert!(said.contains(&format!("leaf {second}:")), "{said}");
    for id in [&ids[1], &ids[3]] {
        db.execute(&format!("UPDATE messages SET payload = (SELECT payload FROM swap WHERE swap.id = '{id}') WHERE id = '{id}'"))
            .await
            .unwrap();
    }
    assert!(verify(&app).0, "restored");

    // Two entries' places in the log swapped (the rows untouched).
    db.drop_trigger("log_leaves_indexed_once", "log_leaves")
        .await;
    for sql in [
        format!("UPDATE log_leaves SET leaf_index = -1 WHERE leaf_index = {second}"),
        format!("UPDATE log_leaves SET leaf_index = {second} WHERE leaf_index = {fourth}"),
        format!("UPDATE log_leaves SET leaf_index = {fourth} WHERE leaf_index = -1"),
    ] {
        db.execute(&sql).await.unwrap();
    }
    let (ok, said) = verify(&app);
    assert!(!ok);
    assert!(
        said.contains(&format!("leaf {second}:")) && said.contains("moved"),
        "{said}"
    );
    for sql in [
        format!("UPDATE log_leaves SET leaf_index = -1 WHERE leaf_index = {second}"),
        format!("UPDATE log_leaves SET leaf_index = {second} WHERE leaf_index = {fourth}"),
        format!("UPDATE log_leaves SET leaf_index = {fourth} WHERE leaf_index = -1"),
    ] {
        db.execute(&sql).await.unwrap();
    }
    assert!(verify(&app).0, "restored");

    // A row deleted.
    let event = db.text("SELECT id FROM consent_events").await;
    let event_index = db.count(&index_of("consent_event", &event)).await;
    db.drop_trigger("consent_events_are_append_only_delete", "consent_events")
        .await;
    db.execute(&format!(
        "CREATE TABLE saved_event AS SELECT * FROM consent_events WHERE id = '{event}'"
    ))
    .await
    .unwrap();
    db.execute(&format!("DELETE FROM consent_events WHERE id = '{event}'"))
        .await
        .unwrap();
    let (ok, said) = verify(&app);
    assert!(!ok);
    assert!(
        said.contains(&format!(
            "leaf {event_index}: the consent_event {event} is missing"
        )),
        "{said}"
    );
    // An export cannot show that leaf: it stops, names it, and leaves no partial file behind.
    let out = app.folder.join("tampered.ndjson");
    let export = cli(
        &app,
        &[
            "audit",
            "export",
            "--out",
            out.to_str().unwrap(),
            "--checkpoints",
            app.folder.join("tampered.json").to_str().unwrap(),
        ],
    );
    assert!(!export.status.success());
    let said = String::from_utf8_lossy(&export.stderr);
    assert!(
        said.contains(&format!("leaf {event_index}: the consent_event {event}")),
        "{said}"
    );
    assert!(!out.exists(), "no partial export");
    db.execute("INSERT INTO consent_events SELECT * FROM saved_event")
        .await
        .unwrap();
    assert!(verify(&app).0, "restored");

    // The log truncated.
    db.drop_trigger("log_leaves_are_append_only_delete", "log_leaves")
        .await;
    db.execute("CREATE TABLE saved_log AS SELECT * FROM log_leaves WHERE leaf_index >= 4")
        .await
        .unwrap();
    db.execute("DELETE FROM log_leaves WHERE leaf_index >= 4")
        .await
        .unwrap();
    let (ok, said) = verify(&app);
    assert!(!ok);
    assert!(said.contains("leaf 4: truncated"), "{said}");
    db.execute("INSERT INTO log_leaves SELECT * FROM saved_log")
        .await
        .unwrap();
    assert!(verify(&app).0, "restored");

    // A row added behind the log's back.
    db.execute(&format!(
        "INSERT INTO consent_events (id, tenant, recipient_hash, recipient_masked, action, level, \
         brand, campaign, purposes, method, occurred_at_us, recorded_at_us, recorded_by, \
         external_id, idempotency_key, key_id, evidence) SELECT 'evt_forged', tenant, \
         recipient_hash, recipient_masked, 'opt_in', level, brand, campaign, purposes, method, \
         occurred_at_us, recorded_at_us, recorded_by, external_id, 'forged', key_id, evidence \
         FROM consent_events WHERE id = '{event}'"
    ))
    .await
    .unwrap();
    let (ok, said) = verify(&app);
    assert!(!ok);
    assert!(
        said.contains("consent_event: 2 rows, 1 log entries"),
        "{said}"
    );
    db.execute("DELETE FROM consent_events WHERE id = 'evt_forged'")
        .await
        .unwrap();
    assert!(verify(&app).0, "restored");

    // A checkpoint forged: its root changed without the key to sign it.
    db.drop_trigger("log_checkpoints_are_append_only_update", "log_checkpoints")
        .await;
    db.execute("UPDATE log_checkpoints SET root_hash = (SELECT hash FROM log_nodes WHERE level = 0 AND idx = 0) WHERE tree_size = (SELECT max(tree_size) FROM log_checkpoints)")
        .await
        .unwrap();
    let (ok, said) = verify(&app);
    assert!(!ok);
    assert!(said.contains("the signature does not verify"), "{said}");

    // No checkpoint left at all: leaves prove nothing. (With the server stopped: its sequencer
    // would sign the tree again at once.)
    let db = db.clone();
    let config = app.folder.join("consentry.toml");
    let _folder = app.stop_keeping_folder().await;
    db.drop_trigger("log_checkpoints_are_append_only_delete", "log_checkpoints")
        .await;
    db.execute("DELETE FROM log_checkpoints").await.unwrap();
    let output = Command::new(BINARY)
        .args(["audit", "verify", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let said = stdout(&output);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("no signed checkpoint"), "{said}");
}

#[tokio::test]
async fn erasure_shreds_bodies_yet_the_log_verifies_and_opt_outs_hold() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let shop = app.token("shop", WRITER);
    let (erased, kept) = ("+14155550131", "+14155550132");
    assert_eq!(
        app.consent(&shop, &written_opt_in(erased)).await.status(),
        201
    );
    let gone = sent_id(
        app.send(
            &shop,
            &with_body(shop_message(erased, "marketing", None, None), "erase me"),
        )
        .await,
    )
    .await;
    let stays = sent_id(
        app.send(
            &shop,
            &with_body(shop_message(kept, "transactional", None, None), "keep me"),
        )
        .await,
    )
    .await;
    let stop = app
        .consent(
            &shop,
            &json!({ "number": erased, "action": "opt_out", "method": "keyword" }),
        )
        .await;
    assert_eq!(stop.status(), 201);
    let decrypter = app.token("shop", "audit:read audit:decrypt");
    let body = |id: &str| format!("/v1/audit/messages/{id}/body");
    assert_eq!(app.get(&decrypter, &body(&gone)).await.status(), 200);
    let wrapped = app
        .database
        .text(&if app.database.is_postgres() {
            format!(
                "SELECT encode(k.wrapped, 'hex') FROM recipient_keys k \
                 JOIN messages m ON m.key_id = k.id WHERE m.id = '{gone}'"
            )
        } else {
            // On SQLite the key is in the recipient's row (migration 0017).
            format!(
                "SELECT hex(k.key_wrapped) FROM log_heads k \
                 JOIN messages m ON m.key_id = k.key_id WHERE m.id = '{gone}'"
            )
        })
        .await
        .to_lowercase();

    // Only admin may erase, and only a number.
    let eraser = app.token("shop", "admin");
    let request = |token: &str, number: &str| {
        app.client
            .post(app.url("/v1/erasure"))
            .bearer_auth(token)
            .json(&json!({ "number": number }))
            .send()
    };
    assert_eq!(request(&decrypter, erased).await.unwrap().status(), 403);
    let bad = request(&eraser, "not a number").await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(error_code(bad).await, "invalid_number");
    let done: Value = request(&eraser, erased)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["keys_destroyed"], 1, "{done}");

    // Its bodies are gone for good; the other number's are not.
    let refused = app.get(&decrypter, &body(&gone)).await;
    assert_eq!(refused.status(), 410);
    assert_eq!(error_code(refused).await, "body_erased");
    let other: Value = app
        .get(&decrypter, &body(&stays))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(other["body"], "keep me");
    // Not even the key ring, with the key-encryption key from the data folder, opens it.
    let store = consentry::store::open(&match &app.database {
        TestDatabase::Sqlite(path) => format!("sqlite://{}", path.display()),
        TestDatabase::Postgres(url) => url.clone(),
    })
    .await
    .unwrap();
    let kek = consentry::crypto::decode_key(
        &std::fs::read(app.data_dir().join("keys/payload.key")).unwrap(),
    )
    .unwrap();
    let ring = consentry::keyring::KeyRing::load(store.clone(), &kek, 0)
        .await
        .unwrap();
    let record = store
        .audited_message(&consentry::domain::TenantId::parse("shop").unwrap(), &gone)
        .await
        .unwrap()
        .unwrap();
    let opened = ring
        .open(
            format!("consentry/message/v1\0shop\0{gone}").as_bytes(),
            &consentry::crypto::Sealed {
                key_id: record.key_id,
                bytes: record.payload,
            },
        )
        .await;
    assert!(opened.is_err());
    if let TestDatabase::Sqlite(path) = &app.database {
        // Nor is the wrapped key anywhere in the database's files.
        let wrapped: Vec<u8> = (0..wrapped.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&wrapped[i..i + 2], 16).unwrap())
            .collect();
        for suffix in ["", "-wal"] {
            let file = format!("{}{suffix}", path.display());
            if let Ok(bytes) = std::fs::read(&file) {
                assert!(
                    !bytes
                        .windows(wrapped.len())
                        .any(|window| window == wrapped.as_slice()),
                    "the erased key is still in {file}"
                );
            }
        }
    }

    // The opt-out still blocks, and the log, erasure included, still verifies.
    let again = app
        .send(&shop, &shop_message(erased, "marketing", None, None))
        .await;
    assert_eq!(again.status(), 403);
    assert_eq!(error_code(again).await, "opted_out");
    checkpoint_covering_all(&app, &app.token("shop", "audit:read")).await;
    assert_eq!(
        app.count("SELECT count(*) FROM log_leaves WHERE kind = 'erasure'")
            .await,
        1
    );
    let (ok, said) = verify(&app);
    assert!(ok, "{said}");

    // The number's bundle holds its erasure and the read of its body, proven like the rest,
    // and says what it cannot prove.
    let auditor = app.token("shop", "audit:read");
    let bundle: Value = app
        .get(&auditor, &format!("/v1/audit/numbers/{erased}/bundle"))
        .await
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = bundle["other_leaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["kind"].as_str().unwrap())
        .collect();
    // The read before the erasure, the erasure, and the attempt after it (logged before it
    // was refused).
    assert_eq!(
        kinds,
        ["outcome", "body_access", "erasure", "body_access"],
        "{bundle}"
    );
    assert!(bundle["not_in_the_log"].as_array().unwrap().len() >= 3);
    let check = |bundle: &Value| verify_bundle_offline(&app, bundle);
    let (ok, said) = check(&bundle);
    assert!(ok, "{said}");
    // An erasure of another number slipped in is refused.
    let mut forged = bundle.clone();
    forged["recipient_hash"] = json!("00".repeat(32));
    forged["consent_events"] = json!([]);
    forged["messages"] = json!([]);
    let (ok, said) = check(&forged);
    assert!(!ok);
    assert!(said.contains("not about this number"), "{said}");
}

/// `consentry audit verify --bundle` on a bundle, with nothing but the log's public key.
fn verify_bundle_offline(app: &TestApp, bundle: &Value) -> (bool, String) {
    let key_file = app.folder.join("log.pub");
    std::fs::write(&key_file, b64_standard(&public_key(app))).unwrap();
    let bundle_file = app.folder.join("bundle.json");
    std::fs::write(&bundle_file, bundle.to_string()).unwrap();
    let output = Command::new(BINARY)
        .args(["audit", "verify", "--bundle"])
        .arg(&bundle_file)
        .arg("--public-key")
        .arg(&key_file)
        .output()
        .unwrap();
    (output.status.success(), stdout(&output))
}

fn b64_standard(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn rotated_keys_keep_old_rows_readable_and_wrong_keys_fail_loudly() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let shop = app.token("shop", WRITER);
    let decrypter = app.token("shop", "audit:read audit:decrypt");
    let before = sent_id(
        app.send(
            &shop,
            &with_body(
                shop_message("+14155550141", "transactional", None, None),
                "before rotation",
            ),
        )
        .await,
    )
    .await;
    let old_key = app.database.text("SELECT id FROM data_keys").await;

    let rotated = cli(&app, &["keys", "rotate"]);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let new_key = stdout(&rotated).trim().to_owned();
    assert_ne!(new_key, old_key);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM data_keys WHERE id = '{old_key}' AND retired_at_us IS NOT NULL"
        ))
        .await,
        1
    );

    // The running server takes the new key up without a restart.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = String::new();
    for n in 0.. {
        let number = format!("+1415555{:04}", 2000 + n);
        after = sent_id(
            app.send(
                &shop,
                &with_body(
                    shop_message(&number, "transactional", None, None),
                    "after rotation",
                ),
            )
            .await,
        )
        .await;
        let under_new = app
            .count(&if app.database.is_postgres() {
                format!(
                    "SELECT count(*) FROM recipient_keys k JOIN messages m ON m.key_id = k.id \
                     WHERE m.id = '{after}' AND k.data_key_id = '{new_key}'"
                )
            } else {
                format!(
                    "SELECT count(*) FROM log_heads k JOIN messages m ON m.key_id = k.key_id \
                     WHERE m.id = '{after}' AND k.key_data_key_id = '{new_key}'"
                )
            })
            .await;
        if under_new == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the new data key was never used");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (id, text) in [(&before, "before rotation"), (&after, "after rotation")] {
        let body: Value = app
            .get(&decrypter, &format!("/v1/audit/messages/{id}/body"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["body"], text);
    }

    // A wrong key id, or another row's ciphertext, does not open: an error, never a wrong body.
    let db = &app.database;
    db.drop_trigger("messages_are_append_only_update", "messages")
        .await;
    let their_key = db
        .text(&format!("SELECT key_id FROM messages WHERE id = '{after}'"))
        .await;
    db.execute(&format!(
        "UPDATE messages SET key_id = '{their_key}' WHERE id = '{before}'"
    ))
    .await
    .unwrap();
    let wrong = app
        .get(&decrypter, &format!("/v1/audit/messages/{before}/body"))
        .await;
    assert_eq!(wrong.status(), 500);
    assert_eq!(error_code(wrong).await, "body_undecryptable");
    db.execute(&format!("UPDATE messages SET payload = (SELECT payload FROM messages WHERE id = '{after}') WHERE id = '{before}'"))
        .await
        .unwrap();
    let swapped = app
        .get(&decrypter, &format!("/v1/audit/messages/{before}/body"))
        .await;
    assert_eq!(swapped.status(), 500);
    // One byte of a ciphertext flipped, under its own key.
    let hex_of = if db.is_postgres() {
        "encode(payload, 'hex')"
    } else {
        "hex(payload)"
    };
    let original = db
        .text(&format!(
            "SELECT {hex_of} FROM messages WHERE id = '{after}'"
        ))
        .await
        .to_lowercase();
    let flipped = format!(
        "{}{}",
        &original[..40],
        if &original[40..41] == "0" { "1" } else { "0" }
    ) + &original[41..];
    let literal = if db.is_postgres() {
        format!("decode('{flipped}', 'hex')")
    } else {
        format!("X'{flipped}'")
    };
    db.execute(&format!(
        "UPDATE messages SET payload = {literal} WHERE id = '{after}'"
    ))
    .await
    .unwrap();
    let tampered = app
        .get(&decrypter, &format!("/v1/audit/messages/{after}/body"))
        .await;
    assert_eq!(tampered.status(), 500);
    assert_eq!(error_code(tampered).await, "body_undecryptable");
}

#[tokio::test]
async fn a_deferred_message_to_an_erased_number_is_cancelled_not_sent() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let shop = app.token("shop", WRITER);
    let miami = "+13055550188";
    assert_eq!(
        app.consent(&shop, &written_opt_in(miami)).await.status(),
        201
    );
    app.state.clock.set("2026-11-19T01:30:00Z".parse().unwrap()); // 20:30 in Miami
    let deferred = app
        .send(&shop, &shop_message(miami, "marketing", None, None))
        .await;
    assert_eq!(deferred.status(), 202);
    let id = deferred.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let erased = app
        .client
        .post(app.url("/v1/erasure"))
        .bearer_auth(app.token("shop", "admin"))
        .json(&json!({ "number": miami }))
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);
    app.state.clock.set("2026-11-19T13:00:01Z".parse().unwrap());
    consentry::scheduler::release_due(&app.state).await.unwrap();
    let view: Value = app
        .get(&shop, &format!("/v1/messages/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "cancelled", "{view}");
    assert_eq!(view["reasons"][0]["code"], "erased", "{view}");
    assert!(gateway.requests().is_empty(), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_keep_coming_while_sends_never_pause() {
    let gateway = FakeGateway::start().await;
    let app = std::sync::Arc::new(TestApp::spawn(&gateway.url()).await);
    let shop = app.token("shop", WRITER);
    let auditor = app.token("shop", "audit:read");
    let sending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut senders = Vec::new();
    for sender in 0..8 {
        let (app, shop, sending) = (app.clone(), shop.clone(), sending.clone());
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while sending.load(std::sync::atomic::Ordering::Relaxed) {
                let number = format!("+1415556{sender}{n:03}");
                let response = app
                    .send(&shop, &shop_message(&number, "transactional", None, None))
                    .await;
                assert_eq!(response.status(), 201);
                n += 1;
            }
        }));
    }
    // While the sends go on, checkpoints follow them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sizes = Vec::new();
    while sizes.len() < 3 {
        let response = app.get(&auditor, "/v1/audit/checkpoints/latest").await;
        if response.status() == 200 {
            let size = response.json::<Value>().await.unwrap()["tree_size"]
                .as_u64()
                .unwrap();
            if sizes.last() != Some(&size) {
                sizes.push(size);
            }
        }
        assert!(
            Instant::now() < deadline,
            "checkpoints stalled under load: {sizes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sending.store(false, std::sync::atomic::Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
}

#[tokio::test]
async fn erasure_also_clears_the_sandbox_copy() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let beta = app.token("beta", "messages:send admin");
    for (to, body) in [
        ("+14155550151", "erase this"),
        ("+14155550152", "keep this"),
    ] {
        let message =
            json!({ "to": to, "from": BETA_SENDER, "body": body, "purpose": "transactional" });
        assert_eq!(app.send(&beta, &message).await.status(), 201);
    }
    let erased = app
        .client
        .post(app.url("/v1/erasure"))
        .bearer_auth(&beta)
        .json(&json!({ "number": "+14155550151" }))
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);
    let held: Value = app
        .get(&beta, "/v1/sandbox/messages")
        .await
        .json()
        .await
        .unwrap();
    let bodies: Vec<&str> = held["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["keep this"]);
}

/// Long work over the log shows a progress bar on a terminal and nothing in a pipe.
#[tokio::test]
async fn verify_and_export_show_progress_on_a_terminal_only() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", WRITER);
    for index in 0..5 {
        let response = app
            .send(
                &token,
                &message("+14155550123", &format!("m {index}"), "transactional"),
            )
            .await;
        assert_eq!(response.status(), 201);
    }
    checkpoint_covering_all(&app, &app.token("acme", "audit:read")).await;

    // In a pipe: the verdict on stdout, nothing on stderr.
    let piped = cli(&app, &["audit", "verify"]);
    assert!(piped.status.success());
    assert!(stdout(&piped).starts_with("ok: "), "{}", stdout(&piped));
    assert_eq!(String::from_utf8_lossy(&piped.stderr), "");

    // On a terminal (script(1) gives the command a pseudo-terminal): the bar is drawn.
    let Ok(script) = which_script() else {
        eprintln!("script(1) is not installed: the terminal case is not run");
        return;
    };
    let command = format!(
        "RUST_LOG=warn {BINARY} audit verify --config {}",
        app.folder.join("consentry.toml").display()
    );
    let terminal = Command::new(script)
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&terminal.stdout);
    assert!(terminal.status.success(), "{seen}");
    assert!(
        seen.contains("verifying"),
        "no progress bar on a terminal: {seen:?}"
    );
    assert!(seen.contains("ok: "), "{seen:?}");
}

fn which_script() -> Result<std::path::PathBuf, ()> {
    ["/usr/bin/script", "/bin/script"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|path| path.is_file())
        .ok_or(())
}

/// An insider's opt-in, written into the database by hand: without a log entry a send does not
/// rely on it; with one, back-dated, the sequencer logs it and sends honour it, but `audit
/// verify` fails at its leaf: its recording time goes back along the log.
#[tokio::test]
async fn a_hand_written_opt_in_is_ignored_unless_logged_and_back_dating_it_fails_verify() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let shop = app.token("shop", WRITER);
    let auditor = app.token("shop", "audit:read");
    let genuine = "+14155550131";
    let forged = "+14155550132";
    opt_in(&app, &shop, genuine).await;
    let db = &app.database;
    // A genuine send records what its consent rested on: the opt-in, and the rules applied.
    let sent = sent_id(
        app.send(&shop, &shop_message(genuine, "marketing", None, None))
            .await,
    )
    .await;
    let basis: Value = serde_json::from_str(
        &db.text(&format!("SELECT basis FROM messages WHERE id = '{sent}'"))
            .await,
    )
    .unwrap();
    let genuine_opt_in = db
        .text("SELECT id FROM consent_events WHERE action = 'opt_in'")
        .await;
    assert_eq!(basis["consent_event"], genuine_opt_in.as_str());
    assert_eq!(basis["requirement"], "express_written");
    assert_eq!(basis["policies"], app.state.policies.version.as_str());
    assert_eq!(app.state.policies.version.len(), 16);
    checkpoint_covering_all(&app, &auditor).await;
    let (ok, said) = verify(&app);
    assert!(ok && said.contains("1 decisions replayed"), "{said}");

    let marketing = shop_message(forged, "marketing", None, None);
    let template = db
        .text("SELECT id FROM consent_events WHERE action = 'opt_in'")
        .await;
    let number =
        consentry::domain::PhoneNumber::parse(forged, consentry::domain::Region::US).unwrap();
    let hash = app.state.numbers.hash(&number);
    // A copy of the genuine opt-in, for the other number, recorded a day before it.
    db.execute(&format!(
        "INSERT INTO consent_events (id, tenant, recipient_hash, recipient_masked, action, level, \
         brand, campaign, purposes, method, occurred_at_us, recorded_at_us, recorded_by, \
         external_id, idempotency_key, key_id, evidence) \
         SELECT 'forged-opt-in', tenant, '{hash}', recipient_masked, action, level, brand, \
         campaign, purposes, method, occurred_at_us - 86400000000, \
         recorded_at_us - 86400000000, recorded_by, external_id, 'forged-key', key_id, evidence \
         FROM consent_events WHERE id = '{template}'"
    ))
    .await
    .unwrap();

    // Unlogged, it is not consent: the send is refused.
    let response = app.send(&shop, &marketing).await;
    assert_eq!(response.status(), 403);
    assert_eq!(error_code(response).await, "no_consent");
    // Nor does the number's consent state show it.
    let shown: Value = app
        .get(&shop, &format!("/v1/consents/{forged}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        shown["history"].as_array().map(Vec::len),
        Some(0),
        "{shown}"
    );
    // And verify names the row the log does not have.
    let (ok, said) = verify(&app);
    assert!(!ok);
    assert!(
        said.contains("consent_event: 2 rows, 1 log entries; not in the log: forged-opt-in"),
        "{said}"
    );

    // Given a log entry with its true leaf hash, it is sequenced and honoured...
    let leaf = app
        .state
        .audit_log()
        .leaf_of(consentry::audit::leaf::Kind::ConsentEvent, "forged-opt-in")
        .await
        .unwrap()
        .unwrap();
    db.execute(&format!(
        "INSERT INTO log_leaves (kind, ref_id, tenant, leaf_hash) VALUES \
         ('consent_event', 'forged-opt-in', 'shop', {})",
        hex_literal(db, &leaf.hash())
    ))
    .await
    .unwrap();
    assert_eq!(app.send(&shop, &marketing).await.status(), 201);
    checkpoint_covering_all(&app, &auditor).await;
    // ...but its time goes back a day along the log, and verify names its leaf.
    let index = db
        .count("SELECT leaf_index FROM log_leaves WHERE ref_id = 'forged-opt-in'")
        .await;
    let (ok, said) = verify(&app);
    assert!(!ok, "{said}");
    assert!(
        said.contains(&format!("FAILED: leaf {index}: recorded at")) && said.contains("back-dated"),
        "{said}"
    );
    app.stop().await;
}

/// A blob literal in the test database's SQL dialect.
fn hex_literal(db: &TestDatabase, bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if db.is_postgres() {
        format!("'\\x{hex}'::bytea")
    } else {
        format!("X'{hex}'")
    }
}

#[tokio::test]
async fn a_numbers_leaves_are_one_chain_and_a_deleted_leaf_fails_its_bundle() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let beta = app.token("beta", "messages:send consents:read consents:write");
    let auditor = app.token("beta", "audit:read");
    let number = "+14155550177";
    let send =
        json!({ "to": number, "from": BETA_SENDER, "body": "hi", "purpose": "transactional" });
    assert_eq!(app.send(&beta, &send).await.status(), 201);
    // An unclear reply, held for review and resolved; then a STOP.
    app.sandbox_reply(number, "Can you stop by tomorrow?").await;
    let reviews: Value = app.get(&beta, "/v1/reviews").await.json().await.unwrap();
    let review = reviews["reviews"][0]["id"].as_str().unwrap().to_owned();
    let resolved = app
        .client
        .post(app.url(&format!("/v1/reviews/{review}/resolve")))
        .bearer_auth(&beta)
        .json(&json!({ "outcome": "not_opt_out" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resolved.status(), 200);
    assert_eq!(app.send(&beta, &send).await.status(), 201);
    assert_eq!(app.sandbox_reply(number, "STOP").await.status(), 200);
    checkpoint_covering_all(&app, &auditor).await;

    // Every kind of leaf about the number is in its bundle, each linked to the one before.
    let bundle = || async {
        let bundle: Value = app
            .get(&auditor, "/v1/audit/numbers/%2B14155550177/bundle")
            .await
            .json()
            .await
            .unwrap();
        bundle
    };
    let full = bundle().await;
    let mut kinds: Vec<&str> = full["other_leaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["kind"].as_str().unwrap())
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds, ["inbound", "outcome", "review_resolution"], "{full}");
    assert_eq!(full["truncated"], false);
    let check = |bundle: &Value| verify_bundle_offline(&app, bundle);
    let (ok, said) = check(&full);
    assert!(ok, "{said}");
    let (ok, said) = verify(&app);
    assert!(ok, "{said}");

    // An insider deletes one leaf of the number: its first outcome, row and log entry. Every
    // other leaf still verifies on its own; the bundle's chain does not.
    let db = &app.database;
    let outcome = db
        .text(
            "SELECT o.id FROM message_outcomes o JOIN messages m ON m.id = o.message_id \
             ORDER BY o.seq LIMIT 1",
        )
        .await;
    let index = db
        .count(&format!(
            "SELECT leaf_index FROM log_leaves WHERE kind = 'outcome' AND ref_id = '{outcome}'"
        ))
        .await;
    db.drop_trigger(
        "message_outcomes_are_append_only_delete",
        "message_outcomes",
    )
    .await;
    db.drop_trigger("log_leaves_are_append_only_delete", "log_leaves")
        .await;
    db.execute(&format!(
        "DELETE FROM message_outcomes WHERE id = '{outcome}'"
    ))
    .await
    .unwrap();
    db.execute(&format!(
        "DELETE FROM log_leaves WHERE kind = 'outcome' AND ref_id = '{outcome}'"
    ))
    .await
    .unwrap();
    let cut = bundle().await;
    assert_eq!(
        cut["other_leaves"].as_array().unwrap().len() + 1,
        full["other_leaves"].as_array().unwrap().len()
    );
    let (ok, said) = check(&cut);
    assert!(!ok, "{said}");
    assert!(said.contains("FAILED: leaf "), "{said}");
    assert!(said.contains("is missing or was replaced"), "{said}");
    assert!(!said.contains(&format!("FAILED: leaf {index}:")), "{said}");
    // The whole log fails too: the tree still holds the deleted leaf.
    let (ok, said) = verify(&app);
    assert!(!ok, "{said}");
}

/// Sends to one number at once: their records take turns, but their outcomes are written
/// together (several about the number in one statement on PostgreSQL), and each still links to
/// the leaf before it: the number's bundle holds every leaf, one chain, and the log verifies.
#[tokio::test]
async fn sends_to_one_number_at_once_leave_one_unbroken_chain() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let beta = app.token("beta", "messages:send");
    let auditor = app.token("beta", "audit:read");
    let sends = 24;
    let answers = futures_util::future::join_all((0..sends).map(|at| {
        let to = if at % 4 == 3 {
            "+14155550179"
        } else {
            "+14155550178"
        };
        let send = json!({ "to": to, "from": BETA_SENDER, "body": format!("notice {at}"),
            "purpose": "transactional" });
        let app = &app;
        let beta = &beta;
        async move { app.send(beta, &send).await.status() }
    }))
    .await;
    assert!(answers.iter().all(|status| *status == 201), "{answers:?}");
    checkpoint_covering_all(&app, &auditor).await;

    let bundle: Value = app
        .get(&auditor, "/v1/audit/numbers/%2B14155550178/bundle")
        .await
        .json()
        .await
        .unwrap();
    let leaves = bundle["messages"].as_array().unwrap().len()
        + bundle["other_leaves"].as_array().unwrap().len();
    assert_eq!(leaves, 2 * 18, "a record and an outcome a send: {bundle}");
    let (ok, said) = verify_bundle_offline(&app, &bundle);
    assert!(ok, "{said}");
    let (ok, said) = verify(&app);
    assert!(ok, "{said}");
}

/// A data folder written by consentry before chains (commit b51f207, migrations up to 0013):
/// an opt-in and two marketing messages to +14155550188 of tenant `shop`, with a checkpoint.
const PRE_CHAIN_FIXTURE: &str = "tests/api/fixtures/pre-chain";

#[tokio::test]
async fn a_log_from_before_chains_upgrades_and_its_first_link_names_the_newest_old_leaf() {
    // The fixture is a SQLite file; PostgreSQL's upgrade runs the same migration's twin, and is
    // covered by every other test starting from an empty schema.
    if postgres_base_url().is_some() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let folder = temp.path();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(PRE_CHAIN_FIXTURE);
    std::fs::create_dir_all(folder.join("data/keys")).unwrap();
    std::fs::copy(
        fixture.join("consentry.db"),
        folder.join("data/consentry.db"),
    )
    .unwrap();
    for entry in std::fs::read_dir(fixture.join("keys")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            folder.join("data/keys").join(entry.file_name()),
        )
        .unwrap();
    }
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn_with(folder, &test_config(folder, &gateway.url())).await;
    let shop = app.token("shop", WRITER);
    let auditor = app.token("shop", "audit:read");
    let number = "+14155550188";
    // A new send (transactional: the two marketing messages already sent today reach the
    // tenant's cap) is linked to the old leaves.
    let sent = app
        .send(&shop, &shop_message(number, "transactional", None, None))
        .await;
    assert_eq!(sent.status(), 201);
    checkpoint_covering_all(&app, &auditor).await;
    let (ok, said) = verify(&app);
    assert!(ok, "{said}");
    assert!(said.contains("ok: 5 leaves"), "{said}");
    let bundle: Value = app
        .get(&auditor, "/v1/audit/numbers/%2B14155550188/bundle")
        .await
        .json()
        .await
        .unwrap();
    let versions: Vec<u8> = bundle["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            base64::engine::general_purpose::STANDARD
                .decode(row["leaf"].as_str().unwrap())
                .unwrap()[0]
        })
        .collect();
    assert_eq!(versions, [2, 2, 3], "{bundle}");
    let (ok, said) = verify_bundle_offline(&app, &bundle);
    assert!(ok, "{said}");
    // The number's key moved into its row of `log_heads` (migration 0017): an old body still
    // opens (the oldest: reading it is logged, and the newest old one is deleted below), and
    // the new send was sealed with the same key.
    let decrypter = app.token("shop", "audit:read audit:decrypt");
    let oldest = bundle["messages"][0]["id"].as_str().unwrap();
    let body = app
        .get(&decrypter, &format!("/v1/audit/messages/{oldest}/body"))
        .await;
    assert_eq!(body.status(), 200, "{oldest}");
    assert_eq!(
        app.count("SELECT count(DISTINCT key_id) FROM messages")
            .await,
        1
    );

    // The newest old leaf is what the first link names: deleted, the bundle fails.
    let db = &app.database;
    let newest_old = bundle["messages"][1]["id"].as_str().unwrap().to_owned();
    db.drop_trigger("messages_are_append_only_delete", "messages")
        .await;
    db.drop_trigger(
        "message_outcomes_are_append_only_delete",
        "message_outcomes",
    )
    .await;
    db.execute(&format!(
        "DELETE FROM message_outcomes WHERE message_id = '{newest_old}'"
    ))
    .await
    .unwrap();
    db.execute(&format!("DELETE FROM messages WHERE id = '{newest_old}'"))
        .await
        .unwrap();
    let cut: Value = app
        .get(&auditor, "/v1/audit/numbers/%2B14155550188/bundle")
        .await
        .json()
        .await
        .unwrap();
    let (ok, said) = verify_bundle_offline(&app, &cut);
    assert!(!ok, "{said}");
    assert!(said.contains("is missing or was replaced"), "{said}");
}
