//! Every API request carries a JWT; a bad one gets 401 with a code and a challenge, and
//! reaches no gateway.

use serde_json::json;

use crate::helpers::*;

async fn assert_refused(app: &TestApp, gateway: &FakeGateway, token: &str, expected: &str) {
    let response = app
        .send(token, &message("+14155550123", "hello", "transactional"))
        .await;
    assert_eq!(response.status(), 401, "{expected}");
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"consentry\""),
        "{challenge}"
    );
    assert_eq!(error_code(response).await, expected);
    assert!(
        gateway.requests().is_empty(),
        "{expected} reached the gateway"
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_and_reach_no_gateway() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let send = "messages:send";
    let dev_header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": "dev" });
    let now = jiff::Timestamp::now().as_second();
    let with = |changes: serde_json::Value| {
        let mut claims = claims("consentry-dev", "acme", send);
        for (key, value) in changes.as_object().unwrap() {
            claims[key] = value.clone();
        }
        claims
    };

    // No Authorization header at all.
    let response = app
        .client
        .post(app.url("/v1/messages"))
        .json(&message("+14155550123", "hello", "transactional"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "missing_token");

    assert_refused(&app, &gateway, "not-a-jwt", "malformed_token").await;
    assert_refused(&app, &gateway, "a.b.c", "malformed_token").await;

    let expired = app.sign_dev(&dev_header, &with(json!({ "exp": now - 3600 })));
    assert_refused(&app, &gateway, &expired, "token_expired").await;

    let early = app.sign_dev(&dev_header, &with(json!({ "nbf": now + 3600 })));
    assert_refused(&app, &gateway, &early, "token_not_yet_valid").await;

    let stranger = app.sign_dev(&dev_header, &with(json!({ "iss": "https://evil.example" })));
    assert_refused(&app, &gateway, &stranger, "invalid_issuer").await;

    let elsewhere = app.sign_dev(&dev_header, &with(json!({ "aud": "another-service" })));
    assert_refused(&app, &gateway, &elsewhere, "invalid_audience").await;

    let no_exp = {
        let mut claims = claims("consentry-dev", "acme", send);
        claims.as_object_mut().unwrap().remove("exp");
        app.sign_dev(&dev_header, &claims)
    };
    assert_refused(&app, &gateway, &no_exp, "missing_claim").await;

    let unsigned = format!(
        "{}.{}.",
        segment(&json!({ "alg": "none", "typ": "JWT" })),
        segment(&claims("consentry-dev", "acme", send))
    );
    assert_refused(&app, &gateway, &unsigned, "algorithm_not_allowed").await;
    let unsigned_with_kid = format!(
        "{}.{}.",
        segment(&json!({ "alg": "none", "kid": "dev" })),
        segment(&claims("consentry-dev", "acme", send))
    );
    assert_refused(&app, &gateway, &unsigned_with_kid, "algorithm_not_allowed").await;

    // The classic confusion: HS256 with the issuer's RSA public key as the HMAC secret.
    let confused = {
        let signing_input = format!(
            "{}.{}",
            segment(&json!({ "alg": "HS256", "typ": "JWT", "kid": "rsa1" })),
            segment(&claims(IDP, "acme", send))
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &fixture("rsa-public.pem"));
        let tag = ring::hmac::sign(&key, signing_input.as_bytes());
        format!("{signing_input}.{}", b64(tag.as_ref()))
    };
    assert_refused(&app, &gateway, &confused, "algorithm_not_allowed").await;

    let unknown_kid = app.sign_dev(
        &json!({ "alg": "EdDSA", "kid": "rotated-away" }),
        &with(json!({})),
    );
    assert_refused(&app, &gateway, &unknown_kid, "unknown_key").await;

    for parameter in ["crit", "jku", "jwk", "x5u", "x5c"] {
        let mut header = dev_header.clone();
        header[parameter] = json!(["exp"]);
        let token = app.sign_dev(&header, &with(json!({})));
        assert_refused(&app, &gateway, &token, "forbidden_header_parameter").await;
    }

    let forged = {
        let token = app.token("acme", send);
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = segment(&claims("consentry-dev", "beta", send));
        parts.join(".")
    };
    assert_refused(&app, &gateway, &forged, "invalid_signature").await;

    let huge = app.sign_dev(
        &dev_header,
        &with(json!({ "padding": "x".repeat(64 * 1024) })),
    );
    assert!(huge.len() > 64 * 1024);
    assert_refused(&app, &gateway, &huge, "token_too_large").await;
}

#[tokio::test]
async fn tokens_of_configured_issuers_are_accepted_with_their_pinned_algorithms() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let claims = claims(IDP, "acme", "messages:send");

    let rsa = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("rsa1".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256)
        },
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap(),
    )
    .unwrap();
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("hs1".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap();
    for token in [rsa, hmac] {
        let response = app
            .send(&token, &message("+14155550123", "hello", "transactional"))
            .await;
        assert_eq!(response.status(), 201);
    }
    assert_eq!(gateway.requests().len(), 2);
}

#[tokio::test]
async fn a_token_without_the_scope_gets_403() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let token = app.token("acme", "messages:read");
    let response = app
        .send(&token, &message("+14155550123", "hello", "transactional"))
        .await;
    assert_eq!(response.status(), 403);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    assert_eq!(error_code(response).await, "insufficient_scope");

    let unknown = app.token("nobody", "messages:send");
    let response = app
        .send(&unknown, &message("+14155550123", "hello", "transactional"))
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(error_code(response).await, "unknown_tenant");
    assert!(gateway.requests().is_empty());
}

#[tokio::test]
async fn token_claims_narrow_the_tenant_senders_and_purposes() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let mut narrowed = claims("consentry-dev", "acme", "messages:send");
    narrowed["senders"] = json!(["ACME"]);
    narrowed["purposes"] = json!(["transactional"]);
    let token = app.sign_dev(&json!({ "alg": "EdDSA", "kid": "dev" }), &narrowed);

    let response = app
        .send(&token, &message("+14155550123", "hello", "transactional"))
        .await;
    assert_eq!(error_code(response).await, "sender_not_allowed");
    let mut from_acme = message("+14155550123", "hello", "informational");
    from_acme["from"] = json!("ACME");
    let response = app.send(&token, &from_acme).await;
    assert_eq!(error_code(response).await, "purpose_not_allowed");
    from_acme["purpose"] = json!("transactional");
    assert_eq!(app.send(&token, &from_acme).await.status(), 201);
    assert_eq!(gateway.requests().len(), 1);
}
