//! The guides' examples hold: every JSON example of docs/integrators.md is marked as a request
//! or an answer of an endpoint (`<!-- example: request POST /v1/messages … -->` on the line
//! before it). A request example is sent as written and must be accepted; an answer example
//! must have the shape of a real answer to that endpoint, produced here (every field it shows
//! exists, of the same type, and its codes and decisions are the real ones). `…` in an
//! example elides: inside a string, text; `{…}`, an object's fields; `, …` before a closing
//! bracket, more of the same.

use serde_json::{Value, json};

use crate::helpers::*;

const GUIDE: &str = include_str!("../../docs/integrators.md");

/// Fields whose values, not only their types, must be the real ones.
const EXACT: [&str; 6] = ["code", "decision", "status", "action", "level", "purpose"];

struct Example {
    kind: String,
    endpoint: String,
    line: usize,
    body: Value,
}

fn examples() -> Vec<Example> {
    let lines: Vec<&str> = GUIDE.lines().collect();
    let more_of_the_same = regex::Regex::new(r",\s*…\s*([\]}])").unwrap();
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if !line.starts_with("```json") {
            continue;
        }
        let marker = index
            .checked_sub(1)
            .and_then(|before| lines[before].strip_prefix("<!-- example: "))
            .unwrap_or_else(|| {
                panic!(
                    "docs/integrators.md:{}: a JSON example without its <!-- example: … --> marker",
                    index + 1
                )
            });
        let mut words = marker.split_whitespace();
        let kind = words.next().unwrap().to_owned();
        let endpoint = format!("{} {}", words.next().unwrap(), words.next().unwrap());
        let end = lines[index + 1..]
            .iter()
            .position(|l| l.starts_with("```"))
            .unwrap();
        let text = lines[index + 1..index + 1 + end].join("\n");
        let elided = more_of_the_same
            .replace_all(&text.replace("{…}", "{}"), "$1")
            .into_owned();
        let body = serde_json::from_str(&elided).unwrap_or_else(|e| {
            panic!(
                "docs/integrators.md:{}: not JSON ({e}):\n{elided}",
                index + 2
            )
        });
        found.push(Example {
            kind,
            endpoint,
            line: index + 2,
            body,
        });
    }
    found
}

