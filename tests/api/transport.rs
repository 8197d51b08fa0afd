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
