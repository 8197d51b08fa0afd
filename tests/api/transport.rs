//! The listeners: TLS only on the API port, HTTP/1.1 and h2, and the admin endpoints.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn http1_and_h2_both_work_over_tls() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let cert = std::fs::read(app.data_dir().join("tls/cert.pem")).unwrap();
    let token = app.token("acme", "messages:send");
    for version in [http::Version::HTTP_11, http::Version::HTTP_2] {
        let response = client(&cert, Some(version))
            .post(app.url("/v1/messages"))
            .bearer_auth(&token)
            .json(&message("+14155550123", "hello", "transactional"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), 201);
    }
    assert_eq!(gateway.requests().len(), 2);
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_refused() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let result = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/messages", app.api.port()))
        .bearer_auth(&token)
        .json(&message("+14155550123", "hello", "transactional"))
        .send()
        .await;
    assert!(result.is_err(), "plain HTTP got an answer: {result:?}");
    assert!(gateway.requests().is_empty());

    // The server still serves TLS afterwards.
    let response = app
        .send(&token, &message("+14155550123", "hello", "transactional"))
        .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn the_admin_listener_reports_health_and_readiness() {
    let app = TestApp::spawn(&closed_port_url().await).await;
    for (path, status) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let response = reqwest::get(format!("http://{}{path}", app.admin))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], status);
    }
    let missing = reqwest::get(format!("http://{}/nothing", app.admin))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let app = TestApp::spawn(&closed_port_url().await).await;
    let response = app.client.get(app.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");
    let response = app
        .client
        .delete(app.url("/v1/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(error_code(response).await, "method_not_allowed");
}

/// `/metrics` on the admin listener: decisions by outcome and reason, phases, gateway answers,
/// refused webhooks and what waits, in a text exposition `promtool check metrics` accepts.
#[tokio::test]
async fn the_admin_listener_serves_metrics_promtool_accepts() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    assert_eq!(
        app.send(&token, &message("+14155550123", "hello", "transactional"))
            .await
            .status(),
        201
    );
    // Not a purpose acme may send: denied.
    assert_eq!(
        app.send(&token, &message("+14155550123", "sale", "marketing"))
            .await
            .status(),
        403
    );
    // A webhook with a bad signature.
    let refused = app
        .client
        .post(app.url("/v1/inbound/gw"))
        .header("content-type", "application/json")
        .header("x-webhook-signature", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let response = reqwest::get(format!("http://{}/metrics", app.admin))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    for expected in [
        "consentry_decisions_total{outcome=\"allowed\",reason=\"none\",purpose=\"transactional\",tenant=\"acme\"} 1",
        "consentry_decisions_total{outcome=\"denied\",reason=\"purpose_not_allowed\",purpose=\"marketing\",tenant=\"acme\"} 1",
        "consentry_upstream_answers_total{upstream=\"gw\",result=\"sent\"} 1",
        "consentry_send_phase_seconds_count{phase=\"forward\"} 1",
        "consentry_send_phase_seconds_count{phase=\"record\"} 2",
        "consentry_store_up 1",
        "consentry_deferred_messages 0",
        "consentry_connections_open ",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        text.contains("consentry_webhook_refusals_total{code="),
        "{text}"
    );
    // No number, no body.
    assert!(!text.contains("4155550123") && !text.contains("hello"));

    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut promtool) => {
            use std::io::Write as _;
            promtool
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let output = promtool.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool is not installed (Debian package prometheus): not run");
        }
        Err(error) => panic!("promtool is needed in CI: {error}"),
    }
}