/// Whether `real` has every field `example` shows, of the same type (and the same value for
/// the fields in `EXACT`).
fn covers(example: &Value, real: &Value, path: &str) -> Result<(), String> {
    match (example, real) {
        (Value::Object(shown), Value::Object(real_fields)) => {
            for (key, value) in shown {
                let at = format!("{path}.{key}");
                let real_value = real_fields
                    .get(key)
                    .ok_or_else(|| format!("{at}: no such field in the real answer"))?;
                if EXACT.contains(&key.as_str())
                    && value.is_string()
                    && real_value.is_string()
                    && value != real_value
                {
                    return Err(format!("{at}: {value} in the guide, {real_value} for real"));
                }
                covers(value, real_value, &at)?;
            }
            Ok(())
        }
        (Value::Array(shown), Value::Array(items)) => {
            for (i, element) in shown.iter().enumerate() {
                let at = format!("{path}[{i}]");
                let errors: Vec<String> = items
                    .iter()
                    .filter_map(|item| covers(element, item, &at).err())
                    .collect();
                if errors.len() == items.len() {
                    return Err(format!(
                        "{at}: no element of the real list is like it: {errors:?}"
                    ));
                }
            }
            Ok(())
        }
        (Value::String(_), Value::String(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => Ok(()),
        _ => Err(format!("{path}: {example} in the guide, {real} for real")),
    }
}

#[tokio::test]
async fn the_json_examples_of_the_integrators_guide_hold() {
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn(&gateway.url()).await;
    let acme = app.token("acme", "messages:send consents:read consents:write");
    let shop = app.token("shop", "consents:write");
    let beta = app.token("beta", "messages:send consents:write");
    let found = examples();
    assert!(found.len() >= 6, "the guide's examples were found");

    for example in found {
        let where_ = format!("docs/integrators.md:{}", example.line);
        let real = match (example.kind.as_str(), example.endpoint.as_str()) {
            ("request", "POST /v1/messages") => {
                let response = app.send(&acme, &example.body).await;
                // A scheduled send is held: 202.
                let held = example.body.get("send_at").is_some();
                assert_eq!(
                    response.status(),
                    if held { 202 } else { 201 },
                    "{where_}: {:?}",
                    response.text().await
                );
                continue;
            }
            ("request", "POST /v1/messages/batch") => {
                let lines = batch(&app, &acme, &example.body).await;
                assert!(
                    lines[..lines.len() - 1]
                        .iter()
                        .all(|line| line["status"] == "sent"),
                    "{where_}: {lines:?}"
                );
                continue;
            }
            ("answer", "POST /v1/messages/batch") => {
                let request = json!({
                    "from": ACME_SENDER, "purpose": "transactional", "body": "Your order has shipped",
                    "recipients": [{ "to": "+14155550193" }]
                });
                batch(&app, &acme, &request).await.remove(0)
            }
            ("request", "POST /v1/consents") => {
                let response = app.consent(&shop, &example.body).await;
                assert_eq!(
                    response.status(),
                    201,
                    "{where_}: {:?}",
                    response.text().await
                );
                continue;
            }
            ("answer", "POST /v1/messages") => {
                // A message to a number that opted out.
                let number = "+14155550161";
                let opt_out = json!({ "number": number, "action": "opt_out" });
                assert_eq!(app.consent(&acme, &opt_out).await.status(), 201);
                let response = app
                    .send(
                        &acme,
                        &message(number, "Your order shipped", "informational"),
                    )
                    .await;
                assert_eq!(response.status(), 403, "{where_}");
                response.json::<Value>().await.unwrap()
            }
            ("answer", "POST /v1/messages/{id}/cancel") => {
                let mut request = message("+14155550164", "See you tomorrow", "transactional");
                request["send_at"] = json!("2026-11-19T15:00:00Z");
                let held: Value = app.send(&acme, &request).await.json().await.unwrap();
                let id = held["id"].as_str().unwrap();
                let response = app
                    .client
                    .post(app.url(&format!("/v1/messages/{id}/cancel")))
                    .bearer_auth(&acme)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{where_}");
                response.json::<Value>().await.unwrap()
            }
            ("answer", "POST /v1/decisions") => {
                // Marketing to a Florida number with written consent, at 20:30 in Miami.
                let number = "+13055550123";
                let consent = app.consent(&beta, &written_opt_in(number)).await;
                assert_eq!(consent.status(), 201, "{where_}");
                let request = json!({
                    "to": number, "from": BETA_SENDER, "body": "Spring sale",
                    "purpose": "marketing", "at": "2026-11-19T01:30:00Z"
                });
                let response = app
                    .client
                    .post(app.url("/v1/decisions"))
                    .bearer_auth(&beta)
                    .json(&request)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{where_}");
                response.json::<Value>().await.unwrap()
            }
            ("answer", "GET /v1/consents/{number}") => {
                let number = "+14155550162";
                assert_eq!(
                    app.consent(&acme, &written_opt_in(number)).await.status(),
                    201
                );
                let response = app.get(&acme, &format!("/v1/consents/{number}")).await;
                assert_eq!(response.status(), 200, "{where_}");
                response.json::<Value>().await.unwrap()
            }
            ("answer", "POST /v1/consents/import") => {
                let file = "number,action,occurred_at\n\
                            +14155550163,opt_in,2026-11-01T00:00:00Z\n\
                            not-a-number,opt_in,2026-11-01T00:00:00Z\n";
                let response = app.import(&acme, "text/csv", file).await;
                assert_eq!(response.status(), 200, "{where_}");
                response.json::<Value>().await.unwrap()
            }
            (kind, endpoint) => panic!("{where_}: no check for a {kind} of {endpoint}"),
        };
        if let Err(why) = covers(&example.body, &real, "") {
            panic!("{where_}: the example is not the real answer's shape: {why}\nreal: {real}");
        }
    }
}

/// A batch's answer, line by line.
async fn batch(app: &TestApp, token: &str, request: &Value) -> Vec<Value> {
    let response = app
        .client
        .post(app.url("/v1/messages/batch"))
        .bearer_auth(token)
        .json(request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// docs/auditors.md's linked leaf, written out by hand field by field, is the code's encoding
/// of that erasure, and a next leaf about the number ends with the link it describes.
#[test]
fn the_auditors_linked_leaf_is_the_codes_encoding() {
    use consentry::audit::leaf::{Erasure, Link, erasure};
    use consentry::crypto::hex;

    let guide = include_str!("../../docs/auditors.md");
    let start = guide
        .find("**A linked leaf, by hand.**")
        .expect("the linked leaf's paragraph");
    let paragraph = &guide[start..];
    let paragraph = &paragraph[..paragraph.find("(no previous").unwrap()];
    // The paragraph's byte groups, in order: the code spans made of hex digits and spaces.
    let bytes: String = paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| {
            span.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase() || c.is_whitespace())
                && span.len() >= 2
        })
        .flat_map(|span| span.split_whitespace())
        .collect();
    let era = |link| {
        erasure(
            &Erasure {
                id: "era_1".into(),
                tenant: "acme".into(),
                recipient_hash: "r".into(),
                erased_at_us: 1,
                erased_by: "ops".into(),
                keys_destroyed: 0,
            },
            link,
        )
    };
    let first = era(Link::First);
    assert_eq!(bytes, hex(&first.bytes), "the leaf, byte by byte");
    // "The next leaf about `r` ends with `01 00000020` and the 32 bytes of this leaf's hash,
    // SHA-256(00 || these bytes), in place of that last `00`."
    let next = era(Link::After(first.hash()));
    let expected = format!(
        "{}0100000020{}",
        &bytes[..bytes.len() - 2],
        hex(&first.hash())
    );
    assert_eq!(hex(&next.bytes), expected);
    let mut prefixed = vec![0u8];
    prefixed.extend_from_slice(&first.bytes);
    assert_eq!(
        hex(&first.hash()),
        hex(ring::digest::digest(&ring::digest::SHA256, &prefixed).as_ref())
    );
}

/// docs/auditors.md's worked example of the log format is what consentry encodes and hashes,
/// and its commands reproduce the hashes.
#[test]
fn the_auditors_worked_example_is_the_codes_encoding() {
    use consentry::audit::leaf::{BodyAccess, body_access};
    use consentry::audit::merkle::node_hash;
    use consentry::crypto::hex;

    let guide = include_str!("../../docs/auditors.md");
    let start = guide
        .find("<!-- worked example")
        .expect("the worked example's marker");
    let block = &guide[start..];
    let block = &block[block.find("```text\n").unwrap() + 8..];
    let block = &block[..block.find("```").unwrap()];
    let value = |name: &str| -> String {
        block
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name:?} in the worked example"))
            .trim()
            .to_owned()
    };
    let leaf = |id: &str, at: i64| {
        body_access(&BodyAccess {
            id: id.into(),
            tenant: "acme".into(),
            subject: "auditor-1".into(),
            message_id: "msg_01a24c7f0c3a7e6b9d2f4e8a1c5b7d93".into(),
            accessed_at_us: at,
        })
    };
    let leaves = [
        leaf("acc_0001", 1_763_488_800_000_000),
        leaf("acc_0002", 1_763_488_801_000_000),
    ];
    for (i, leaf) in leaves.iter().enumerate() {
        assert_eq!(value(&format!("leaf {i}")), hex(&leaf.bytes), "leaf {i}");
        assert_eq!(value(&format!("hash {i}")), hex(&leaf.hash()), "hash {i}");
    }
    let root = node_hash(&leaves[0].hash(), &leaves[1].hash());
    assert_eq!(value("root 2"), hex(&root));

    // The commands the guide gives, run as given.
    let commands = &guide[start..];
    let commands = &commands[commands.find("```sh\n").unwrap() + 6..];
    let commands = &commands[..commands.find("```").unwrap()];
    let Ok(output) = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", commands])
        .env("LEAF0", value("leaf 0"))
        .env("HASH0", value("hash 0"))
        .env("HASH1", value("hash 1"))
        .output()
    else {
        eprintln!("no bash: the commands were not run");
        return;
    };
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        [value("hash 0"), value("root 2")]
    );
}
