//! The edge, tried as a careless client and an attacker would: headers given twice, tokens
//! with claims of the wrong type, codings, malformed paths and queries, early answers that
//! must reach clients which write before they read, slow bodies, idle and excess connections,
//! and the permissions of the data on disk.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

/// A TLS connection to the API that trusts the app's certificate, offering `alpn`.
async fn raw_tls(app: &TestApp, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cert = std::fs::read(app.data_dir().join("tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&cert) {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(app.api).await.unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .map(Result::unwrap)
        .collect()
}

/// Writes `request` whole, as a client that reads only afterwards, then reads the answer
/// until the server closes or `Connection: close`/length says it is complete.
async fn write_then_read(app: &TestApp, request: &[u8]) -> String {
    let mut stream = raw_tls(app, b"http/1.1").await;
    stream.write_all(request).await.unwrap();
    stream.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    answer.extend_from_slice(&buffer[..read]);
                    if complete(&answer) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether `answer` holds a whole HTTP/1.1 response with a Content-Length.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .is_some_and(|length| body.len() >= length)
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn code_of(answer: &str) -> String {
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    let value: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    value["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn two_authorization_headers_are_refused_whichever_is_valid() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let unsigned = format!(
        "{}.{}.",
        segment(&json!({"alg": "none", "typ": "JWT"})),
        segment(&claims("consentry-dev", "acme", "messages:send"))
    );
    for (first, second) in [(&token, &unsigned), (&unsigned, &token), (&token, &token)] {
        let response = app
            .client
            .post(app.url("/v1/messages"))
            .header("authorization", format!("Bearer {first}"))
            .header("authorization", format!("Bearer {second}"))
            .json(&message("+14155550123", "hello", "transactional"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        assert!(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );
        assert_eq!(error_code(response).await, "duplicate_authorization");
    }
    assert!(gateway.requests().is_empty());
}

#[tokio::test]
async fn time_claims_of_the_wrong_type_are_refused() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": "dev" });
    for (claim, value) in [
        ("nbf", json!("9999999999")),
        ("nbf", json!(1e300)),
        ("nbf", json!(true)),
        ("nbf", json!(-5)),
        ("iat", json!("0")),
        ("iat", json!(null)),
        ("exp", json!(1e300)),
    ] {
        let mut claims = claims("consentry-dev", "acme", "messages:send");
        claims[claim] = value.clone();
        let token = app.sign_dev(&header, &claims);
        let response = app
            .send(&token, &message("+14155550123", "hello", "transactional"))
            .await;
        assert_eq!(response.status(), 401, "{claim} = {value}");
    }
    // Issued in the future: refused.
    let mut future = claims("consentry-dev", "acme", "messages:send");
    future["iat"] = json!(jiff::Timestamp::now().as_second() + 3600);
    let response = app
        .send(
            &app.sign_dev(&header, &future),
            &message("+14155550123", "hello", "transactional"),
        )
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "invalid_claims");
    assert!(gateway.requests().is_empty());
}

#[tokio::test]
async fn a_token_living_longer_than_the_configured_lifetime_is_refused() {
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let text = test_config(folder.path(), &gateway.url()).replace(
        "dev_issuer = true\n",
        "dev_issuer = true\nmax_token_lifetime_seconds = 3600\n",
    );
    let app = TestApp::spawn_with(folder.path(), &text).await;
    let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": "dev" });
    let now = jiff::Timestamp::now().as_second();
    let mut long = claims("consentry-dev", "acme", "messages:send");
    long["exp"] = json!(now + 2 * 3600);
    let response = app
        .send(
            &app.sign_dev(&header, &long),
            &message("+14155550123", "hello", "transactional"),
        )
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "token_lifetime_too_long");
    // Without iat, the lifetime counts from now.
    let mut no_iat = long.clone();
    no_iat.as_object_mut().unwrap().remove("iat");
    let response = app
        .send(
            &app.sign_dev(&header, &no_iat),
            &message("+14155550123", "hello", "transactional"),
        )
        .await;
    assert_eq!(error_code(response).await, "token_lifetime_too_long");
    let response = app
        .send(
            &app.token("acme", "messages:send"),
            &message("+14155550123", "hello", "transactional"),
        )
        .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn codings_the_server_does_not_decode_are_refused() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let plain = message("+14155550123", "hello", "transactional").to_string();
    for coding in ["br", "gzip", "identity, gzip"] {
        let response = app
            .client
            .post(app.url("/v1/messages"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(plain.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415, "{coding}");
        assert_eq!(response.headers()["accept-encoding"], "identity");
        assert_eq!(error_code(response).await, "unsupported_content_encoding");
    }
    // A transfer coding before chunked: 501, as RFC 9112 section 6.1 says.
    let chunk = format!("{:x}\r\n{plain}\r\n0\r\n\r\n", plain.len());
    let answer = write_then_read(
        &app,
        format!(
            "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{chunk}"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 501, "{answer}");
    assert_eq!(code_of(&answer), "unsupported_transfer_coding");
    // Identity is fine.
    let response = app
        .client
        .post(app.url("/v1/messages"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .body(plain)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(gateway.requests().len(), 1);
}

#[tokio::test]
async fn malformed_paths_and_queries_get_the_documented_shape_after_authentication() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let auditor = app.token("acme", "audit:read messages:read");
    for (path, code) in [
        ("/v1/audit/messages?limit=many", "invalid_query"),
        ("/v1/audit/proofs/inclusion?leaf_index=%ZZ", "invalid_query"),
        ("/v1/messages/%FF%FE", "invalid_path"),
    ] {
        let response = app.get(&auditor, path).await;
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(error_code(response).await, code, "{path}");
        // Without a token, authentication answers first.
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(error_code(response).await, "missing_token");
    }
}

#[tokio::test]
async fn early_answers_reach_clients_that_write_the_whole_request_first() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");

    // 10 MB announced and sent at once, against a 64 KiB limit: 413, not a reset.
    let body = vec![b'x'; 10 << 20];
    let mut request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let answer = write_then_read(&app, &request).await;
    assert_eq!(
        status_of(&answer),
        413,
        "{}",
        &answer[..answer.len().min(300)]
    );
    assert_eq!(code_of(&answer), "payload_too_large");

    // No token and a body: 401 with its message.
    let mut request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        60_000
    )
    .into_bytes();
    request.extend_from_slice(&[b' '; 60_000]);
    let answer = write_then_read(&app, &request).await;
    assert_eq!(status_of(&answer), 401);
    assert_eq!(code_of(&answer), "missing_token");

    // 600 KB of headers: 431 reaches the client.
    let mut request =
        String::from("GET /v1/messages/x HTTP/1.1\r\nHost: localhost\r\n").into_bytes();
    for index in 0..600 {
        request.extend_from_slice(format!("X-Filler-{index}: {}\r\n", "y".repeat(1000)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let answer = write_then_read(&app, &request).await;
    assert_eq!(
        status_of(&answer),
        431,
        "{}",
        &answer[..answer.len().min(300)]
    );

    // Over h2, an early 401 with a body in flight: the client gets it every time.
    let cert = std::fs::read(app.data_dir().join("tls/cert.pem")).unwrap();
    let h2 = client(&cert, Some(http::Version::HTTP_2));
    for _ in 0..20 {
        let response = h2
            .post(app.url("/v1/messages"))
            .header("content-type", "application/json")
            .body(vec![b' '; 50_000])
            .send()
            .await
            .expect("the answer arrives, not a stream error");
        assert_eq!(response.status(), 401);
        assert_eq!(error_code(response).await, "missing_token");
    }
    assert!(gateway.requests().is_empty());
}

#[tokio::test]
async fn an_early_answer_to_expect_100_continue_asks_for_no_body() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    for path in ["/v1/messages", "/sms/json"] {
        let mut stream = raw_tls(&app, b"http/1.1").await;
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer not.a.token\r\n\
                     Content-Type: application/json\r\nExpect: 100-continue\r\n\
                     Content-Length: 60000\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        let started = std::time::Instant::now();
        while let Ok(Ok(read)) =
            tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer)).await
        {
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..read]);
            if complete(&answer) {
                break;
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path}: the answer waited"
        );
        assert!(!answer.contains("100 Continue"), "{path}: {answer}");
        // Both refuse the token before reading; the Vonage front answers in Vonage's shape.
        match path {
            "/v1/messages" => assert!(answer.starts_with("HTTP/1.1 401"), "{answer}"),
            _ => assert!(answer.contains("malformed_token"), "{answer}"),
        }
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{path}: {answer}"
        );
    }
    assert!(gateway.requests().is_empty());
}

#[tokio::test]
async fn a_body_that_trickles_in_gets_408_after_the_grace() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let mut stream = raw_tls(&app, b"http/1.1").await;
    stream
        .write_all(
            format!(
                "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    answer.extend_from_slice(&buffer[..read]);
                    if complete(&answer) { break; }
                }
            },
            () = tokio::time::sleep(Duration::from_secs(2)) => {
                assert!(started.elapsed() < Duration::from_secs(20), "no answer to a trickle");
                let _ = stream.write_all(b" ").await;
            }
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert_eq!(code_of(&answer), "request_timeout");
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(gateway.requests().is_empty());
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let text = test_config(folder.path(), &gateway.url())
        .replace("[server]\n", "[server]\nidle_timeout_seconds = 1\n");
    let app = TestApp::spawn_with(folder.path(), &text).await;
    // An h2 client that sends the preface and nothing more.
    let mut stream = raw_tls(&app, b"h2").await;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle h2 connection stayed open");
}

