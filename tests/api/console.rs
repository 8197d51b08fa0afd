//! The console: its files, the reads it makes (a number's replies, its reviews, decisions over
//! time), and the page itself in headless Chromium.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::helpers::*;

const NUMBER: &str = "+14155550177";

/// A number with a story: an opt-in with written evidence, a message sent, a STOP reply (an
/// opt-out), a marketing message denied for it, then an uncertain reply waiting for review.
/// Returns the token (every scope the console uses) and the denial's code.
async fn story(app: &TestApp) -> (String, String) {
    let token = app.token(
        "beta",
        "messages:send consents:read consents:write audit:read",
    );
    let recorded = app.consent(&token, &written_opt_in(NUMBER)).await;
    assert_eq!(recorded.status(), 201, "{:?}", recorded.text().await);
    let send = |purpose: &str| json!({ "to": NUMBER, "from": BETA_SENDER, "body": "Spring sale", "purpose": purpose });
    assert_eq!(app.send(&token, &send("marketing")).await.status(), 201);
    assert_eq!(app.sandbox_reply(NUMBER, "STOP").await.status(), 200);
    let denied = app.send(&token, &send("marketing")).await;
    assert_eq!(denied.status(), 403);
    let code = error_code(denied).await;
    assert_eq!(
        app.sandbox_reply(NUMBER, "Can you stop by tomorrow?")
            .await
            .status(),
        200
    );
    (token, code)
}

#[tokio::test]
async fn the_console_is_served_with_its_files_and_a_strict_policy() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("connect-src 'self'"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let text = response.text().await.unwrap();
        // Nothing is loaded from anywhere else (the one address is SVG's namespace, a name).
        let text = text.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{path}"
        );
    }
    let missing = app
        .client
        .get(app.url("/console/other.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn the_console_reads_a_numbers_replies_reviews_and_the_decisions_over_time() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let (token, denial) = story(&app).await;

    // Replies: what each was taken for, never its text.
    let replies: Value = app
        .get(&token, &format!("/v1/audit/numbers/{NUMBER}/replies"))
        .await
        .json()
        .await
        .unwrap();
    let replies = replies["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[1]["class"], "opt_out", "oldest last: {replies:?}");
    assert_eq!(replies[1]["certain"], true);
    assert!(replies[1]["consent_event"].is_string());
    assert_eq!(replies[0]["from"], "+1415555****");
    assert!(!replies.iter().any(|r| r.to_string().contains("tomorrow")));

    // Reviews of this number only.
    let reviews: Value = app
        .get(&token, &format!("/v1/reviews?number={NUMBER}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reviews["reviews"].as_array().unwrap().len(), 1);
    let other: Value = app
        .get(&token, "/v1/reviews?number=%2B14155550100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(other["reviews"], json!([]));
    let bad = app.get(&token, "/v1/reviews?number=not-a-number").await;
    assert_eq!(error_code(bad).await, "invalid_number");

    // Decisions over time: every message of the last day, by decision and headline reason.
    let chart: Value = app
        .get(&token, "/v1/audit/decisions")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(chart["bucket"], "hour");
    let mut counts: HashMap<(String, Option<String>), i64> = HashMap::new();
    for count in chart["counts"].as_array().unwrap() {
        let reason = count["reason"].as_str().map(str::to_owned);
        let key = (count["decision"].as_str().unwrap().to_owned(), reason);
        *counts.entry(key).or_default() += count["count"].as_i64().unwrap();
    }
    assert_eq!(
        counts.get(&("denied".to_owned(), Some(denial.clone()))),
        Some(&1),
        "{denial}: {chart}"
    );
    let recorded = app
        .count("SELECT COUNT(*) FROM messages WHERE tenant = 'beta'")
        .await;
    assert_eq!(counts.values().sum::<i64>(), recorded, "{chart}");
    let day: Value = app
        .get(
            &token,
            "/v1/audit/decisions?bucket=day&from=2026-11-01T00:00:00Z",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        day["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["count"].as_i64().unwrap())
            .sum::<i64>(),
        recorded
    );
    for (query, field) in [
        ("bucket=week", "bucket"),
        ("from=2026-01-01T00:00:00Z", "from"),
        ("from=2026-11-19T00:00:00Z&to=2026-11-18T00:00:00Z", "from"),
        ("to=yesterday", "to"),
    ] {
        let refused = app
            .get(&token, &format!("/v1/audit/decisions?{query}"))
            .await;
        assert_eq!(refused.status(), 400, "{query}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    // The chart is the auditor's: a sender's token may not read it.
    let sender = app.token("beta", "messages:send");
    assert_eq!(app.get(&sender, "/v1/audit/decisions").await.status(), 403);
}

/// The page in headless Chromium (tests/console/check_console.py, with Selenium): token in,
/// checkpoint signature verified in the browser, chart drawn, the number looked up (its opt-out
/// with evidence, its denied message, proofs checked), a review resolved from the page.
/// `.ci/run` installs Chromium, its driver and Selenium, and names the Python in
/// `CONSENTRY_CONSOLE_PYTHON`; without it this test says so and checks nothing.
/// `CONSENTRY_CONSOLE_SHOTS` names a folder for the screenshots (docs/ keeps the last ones).
#[tokio::test]
async fn the_console_tells_a_numbers_story_in_a_browser() {
    let Ok(python) = std::env::var("CONSENTRY_CONSOLE_PYTHON") else {
        eprintln!(
            "CONSENTRY_CONSOLE_PYTHON is not set: the browser test did not run (.ci/run sets it)"
        );
        return;
    };
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let (token, denial) = story(&app).await;
    // The page checks proofs against the latest checkpoint: wait until it covers the story.
    let leaves = app.count("SELECT COUNT(*) FROM log_leaves").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let latest: Value = app
            .get(&token, "/v1/audit/checkpoints/latest")
            .await
            .json()
            .await
            .unwrap_or_default();
        if latest["tree_size"].as_i64().unwrap_or(0) >= leaves {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let shots = std::env::var("CONSENTRY_CONSOLE_SHOTS").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join("consentry-console-shots")
            .display()
            .to_string()
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/console/check_console.py"
    );
    let mut command = std::process::Command::new(python);
    command
        .arg(script)
        .env(
            "CONSENTRY_URL",
            format!("https://localhost:{}", app.api.port()),
        )
        .env("CONSENTRY_TOKEN", &token)
        .env("CONSENTRY_NUMBER", NUMBER)
        .env("CONSENTRY_DENIAL", &denial)
        .env("CONSENTRY_SHOTS", &shots);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("console: ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The review was resolved through the page, as not an opt-out.
    let reviews: Value = app
        .get(&token, &format!("/v1/reviews?open=false&number={NUMBER}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reviews["reviews"][0]["outcome"], "not_opt_out", "{reviews}");
}
