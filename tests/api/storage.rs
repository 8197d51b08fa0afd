//! What is written to disk: no plaintext bodies or numbers, and keys that survive restarts;
//! and the two backends' migrations, which must not drift apart.

use serde_json::Value;

use crate::helpers::*;

fn files_contain(folder: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            // SQLite may remove a file of its own between the listing and the read.
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            if bytes.windows(needle.len()).any(|window| window == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test]
async fn the_database_holds_no_plaintext_body_or_number() {
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(folder.path(), &test_config(folder.path(), &gateway.url())).await;
    let data = app.data_dir();
    let token = app.token("acme", "messages:send");
    let body = "Secret appointment at the clinic, code 9F3K7Q";
    let allowed = app
        .send(&token, &message("+1 415 555 0177", body, "transactional"))
        .await;
    assert_eq!(allowed.status(), 201);
    let denied = app
        .send(&token, &message("+1 415 555 0177", body, "marketing"))
        .await;
    assert_eq!(denied.status(), 403);
    // An MMS's media URL is sealed with its body.
    let mut mms = message("+1 415 555 0177", body, "transactional");
    mms["media_urls"] = serde_json::json!(["https://media.example/XRAY55Q.jpg"]);
    assert_eq!(app.send(&token, &mms).await.status(), 201);
    let database = app.database.clone();
    app.stop().await;

    if let TestDatabase::Postgres(_) = database {
        // PostgreSQL's files are not ours to read: every row of every table, as text (a
        // BYTEA column shows as hex, so look for the hex of each needle too).
        for needle in [
            body,
            "9F3K7Q",
            "XRAY55Q",
            "+14155550177",
            "14155550177",
            "4155550177",
        ] {
            assert_eq!(rows_containing(&database, needle).await, 0, "{needle:?}");
        }
        assert!(rows_containing(&database, "+1415555****").await > 0);
        return;
    }
    // The database, its WAL and its shared-memory file: all of them, as they are on disk.
    assert!(data.join("consentry.db").exists());
    for needle in [
        body,
        "9F3K7Q",
        "XRAY55Q",
        "+14155550177",
        "14155550177",
        "4155550177",
    ] {
        let found = files_contain(&data, needle.as_bytes());
        assert!(found.is_empty(), "{needle:?} is readable in {found:?}");
    }
    // The masked form is what stays readable.
    assert!(!files_contain(&data, b"+1415555****").is_empty());
}

/// How many rows of the tables of consentry's schema show `needle`, as text or as hex bytes.
async fn rows_containing(database: &TestDatabase, needle: &str) -> i64 {
    let hex: String = needle.bytes().map(|byte| format!("{byte:02x}")).collect();
    let mut total = 0;
    for table in [
        "messages",
        "message_outcomes",
        "consent_events",
        "inbound_messages",
        "consent_reviews",
        "review_resolutions",
        "webhook_outbox",
        "deferred_messages",
        "message_releases",
    ] {
        total += database
            .count(&format!(
                "SELECT count(*) FROM {table} t WHERE strpos(t::text, '{needle}') > 0 \
                 OR strpos(t::text, '{hex}') > 0"
            ))
            .await;
    }
    total
}

#[tokio::test]
async fn starting_twice_on_one_data_folder_reuses_the_certificate_and_keys() {
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let config = test_config(folder.path(), &gateway.url());

    let first = TestApp::spawn_with(folder.path(), &config).await;
    let token = first.token("acme", "messages:send messages:read");
    let sent: Value = first
        .send(
            &token,
            &message("+14155550123", "kept across restarts", "transactional"),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = sent["id"].as_str().unwrap().to_owned();
    let fingerprint = first.fingerprint.clone();
    let keys: Vec<Vec<u8>> = ["jwt-dev.pk8", "payload.key", "number.key"]
        .iter()
        .map(|name| std::fs::read(first.data_dir().join("keys").join(name)).unwrap())
        .collect();
    first.stop().await;

    let second = TestApp::spawn_with(folder.path(), &config).await;
    assert_eq!(second.fingerprint, fingerprint);
    for (name, before) in ["jwt-dev.pk8", "payload.key", "number.key"]
        .iter()
        .zip(&keys)
    {
        assert_eq!(
            &std::fs::read(second.data_dir().join("keys").join(name)).unwrap(),
            before
        );
    }
    // A token minted before the restart still verifies, and the old record is still there.
    let record = second.get(&token, &format!("/v1/messages/{id}")).await;
    assert_eq!(record.status(), 200);
    let record: Value = record.json().await.unwrap();
    assert_eq!(record["status"], "sent");
}

#[tokio::test]
async fn the_record_is_committed_before_the_gateway_sees_the_message() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    gateway.watch_database(app.database.clone());
    let token = app.token("acme", "messages:send");
    for round in 0..5 {
        let response = app
            .send(
                &token,
                &message("+14155550123", &format!("round {round}"), "transactional"),
            )
            .await;
        assert_eq!(response.status(), 201);
    }
    let requests = gateway.requests();
    assert_eq!(requests.len(), 5);
    assert!(
        requests
            .iter()
            .all(|request| request.record_committed == Some(true))
    );
}

#[tokio::test]
async fn when_the_log_cannot_be_written_nothing_is_forwarded() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");

    // Break the log underneath the running server.
    app.database
        .execute("ALTER TABLE messages RENAME TO messages_moved_away")
        .await
        .unwrap();

    let response = app
        .send(&token, &message("+14155550123", "hello", "transactional"))
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_code(response).await, "store_unavailable");
    assert!(gateway.requests().is_empty());
}