/// A reload (SIGHUP) while sends run over a keep-alive connection: the certificate and a
/// tenant's purposes change; no send fails; the next decision follows the new configuration;
/// a broken file, or a change that needs a restart, is refused and the running one kept.
#[tokio::test]
async fn a_reload_changes_the_certificate_and_policy_while_sends_keep_going() {
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let text = test_config(folder.path(), &gateway.url());
    let app = TestApp::spawn_with(folder.path(), &text).await;
    let token = app.token("acme", "messages:send");
    let informational = message("+14155550123", "your order shipped", "informational");
    let before = error_code(app.send(&token, &informational).await).await;
    assert_ne!(before, "purpose_not_allowed");

    // Sends over one h2 connection, all through the reloads.
    let old_cert = std::fs::read(app.data_dir().join("tls/cert.pem")).unwrap();
    let keep_alive = client(&old_cert, Some(http::Version::HTTP_2));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let url = app.url("/v1/messages");
    let sender_token = token.clone();
    let sends = tokio::spawn(async move {
        let mut statuses = Vec::new();
        while !*stopped.borrow_and_update() {
            let response = keep_alive
                .post(&url)
                .bearer_auth(&sender_token)
                .json(&message("+14155550123", "code 1234", "transactional"))
                .send()
                .await;
            statuses.push(response.map(|r| r.status().as_u16()).unwrap_or(0));
        }
        statuses
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // A new certificate, and acme may send transactional messages only.
    let new = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(folder.path().join("new-cert.pem"), new.cert.pem()).unwrap();
    std::fs::write(
        folder.path().join("new-key.pem"),
        new.key_pair.serialize_pem(),
    )
    .unwrap();
    let changed = text.replacen(
        "purposes = [\"transactional\", \"informational\"]",
        "purposes = [\"transactional\"]",
        1,
    ) + "\n[tls]\ncert_file = \"new-cert.pem\"\nkey_file = \"new-key.pem\"\n";
    assert_ne!(changed, text);
    let path = folder.path().join("consentry.toml");
    std::fs::write(&path, &changed).unwrap();
    let load = || consentry::config::Config::load(&path).map_err(anyhow::Error::from);
    assert_eq!(app.reloader.reload(load()).unwrap(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // The next decision follows the new configuration.
    let new_client = client(new.cert.pem().as_bytes(), Some(http::Version::HTTP_11));
    let response = new_client
        .post(app.url("/v1/messages"))
        .bearer_auth(&token)
        .json(&informational)
        .send()
        .await
        .expect("a new connection gets the new certificate");
    assert_eq!(error_code(response).await, "purpose_not_allowed");
    // A client that trusts only the old certificate cannot open a new connection.
    assert!(
        client(&old_cert, Some(http::Version::HTTP_11))
            .get(app.url("/v1/messages/x"))
            .send()
            .await
            .is_err()
    );

    // A broken file, and a change that needs a restart: refused, the running one kept.
    std::fs::write(&path, "this is [not toml").unwrap();
    assert!(app.reloader.reload(load()).is_err());
    std::fs::write(
        &path,
        changed.replace("[server]\n", "[server]\nmax_request_bytes = 2048\n"),
    )
    .unwrap();
    let refused = app.reloader.reload(load()).unwrap_err().to_string();
    assert!(refused.contains("[server]"), "{refused}");
    let response = new_client
        .post(app.url("/v1/messages"))
        .bearer_auth(&token)
        .json(&informational)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, "purpose_not_allowed");

    stop.send(true).unwrap();
    let statuses = sends.await.unwrap();
    assert!(statuses.len() > 5, "{statuses:?}");
    assert!(statuses.iter().all(|status| *status == 201), "{statuses:?}");

    let metrics = app.metrics().await;
    assert!(metrics.contains("consentry_config_version 2"), "{metrics}");
    assert!(metrics.contains("consentry_config_reloads_total{code=\"applied\"} 1"));
    assert!(metrics.contains("consentry_config_reloads_total{code=\"refused\"} 2"));
}

/// The OpenAPI document is served, and names exactly the native routes the router has (the
/// gateway fronts and the webhooks are the gateways' contracts, not this one).
#[tokio::test]
async fn the_openapi_document_is_served_and_matches_the_routes() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let served: Value = app
        .client
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file: Value = serde_json::from_str(consentry::http::OPENAPI).unwrap();
    assert_eq!(served, file);
    assert_eq!(served["openapi"], "3.1.0");

    let mut documented = std::collections::BTreeSet::new();
    for (path, operations) in served["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http.rs")).unwrap();
    let route = regex::Regex::new(r#"\.route\(\s*"(/v1/[^"]*)",\s*(get|post)\("#).unwrap();
    let routed: std::collections::BTreeSet<String> = route
        .captures_iter(&source)
        .map(|found| format!("{} {}", found[2].to_uppercase(), &found[1]))
        .filter(|route| !route.contains("/v1/inbound/"))
        .collect();
    assert_eq!(documented, routed);
}
