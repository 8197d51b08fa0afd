//! What is written to disk: no plaintext bodies or numbers, and keys that survive restarts.

use serde_json::Value;

use crate::helpers::*;

fn files_contain(folder: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
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
    app.stop().await;

    // The database, its WAL and its shared-memory file: all of them, as they are on disk.
    assert!(data.join("consentry.db").exists());
    for needle in [body, "9F3K7Q", "+14155550177", "14155550177", "4155550177"] {
        let found = files_contain(&data, needle.as_bytes());
        assert!(found.is_empty(), "{needle:?} is readable in {found:?}");
    }
    // The masked form is what stays readable.
    assert!(!files_contain(&data, b"+1415555****").is_empty());
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
    gateway.watch_database(app.data_dir().join("consentry.db"));
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
    let options =
        sqlx::sqlite::SqliteConnectOptions::new().filename(app.data_dir().join("consentry.db"));
    let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE messages RENAME TO messages_moved_away")
        .execute(&mut connection)
        .await
        .unwrap();

    let response = app
        .send(&token, &message("+14155550123", "hello", "transactional"))
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_code(response).await, "store_unavailable");
    assert!(gateway.requests().is_empty());
}