#[tokio::test]
async fn postgres_with_synchronous_commit_off_is_refused_at_start() {
    let folder = tempfile::tempdir().unwrap();
    let database = TestDatabase::for_folder(folder.path());
    let TestDatabase::Postgres(url) = &database else {
        eprintln!("PostgreSQL only: set CONSENTRY_TEST_DATABASE_URL to run it");
        return;
    };
    database.prepare(folder.path()).await;
    let unsafe_url = format!("{url}%20-c%20synchronous_commit%3Doff");
    let config =
        test_config(folder.path(), "http://127.0.0.1:9/messages").replace(url, &unsafe_url);
    assert!(config.contains(&unsafe_url));
    let path = folder.path().join("consentry.toml");
    std::fs::write(&path, config).unwrap();
    let config = consentry::Config::load(&path).unwrap();
    let refused = consentry::App::build(config).await.err().expect("refused");
    assert!(
        format!("{refused:#}").contains("synchronous_commit is off"),
        "{refused:#}"
    );
}

/// The names a migration defines: tables, columns added, indexes and triggers. A table SQLite
/// rebuilds (created under another name, then renamed: SQLite's way to change a constraint,
/// which PostgreSQL alters in place) counts as neither a new table nor new indexes and
/// triggers on it.
fn defined_names(sql: &str) -> std::collections::BTreeSet<String> {
    let words: Vec<String> = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or_default())
        .flat_map(|line| line.split_whitespace())
        .map(|word| {
            word.trim_matches(|c: char| c == '(' || c == ';')
                .to_ascii_lowercase()
        })
        .collect();
    let mut names = std::collections::BTreeSet::new();
    for (index, word) in words.iter().enumerate() {
        let after = |n: usize| words.get(index + n).cloned().unwrap_or_default();
        match (
            words.get(index.wrapping_sub(1)).map(String::as_str),
            word.as_str(),
        ) {
            (Some("create"), "table") => names.insert(format!("table {}", after(1))),
            (Some("create"), "index") => names.insert(format!("index {}", after(1))),
            (Some("unique"), "index") => names.insert(format!("unique index {}", after(1))),
            (Some("create"), "trigger") => names.insert(format!("trigger {}", after(1))),
            (Some("add"), "column") => names.insert(format!("column {}", after(1))),
            _ => false,
        };
    }
    for (index, word) in words.iter().enumerate() {
        let after = |n: usize| words.get(index + n).cloned().unwrap_or_default();
        if word == "alter" && after(1) == "table" && after(3) == "rename" && after(4) == "to" {
            let (built, rebuilt) = (after(2), after(5));
            names.remove(&format!("table {built}"));
            // Every index and trigger made on the rebuilt table in the same file.
            for (at, word) in words.iter().enumerate() {
                let made = match word.as_str() {
                    "index" | "trigger" if at > 0 => words.get(at + 1),
                    _ => None,
                };
                let on_rebuilt = words
                    .iter()
                    .skip(at + 2)
                    .take(6)
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|pair| pair[0] == "on" && *pair[1] == rebuilt);
                if let Some(name) = made
                    && on_rebuilt
                {
                    names.retain(|defined| !defined.ends_with(&format!(" {name}")));
                }
            }
        }
    }
    names
}

