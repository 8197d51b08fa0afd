//! Witnesses end to end: two `consentry witness` processes cosign the log's checkpoints (C2SP
//! tlog-witness); one stops and the other keeps cosigning; an insider who rewrites the history
//! with the log's own key is refused by the witness, which keeps the refusal, and `audit
//! verify` with a witness policy fails where the database alone still agrees with itself.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use consentry::audit::note::{self, Cosignature, WitnessKey};
use ring::signature::KeyPair as _;
use serde_json::Value;

use crate::helpers::*;

const BINARY: &str = env!("CARGO_BIN_EXE_consentry");
const WRITER: &str = "messages:send messages:read consents:write consents:read";
const ORIGIN: &str = "test.consentry.example/log";

/// A running `consentry witness serve`, stopped when dropped.
struct Witness {
    child: Child,
    url: String,
    vkey: String,
    state: PathBuf,
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Witness {
    /// Starts a witness named `name` that trusts the log's `public_key` (base64).
    fn start(folder: &Path, name: &str, public_key: &str) -> Witness {
        let state = folder.join(name.replace('/', "_"));
        let config = folder.join(format!("{}.toml", name.replace('/', "_")));
        std::fs::write(
            &config,
            format!(
                "name = \"{name}\"\nstate_dir = \"{}\"\n\n[[logs]]\norigin = \"{ORIGIN}\"\n\
                 public_key = \"{public_key}\"\n",
                state.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(BINARY)
            .args(["witness", "serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // "consentry witness <vkey> on http://<address>"
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 5, "the witness said {line:?}");
        Witness {
            child,
            vkey: words[2].to_owned(),
            url: words[4].to_owned(),
            state,
        }
    }

    fn key(&self) -> WitnessKey {
        WitnessKey::from_vkey(&self.vkey).unwrap()
    }
}

/// `consentry audit verify` on the app's configuration with `args`; (success, what it said).
fn verify(folder: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(BINARY)
        .args(["audit", "verify", "--config"])
        .arg(folder.join("consentry.toml"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Waits until the latest checkpoint covers every leaf and is cosigned by each of `by`;
/// returns it.
async fn cosigned(app: &TestApp, token: &str, by: &[&Witness]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaves = app.count("SELECT count(*) FROM log_leaves").await;
        let response = app.get(token, "/v1/audit/checkpoints/latest").await;
        if response.status() == 200 {
            let checkpoint: Value = response.json().await.unwrap();
            let names: Vec<&str> = checkpoint["cosignatures"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["witness"].as_str())
                .collect();
            if checkpoint["tree_size"].as_i64() == Some(leaves)
                && by.iter().all(|w| names.contains(&w.key().name.as_str()))
            {
                return checkpoint;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of the {leaves} leaves was cosigned by every witness in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(app: &TestApp, token: &str, number: &str) {
    let response = app
        .send(token, &shop_message(number, "transactional", None, None))
        .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnesses_cosign_and_refuse_a_history_rewritten_with_the_logs_key() {
    let gateway = FakeGateway::start().await;
    let temp = tempfile::tempdir().unwrap();
    let folder = temp.path();
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let standard = &base64::engine::general_purpose::STANDARD;
    let public_key = standard.encode(pair.public_key().as_ref());
    std::fs::write(folder.join("log.key"), standard.encode(pkcs8.as_ref())).unwrap();

    let first = Witness::start(folder, "witness.test/w1", &public_key);
    let second = Witness::start(folder, "witness.test/w2", &public_key);
    let plain = test_config(folder, &gateway.url());
    let log = "[log]\ncheckpoint_interval_ms = 100\n";
    assert!(plain.contains(log));
    let config = plain.replace(
        log,
        &format!(
            "{log}signing_key = {{ file = \"log.key\" }}\norigin = \"{ORIGIN}\"\n\n\
             [[log.witnesses]]\nurl = \"{}\"\nkey = \"{}\"\n\n\
             [[log.witnesses]]\nurl = \"{}\"\nkey = \"{}\"\n",
            first.url, first.vkey, second.url, second.vkey
        ),
    );
    let app = TestApp::spawn_with(folder, &config).await;
    let shop = app.token("shop", WRITER);
    let auditor = app.token("shop", "audit:read");
    let number = "+14155550121";
    opt_in(&app, &shop, number).await;
    let opt_out = serde_json::json!({
        "number": "+14155550199", "action": "opt_out", "method": "keyword",
    });
    assert_eq!(app.consent(&shop, &opt_out).await.status(), 201);
    for _ in 0..3 {
        send(&app, &shop, number).await;
    }

    // Both witnesses cosign; each cosignature verifies on its own, over the C2SP note.
    let checkpoint = cosigned(&app, &auditor, &[&first, &second]).await;
    assert_eq!(checkpoint["origin"], ORIGIN);
    let size = checkpoint["tree_size"].as_u64().unwrap();
    let root: [u8; 32] =
        consentry::audit::checkpoint::unhex(checkpoint["root_hash"].as_str().unwrap()).unwrap();
    let body = note::checkpoint_body(ORIGIN, size, &root);
    assert_eq!(checkpoint["note"].as_str(), Some(body.as_str()));
    for witness in [&first, &second] {
        let key = witness.key();
        let shown = checkpoint["cosignatures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["witness"] == key.name.as_str())
            .unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(shown["cosignature"].as_str().unwrap())
            .unwrap();
        let cosignature = Cosignature::from_parts(key.name.clone(), bytes).unwrap();
        assert_eq!(cosignature.verify(&key, &body), Ok(()));
        assert_eq!(shown["time"].as_u64(), Some(cosignature.time()));
    }
    let (ok, said) = verify(
        folder,
        &["--witness", &first.vkey, "--witness", &second.vkey],
    );
    assert!(ok, "{said}");
    assert!(
        said.contains(&format!("witnessed up to {size} leaves")),
        "{said}"
    );
    // A number's bundle is proven under a checkpoint both witnesses cosigned.
    std::fs::write(folder.join("log.pub"), &public_key).unwrap();
    let bundle = app
        .get(&auditor, &format!("/v1/audit/numbers/{number}/bundle"))
        .await;
    assert_eq!(bundle.status(), 200);
    std::fs::write(folder.join("bundle.json"), bundle.bytes().await.unwrap()).unwrap();
    let output = Command::new(BINARY)
        .args(["audit", "verify", "--bundle"])
        .arg(folder.join("bundle.json"))
        .arg("--public-key")
        .arg(folder.join("log.pub"))
        .args(["--witness", &first.vkey, "--witness", &second.vkey])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{said}");
    assert!(said.contains("its checkpoint witnessed"), "{said}");
    // The witnesses' own latest heads, asked for, are in the log too.
    let (ok, said) = verify(
        folder,
        &[
            "--witness",
            &first.vkey,
            "--witness",
            &second.vkey,
            "--ask-witness",
            &first.url,
            "--ask-witness",
            &second.url,
        ],
    );
    assert!(ok, "{said}");

    // One witness stops; the other keeps cosigning, a checkpoint at a time.
    let (second_vkey, second_url) = (second.vkey.clone(), second.url.clone());
    drop(second);
    for _ in 0..2 {
        send(&app, &shop, number).await;
        let latest = cosigned(&app, &auditor, &[&first]).await;
        assert!(latest["tree_size"].as_u64().unwrap() > size);
    }
    let both = ["--witness", &first.vkey, "--witness", &second_vkey];
    let (ok, said) = verify(folder, &[&both[..], &["--quorum", "1"]].concat());
    assert!(ok, "one of two witnesses is the quorum asked: {said}");
    let (ok, said) = verify(folder, &[&both[..], &["--witness-grace", "0"]].concat());
    assert!(!ok);
    assert!(said.contains("was never cosigned by 2 witnesses"), "{said}");
    // A witness that cannot be asked fails the verification that asks it, as any failure does.
    let (ok, said) = verify(
        folder,
        &[&both[..], &["--quorum", "1", "--ask-witness", &second_url]].concat(),
    );
    assert!(!ok);
    assert!(
        said.contains(&format!("FAILED: witness {second_url}: ")),
        "{said}"
    );

    // An export cut back to the first witnessed checkpoint agrees with itself and with the
    // cosignatures it carries; only the witness's own latest head shows what is missing.
    let leaves = folder.join("leaves.ndjson");
    let checkpoints = folder.join("checkpoints.json");
    let exported = Command::new(BINARY)
        .args(["audit", "export", "--config"])
        .arg(folder.join("consentry.toml"))
        .arg("--out")
        .arg(&leaves)
        .arg("--checkpoints")
        .arg(&checkpoints)
        .output()
        .unwrap();
    assert!(exported.status.success());
    let cut_leaves: String = std::fs::read_to_string(&leaves)
        .unwrap()
        .lines()
        .take(size as usize)
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&leaves, cut_leaves).unwrap();
    let views: Vec<Value> = serde_json::from_slice(&std::fs::read(&checkpoints).unwrap()).unwrap();
    let kept: Vec<&Value> = views
        .iter()
        .filter(|view| view["tree_size"].as_u64().unwrap() <= size)
        .collect();
    std::fs::write(&checkpoints, serde_json::to_vec(&kept).unwrap()).unwrap();
    let offline = |extra: &[&str]| {
        let output = Command::new(BINARY)
            .args(["audit", "verify", "--export"])
            .arg(&leaves)
            .arg("--checkpoint")
            .arg(&checkpoints)
            .arg("--public-key")
            .arg(folder.join("log.pub"))
            .args(["--witness", &first.vkey])
            .args(extra)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, said) = offline(&[]);
    assert!(ok, "the cut export agrees with itself: {said}");
    let (ok, said) = offline(&["--ask-witness", &first.url]);
    assert!(!ok);
    assert!(
        said.contains(&format!(
            "FAILED: leaf {size}: truncated: witness witness.test/w1 cosigned"
        )),
        "{said}"
    );
    app.stop().await;

    // The insider: with the database and the log's key, one opt-out is taken out of the
    // history, the log is emptied and the server signs a new history from the rows.
    let db = TestDatabase::for_folder(folder);
    for (trigger, table) in [
        ("log_leaves_indexed_once", "log_leaves"),
        ("log_leaves_are_append_only_delete", "log_leaves"),
        ("log_nodes_are_append_only_delete", "log_nodes"),
        ("log_checkpoints_are_append_only_delete", "log_checkpoints"),
        (
            "log_cosignatures_are_append_only_delete",
            "log_cosignatures",
        ),
        ("consent_events_are_append_only_delete", "consent_events"),
        ("messages_are_append_only_delete", "messages"),
        (
            "message_outcomes_are_append_only_delete",
            "message_outcomes",
        ),
    ] {
        db.drop_trigger(trigger, table).await;
    }
    // First the tail cut off in the database: the newest leaves (the last sends, their rows
    // and outcomes), with the checkpoints and cosignatures that cover them. What is left
    // agrees with itself and with the cosignatures it keeps; the witness's latest cosigned
    // tree shows what is missing.
    let tail = format!("SELECT ref_id FROM log_leaves WHERE leaf_index >= {size}");
    for statement in [
        format!("CREATE TABLE saved_tail AS SELECT * FROM log_leaves WHERE leaf_index >= {size}"),
        format!(
            "CREATE TABLE saved_outcomes AS SELECT * FROM message_outcomes WHERE id IN ({tail}) OR message_id IN ({tail})"
        ),
        format!("CREATE TABLE saved_messages AS SELECT * FROM messages WHERE id IN ({tail})"),
        "DELETE FROM message_outcomes WHERE id IN (SELECT id FROM saved_outcomes)".into(),
        "DELETE FROM messages WHERE id IN (SELECT id FROM saved_messages)".into(),
        format!("DELETE FROM log_leaves WHERE leaf_index >= {size}"),
        format!("DELETE FROM log_checkpoints WHERE tree_size > {size}"),
        format!("DELETE FROM log_cosignatures WHERE tree_size > {size}"),
    ] {
        db.execute(&statement).await.unwrap();
    }
    let (ok, said) = verify(folder, &["--witness", &first.vkey]);
    assert!(ok, "the cut log agrees with itself: {said}");
    let (ok, said) = verify(
        folder,
        &["--witness", &first.vkey, "--ask-witness", &first.url],
    );
    assert!(!ok);
    assert!(
        said.contains(&format!(
            "FAILED: leaf {size}: truncated: witness witness.test/w1 cosigned"
        )),
        "{said}"
    );
    for table in ["messages", "message_outcomes", "log_leaves"] {
        let saved = match table {
            "messages" => "saved_messages",
            "message_outcomes" => "saved_outcomes",
            _ => "saved_tail",
        };
        db.execute(&format!("INSERT INTO {table} SELECT * FROM {saved}"))
            .await
            .unwrap();
    }
    let opt_out_id = db
        .text("SELECT id FROM consent_events WHERE action = 'opt_out'")
        .await;
    for statement in [
        format!("DELETE FROM log_leaves WHERE ref_id = '{opt_out_id}'"),
        format!("DELETE FROM consent_events WHERE id = '{opt_out_id}'"),
        "DELETE FROM log_nodes".into(),
        "DELETE FROM log_checkpoints".into(),
        "DELETE FROM log_cosignatures".into(),
        "UPDATE log_leaves SET leaf_index = NULL".into(),
    ] {
        db.execute(&statement).await.unwrap();
    }
    let app = TestApp::spawn_with(folder, &config).await;
    let shop = app.token("shop", WRITER);
    // The rewritten log is smaller than what the witness cosigned: the log says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ahead = r#"consentry_witness_submissions_total{witness="witness.test/w1",outcome="ahead"}"#;
    loop {
        let metrics = app.metrics().await;
        if metrics.contains(ahead) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no `ahead` submission: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once it grows past that size, the consistency proof is the new history's: refused,
    // and the refusal kept by the witness as evidence of the fork.
    for _ in 0..4 {
        send(&app, &shop, number).await;
    }
    let refusals = first.state.join("refusals.ndjson");
    let deadline = Instant::now() + Duration::from_secs(40);
    while !refusals.exists() {
        assert!(Instant::now() < deadline, "the witness kept no refusal");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refusal: Value = serde_json::from_str(
        std::fs::read_to_string(&refusals)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(
        refusal["why"]
            .as_str()
            .unwrap()
            .contains("consistency proof"),
        "{refusal}"
    );
    assert!(refusal["request"].as_str().unwrap().contains(ORIGIN));
    // A proof anyone could send is not proof of a fork by itself: the witness says how
    // conclusive its refusal is.
    assert_eq!(refusal["evidence"], "inconsistent_proof", "{refusal}");

    // The database alone agrees with itself: every leaf and checkpoint were signed anew.
    let auditor = app.token("shop", "audit:read");
    let mut leaves = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while leaves == 0 || !checkpoint_exists(&app, &auditor, leaves).await {
        assert!(
            Instant::now() < deadline,
            "no checkpoint of the new history"
        );
        leaves = app.count("SELECT count(*) FROM log_leaves").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, said) = verify(folder, &[]);
    assert!(
        ok,
        "without witnesses a rewrite signed with the key verifies: {said}"
    );
    // With the witness the auditor relies on, it does not.
    let (ok, said) = verify(folder, &["--witness", &first.vkey]);
    assert!(!ok);
    assert!(
        said.contains("FAILED: checkpoint at size ")
            && said.contains("(the newest): no checkpoint is cosigned by 1"),
        "{said}"
    );
    app.stop().await;
}

/// Whether the latest checkpoint covers `leaves` leaves.
async fn checkpoint_exists(app: &TestApp, token: &str, leaves: i64) -> bool {
    let response = app.get(token, "/v1/audit/checkpoints/latest").await;
    if response.status() != 200 {
        return false;
    }
    let checkpoint: Value = response.json().await.unwrap();
    checkpoint["tree_size"].as_i64() == Some(leaves)
}