#[tokio::test]
async fn unauthenticated_connections_give_way_to_real_senders() {
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let text = test_config(folder.path(), &gateway.url())
        .replace("[server]\n", "[server]\nmax_connections = 16\n");
    let app = TestApp::spawn_with(folder.path(), &text).await;
    let token = app.token("acme", "messages:send");
    // A sender with an open, authenticated connection.
    let cert = std::fs::read(app.data_dir().join("tls/cert.pem")).unwrap();
    let sender = client(&cert, Some(http::Version::HTTP_2));
    let response = sender
        .post(app.url("/v1/messages"))
        .bearer_auth(&token)
        .json(&message("+14155550123", "first", "transactional"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // 40 clients that each begin a request and never finish it.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut stream = raw_tls(&app, b"http/1.1").await;
        stream
            .write_all(
                b"POST /sms/json HTTP/1.1\r\nHost: localhost\r\nContent-Length: 60000\r\n\r\n",
            )
            .await
            .unwrap();
        held.push(stream);
    }
    // The sender's connection is still there, and new senders get in.
    for index in 0..5 {
        let response = sender
            .post(app.url("/v1/messages"))
            .bearer_auth(&token)
            .json(&message(
                "+14155550123",
                &format!("held {index}"),
                "transactional",
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let fresh = client(&cert, Some(http::Version::HTTP_11));
        let response = fresh
            .post(app.url("/v1/messages"))
            .bearer_auth(&token)
            .json(&message(
                "+14155550123",
                &format!("new {index}"),
                "transactional",
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    assert_eq!(gateway.requests().len(), 11);
    drop(held);
}

#[tokio::test]
async fn connections_beyond_the_limit_that_cannot_be_made_room_for_get_503() {
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let text = test_config(folder.path(), &gateway.url()).replace(
        "[server]\n",
        "[server]\nmax_connections = 4\nmax_connections_per_client = 4\n",
    );
    let app = TestApp::spawn_with(folder.path(), &text).await;
    let token = app.token("acme", "messages:send");
    let cert = std::fs::read(app.data_dir().join("tls/cert.pem")).unwrap();
    // Four authenticated connections fill the table.
    let mut senders = Vec::new();
    for index in 0..4 {
        let sender = client(&cert, Some(http::Version::HTTP_2));
        let response = sender
            .post(app.url("/v1/messages"))
            .bearer_auth(&token)
            .json(&message(
                "+14155550123",
                &format!("{index}"),
                "transactional",
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        senders.push(sender);
    }
    let response = client(&cert, Some(http::Version::HTTP_11))
        .post(app.url("/v1/messages"))
        .bearer_auth(&token)
        .json(&message("+14155550123", "fifth", "transactional"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(error_code(response).await, "too_many_connections");
    assert_eq!(gateway.requests().len(), 4);
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_folder_and_database_are_private_whatever_existed_before() {
    use std::os::unix::fs::PermissionsExt as _;
    let gateway = FakeGateway::start().await;
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = test_config(folder.path(), &gateway.url());
    let app = TestApp::spawn_with(folder.path(), &text).await;
    let token = app.token("acme", "messages:send");
    let response = app
        .send(&token, &message("+14155550123", "hello", "transactional"))
        .await;
    assert_eq!(response.status(), 201);
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    if !app.database.is_postgres() {
        for name in ["consentry.db", "consentry.db-wal", "consentry.db-shm"] {
            assert_eq!(mode(&data.join(name)), 0o600, "{name}");
        }
    }
}

/// Shutdown (what SIGTERM starts): a send in flight is finished and answered, the listener
/// stops taking connections, and the workers stop, all within the drain deadline.
#[tokio::test]
async fn shutdown_finishes_the_sends_in_flight_then_stops() {
    let gateway = FakeGateway::start().await;
    // The gateway takes 700 ms (the tests' upstream timeout is 1 s).
    gateway.set_mode(GatewayMode::Stall(Duration::from_millis(700)));
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let url = app.url("/v1/messages");
    let client = app.client.clone();
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(&token)
            .json(&message("+14155550123", "in flight", "transactional"))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let api = app.api;
    let started = std::time::Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the drain took too long"
    );
    let answered = in_flight
        .await
        .unwrap()
        .expect("the send in flight is answered");
    assert_eq!(answered.status(), 201);
    assert_eq!(gateway.requests().len(), 1);
    assert!(
        TcpStream::connect(api).await.is_err(),
        "the listener still takes connections after shutdown"
    );
}

#[tokio::test]
async fn json_is_recognised_by_its_media_type_not_a_prefix() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:send");
    let body = message("+14155550123", "hello", "transactional").to_string();
    for (content_type, status) in [
        ("Application/JSON; charset=utf-8", 201),
        ("application/json", 201),
        ("application/jsonl", 415),
        ("application/json-patch+json", 415),
    ] {
        let response = app
            .client
            .post(app.url("/v1/messages"))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{content_type}");
    }
}