#[test]
fn the_postgres_migrations_mirror_the_sqlite_ones_file_for_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let files = |backend: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root.join(backend))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let sqlite = files("sqlite");
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, files("postgres"), "the migration files differ");
    for name in &sqlite {
        let read = |backend: &str| std::fs::read_to_string(root.join(backend).join(name)).unwrap();
        assert_eq!(
            defined_names(&read("sqlite")),
            defined_names(&read("postgres")),
            "{name} defines different tables, columns, indexes or triggers"
        );
    }
}

#[tokio::test]
async fn an_instance_with_another_number_key_refuses_to_start() {
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let config = test_config(folder.path(), &gateway.url());
    let first = TestApp::spawn_with(folder.path(), &config).await;
    let keys = first.data_dir().join("keys");
    first.stop().await;

    // Another number key: its hashes would miss every opt-out recorded so far.
    std::fs::remove_file(keys.join("number.key")).unwrap();
    std::fs::write(
        keys.join("number.key"),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    )
    .unwrap();
    let path = folder.path().join("consentry.toml");
    std::fs::write(&path, &config).unwrap();
    let refused = consentry::App::build(consentry::Config::load(&path).unwrap()).await;
    let error = format!("{:#}", refused.err().expect("it must refuse"));
    assert!(
        error.contains("number_key_id") && error.contains("crypto.number_key"),
        "{error}"
    );
}

/// A tmpfs mounted for one test (root only), unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let folder = tempfile::tempdir().ok()?.keep();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&folder)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        mounted.then_some(SmallDisk(folder))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The disk fills under a running server: sends fail closed (503, nothing forwarded), the
/// admin listener says not ready, and both come back on their own once there is space.
/// Needs root to mount a small tmpfs; skipped otherwise (CI runs as root), and on PostgreSQL.
#[tokio::test]
async fn a_full_disk_fails_sends_closed_and_they_resume_when_space_returns() {
    if postgres_base_url().is_some() {
        return;
    }
    let Some(disk) = SmallDisk::mount("24m") else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let gateway = FakeGateway::start().await;
    let text = test_config(&disk.0, &gateway.url());
    let app = TestApp::spawn_with(&disk.0, &text).await;
    let token = app.token("acme", "messages:send");
    let ready = || async {
        reqwest::get(format!("http://{}/readyz", app.admin))
            .await
            .unwrap()
            .status()
    };
    let send = |index: usize| {
        let app = &app;
        let token = &token;
        async move {
            app.send(
                token,
                &message("+14155550123", &format!("fill {index}"), "transactional"),
            )
            .await
        }
    };
    assert_eq!(send(0).await.status(), 201);
    assert_eq!(ready().await, 200);

    // Fill what is left of the disk.
    let filler = disk.0.join("filler");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
    }
    let forwarded = gateway.requests().len();
    let mut refused = None;
    for index in 1..3000 {
        let response = send(index).await;
        match response.status().as_u16() {
            201 => continue,
            503 => {
                refused = Some(error_code(response).await);
                break;
            }
            other => panic!("a send on a full disk answered {other}"),
        }
    }
    assert_eq!(refused.as_deref(), Some("store_unavailable"));
    assert!(gateway.requests().len() >= forwarded);
    assert_eq!(ready().await, 503);
    // While the disk stays full, a send is refused with nothing forwarded, or (when its batch
    // fits in space the WAL already holds, once a checkpoint let it start over) recorded
    // durably and forwarded: never forwarded without its record. How many fit before the
    // next refusal depends on where the WAL stood, so send until one is refused.
    let mut refused_again = false;
    for index in 0..500 {
        let before = gateway.requests().len();
        let id = 10_000 + index;
        match send(id).await.status().as_u16() {
            503 => {
                assert_eq!(gateway.requests().len(), before, "nothing forwarded");
                refused_again = true;
                break;
            }
            201 => assert_eq!(gateway.requests().len(), before + 1),
            other => panic!("a send on a full disk answered {other}"),
        }
    }
    assert!(refused_again, "a disk that stays full refuses sends again");
    let forwarded_before_full = gateway.requests().len();

    // Space returns: no restart needed. Readiness comes back once no write has failed for a
    // few seconds and a write lands.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while ready().await != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(send(20_000).await.status(), 201);
    assert_eq!(gateway.requests().len(), forwarded_before_full + 1);
    app.stop().await;
    drop(disk);
}
