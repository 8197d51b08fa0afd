//! The `consentry` binary as a user runs it: the printed example works as printed, `token`
//! prints only the token, and `check` names the bad field.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_consentry");

/// Kills the child when the test ends, even on a failed assertion.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_with_no_configuration_prints_an_example_that_works_as_printed() {
    let folder = tempfile::tempdir().unwrap();
    let mut child = Running(
        Command::new(BINARY)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .current_dir(folder.path())
            .env("RUST_LOG", "info,consentry::flow=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut lines = Vec::new();
    let started = Instant::now();
    for line in stdout.lines() {
        let line = line.unwrap();
        let done = line.contains("/v1/sandbox/messages");
        lines.push(line);
        if done || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let printed = lines.join("\n");
    assert!(printed.contains("SHA-256:"), "{printed}");
    assert!(folder.path().join("consentry-data/tls/cert.pem").exists());

    // Run the example exactly as printed, in the folder the server was started from.
    let start = printed
        .find("TOKEN=$(")
        .expect("a token command is printed");
    let example = &printed[start..];
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", example])
        .current_dir(folder.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{example}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(r#""status":"sent""#), "{stdout}");
    assert!(
        stdout.contains("Your code is 123456"),
        "the sandbox shows the message: {stdout}"
    );

    // The log lines name no full number and no body.
    let _ = child.0.kill();
    let _ = child.0.wait();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut log).unwrap();
    assert!(log.contains("message sent"), "{log}");
    assert!(
        !log.contains("4155550123") && !log.contains("123456"),
        "{log}"
    );
}

#[test]
fn token_prints_the_token_alone() {
    let folder = tempfile::tempdir().unwrap();
    let mint = |data_dir: &str| {
        Command::new(BINARY)
            .args([
                "token",
                "--data-dir",
                data_dir,
                "--tenant",
                "demo",
                "--sub",
                "me",
            ])
            .args(["--scope", "messages:send"])
            .current_dir(folder.path())
            .output()
            .unwrap()
    };
    // A folder that is not there (a typo) is not made: its token would be accepted nowhere.
    let missing = mint("typo");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no data folder"));
    assert!(!folder.path().join("typo").exists());
    std::fs::create_dir(folder.path().join("d")).unwrap();
    assert!(mint("d").status.success());

    let output = Command::new(BINARY)
        .args([
            "token",
            "--data-dir",
            "d",
            "--tenant",
            "demo",
            "--sub",
            "me",
            "--scope",
            "messages:send",
            "--ttl",
            "10m",
        ])
        .current_dir(folder.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout.trim_end_matches('\n');
    assert_eq!(token.split('.').count(), 3, "{stdout:?}");
    assert!(!token.contains(char::is_whitespace));

    let refused = Command::new(BINARY)
        .args([
            "token",
            "--data-dir",
            "d",
            "--tenant",
            "demo",
            "--sub",
            "me",
            "--scope",
            "x",
            "--ttl",
            "soon",
        ])
        .current_dir(folder.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--ttl"));
}

#[test]
fn check_names_the_bad_field() {
    let folder = tempfile::tempdir().unwrap();
    let good = Command::new(BINARY).arg("check").output().unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    let path = folder.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[tenants]]\nid = \"acme\"\nsenders = [\"+12025550100\"]\nupstream = \"gw\"\n",
    )
    .unwrap();
    let bad = Command::new(BINARY)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let message = String::from_utf8_lossy(&bad.stderr);
    assert!(message.contains("tenants[0].upstream"), "{message}");

    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:8443\"\ncolour = \"blue\"\n",
    )
    .unwrap();
    let unknown = Command::new(BINARY)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        message.contains("colour") && message.contains("line 3"),
        "{message}"
    );

    std::fs::write(
        &path,
        "[[upstreams]]\nname = \"gw\"\nkind = \"http-json\"\nurl = \"https://gw.example/\"\ncredential = { env = \"CONSENTRY_TEST_UNSET_VARIABLE\" }\n",
    )
    .unwrap();
    let unset = Command::new(BINARY)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&unset.stderr);
    assert!(message.contains("upstreams[0].credential"), "{message}");
}

#[test]
fn the_example_configuration_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/consentry.toml");
    let output = Command::new(BINARY)
        .args(["check", "--config", example])
        .env("GATEWAY_TOKEN", "gateway-token")
        .env("ACME_JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The peak resident memory of a process, in KiB.
fn peak_memory_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Starts `consentry serve` on embedded defaults in `folder`; returns it and its API port.
fn serve_in(folder: &std::path::Path) -> (Running, u16) {
    let mut child = Running(
        Command::new(BINARY)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .current_dir(folder)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap()).lines();
    while let Some(line) = stdout.next() {
        let line = line.unwrap();
        if let Some(address) = line.trim().strip_prefix("API (TLS):   https://") {
            let port = address.rsplit(':').next().unwrap().parse().unwrap();
            // Keep reading what the server prints, so it never writes into a closed pipe.
            std::thread::spawn(move || stdout.for_each(drop));
            return (child, port);
        }
    }
    panic!("consentry did not say where it listens");
}

#[tokio::test]
async fn a_100k_line_import_and_its_audit_export_run_in_bounded_memory() {
    let folder = tempfile::tempdir().unwrap();
    let (server, port) = serve_in(folder.path());
    let token = Command::new(BINARY)
        .args([
            "token",
            "--tenant",
            "demo",
            "--sub",
            "importer",
            "--scope",
            "consents:write consents:read audit:read",
        ])
        .current_dir(folder.path())
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let cert = std::fs::read(folder.path().join("consentry-data/tls/cert.pem")).unwrap();
    let client = crate::helpers::client(&cert, None);
    let url = format!("https://localhost:{port}/v1/consents/import");
    let import = |lines: u32| {
        // The file is made as it is sent: neither side ever holds it whole.
        // A long disclosure, as real ones are: about 1 KB a line, 100 MB in all.
        let disclosure = "By signing up you agree to receive recurring automated marketing texts from Demo. \
                          Consent is not a condition of purchase. Msg & data rates may apply. Reply STOP to end. "
            .repeat(5);
        let chunks = (0..lines).step_by(1000).map(move |start| {
            let mut chunk = String::new();
            if start == 0 {
                chunk.push_str("number,action,level,method,occurred_at,disclosure_text,not_condition_of_purchase\n");
            }
            for index in start..(start + 1000).min(lines) {
                let exchange = 200 + index / 10_000;
                let line = index % 10_000;
                chunk.push_str(&format!(
                    "+1415{exchange:03}{line:04},opt_in,express_written,web_form,2026-06-01T12:00:00Z,\"{}\",true\n",
                    disclosure.trim_end()
                ));
            }
            Ok::<_, std::io::Error>(chunk)
        });
        client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "text/csv")
            .timeout(Duration::from_secs(600))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
    };

    let warm: serde_json::Value = import(2000).await.unwrap().json().await.unwrap();
    assert_eq!(warm["recorded"], 2000);
    let before = peak_memory_kib(server.0.id());
    let result: serde_json::Value = import(100_000).await.unwrap().json().await.unwrap();
    assert_eq!(result["lines"], 100_000, "{result}");
    assert_eq!(result["recorded"], 98_000);
    assert_eq!(result["duplicates"], 2_000);
    assert_eq!(result["failed"], 0);
    let growth = peak_memory_kib(server.0.id()).saturating_sub(before);
    eprintln!("peak memory growth during a 100k-line import: {growth} KiB");
    // The upload is about 100 MB. The server's peak grows by SQLite's page cache (16 MiB a
    // connection) and little more; holding the upload would add all of it.
    assert!(growth < 48 * 1024, "peak memory grew by {growth} KiB");

    // The audit export of those 100,000 events streams: the server never holds it whole.
    let audit = |query: String| {
        client
            .get(format!(
                "https://localhost:{port}/v1/audit/consent-events{query}"
            ))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(600))
            .send()
    };
    let sequenced = std::time::Instant::now();
    loop {
        let last = audit("?after=99998".into())
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if last.lines().count() == 1 {
            break;
        }
        assert!(
            sequenced.elapsed() < Duration::from_secs(300),
            "the log never caught up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The first read brings the tables into SQLite's page cache (8 MiB on each of the pool's
    // four connections); a later read may run on a connection still cold and warm its cache
    // too. Once every connection it uses is warm, a read adds nothing: streaming holds no more
    // than a page of rows.
    let export = || async {
        let mut response = audit(String::new()).await.unwrap();
        let (mut bytes, mut rows) = (0usize, 0usize);
        while let Some(chunk) = response.chunk().await.unwrap() {
            bytes += chunk.len();
            rows += chunk.iter().filter(|&&b| b == b'\n').count();
        }
        assert_eq!(rows, 100_000);
        assert!(bytes > 100_000_000, "{bytes}");
        bytes
    };
    let before = peak_memory_kib(server.0.id());
    let bytes = export().await;
    let growth = peak_memory_kib(server.0.id()).saturating_sub(before);
    eprintln!("audit export 1 ({bytes} bytes): peak memory grew by {growth} KiB");
    assert!(growth < 80 * 1024, "peak memory grew by {growth} KiB");
    let warm = peak_memory_kib(server.0.id());
    let mut flat = false;
    for round in 2..=5 {
        let before = peak_memory_kib(server.0.id());
        export().await;
        let growth = peak_memory_kib(server.0.id()).saturating_sub(before);
        eprintln!("audit export {round}: peak memory grew by {growth} KiB");
        // Under load (other builds on the machine) the allocator's per-thread arenas warm
        // too, a few MiB for each export at first; a buffered export would grow by hundreds.
        if growth < 4 * 1024 {
            flat = true;
            break;
        }
    }
    let since_warm = peak_memory_kib(server.0.id()).saturating_sub(warm);
    assert!(
        flat,
        "every export grew the peak memory ({since_warm} KiB in all)"
    );
    assert!(
        since_warm < 32 * 1024,
        "{since_warm} KiB after the first export"
    );

    // Paging while events keep arriving neither skips nor repeats a row.
    let writer = {
        let (client, token) = (client.clone(), token.clone());
        let url = format!("https://localhost:{port}/v1/consents");
        tokio::spawn(async move {
            for index in 0..300 {
                let event = serde_json::json!({
                    "number": format!("+1415300{index:04}"), "action": "opt_out", "method": "keyword",
                });
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&event)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
            }
        })
    };
    let mut seen = std::collections::HashSet::new();
    let mut after = -1i64;
    let mut writing_done = false;
    loop {
        let page = audit(format!("?after={after}&limit=5000"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let page: Vec<serde_json::Value> = page
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for row in &page {
            let index = row["leaf_index"].as_i64().unwrap();
            assert!(index > after, "leaf {index} came after {after}");
            after = index;
            assert!(
                seen.insert(row["id"].as_str().unwrap().to_owned()),
                "repeated: {row}"
            );
        }
        if page.is_empty() {
            if writing_done {
                break;
            }
            if writer.is_finished() {
                // One more pass once the sequencer has taken the last events.
                writing_done = true;
                tokio::time::sleep(Duration::from_millis(600)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    writer.await.unwrap();
    assert_eq!(seen.len(), 100_300);
}

#[test]
fn serve_takes_the_database_from_the_command_line() {
    let folder = tempfile::tempdir().unwrap();
    let database = folder.path().join("elsewhere.db");
    let mut child = Running(
        Command::new(BINARY)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--database",
            ])
            .arg(format!("sqlite://{}", database.display()))
            .current_dir(folder.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let ready = stdout
        .lines()
        .any(|line| line.unwrap().contains("API (TLS)"));
    assert!(ready, "consentry did not start");
    assert!(database.exists(), "the database is where --database says");
    assert!(!folder.path().join("consentry-data/consentry.db").exists());
}

/// `[logging] format = "json"`: one JSON object a line on stderr, each line of a request
/// carrying the request id the answer gives in `X-Request-Id`, numbers masked, no body.
#[tokio::test]
async fn json_logs_carry_the_request_id_the_answer_gives() {
    let folder = tempfile::tempdir().unwrap();
    let config = folder.path().join("consentry.toml");
    std::fs::write(
        &config,
        "data_dir = \"data\"\n[logging]\nformat = \"json\"\n[jwt]\ndev_issuer = true\n\
         [[tenants]]\nid = \"demo\"\nsenders = [\"+12025550100\"]\nupstream = \"sandbox\"\n\
         purposes = [\"transactional\"]\n",
    )
    .unwrap();
    let mut child = Running(
        Command::new(BINARY)
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info,consentry::flow=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let port: u16 = loop {
        let line = stdout
            .next()
            .expect("the server says where it listens")
            .unwrap();
        if let Some(address) = line.trim().strip_prefix("API (TLS):   https://") {
            break address.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || stdout.for_each(drop));
    let (lines, received) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let token = Command::new(BINARY)
        .args(["token", "--config"])
        .arg(&config)
        .args([
            "--tenant",
            "demo",
            "--sub",
            "logs",
            "--scope",
            "messages:send",
        ])
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let cert = std::fs::read(folder.path().join("data/tls/cert.pem")).unwrap();
    let response = crate::helpers::client(&cert, None)
        .post(format!("https://localhost:{port}/v1/messages"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "to": "+14155550123", "from": "+12025550100",
            "body": "secret code 8812", "purpose": "transactional"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("req_"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let sent = loop {
        let line = received
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no 'message sent' line in {seen:#?}"));
        let value: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("not one JSON object a line: {line}"));
        assert!(
            !line.contains("4155550123") && !line.contains("8812"),
            "{line}"
        );
        if value["fields"]["message"] == "message sent" {
            break value;
        }
        seen.push(line);
    };
    assert_eq!(sent["span"]["id"], id.as_str(), "{sent}");
    assert_eq!(sent["fields"]["tenant"], "demo");
    drop(child);
}

/// The shipped systemd unit parses cleanly (`systemd-analyze verify`, which also fails on a
/// setting it does not know), with the binary this build made.
#[test]
fn the_systemd_unit_verifies() {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: not run");
        return;
    };
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/consentry.service"
    ))
    .unwrap()
    .replace("/usr/local/bin/consentry", BINARY);
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("consentry.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert!(
        !said.contains("consentry.service:"),
        "warnings about the unit: {said}"
    );
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .ok_or(())
}

/// `consentry consents import FILE` streams a file to a running instance and prints the
/// summary; in a pipe, nothing but the summary.
#[tokio::test]
async fn consents_import_streams_a_file_to_a_running_instance() {
    let folder = tempfile::tempdir().unwrap();
    let (_server, port) = serve_in(folder.path());
    let token = Command::new(BINARY)
        .args([
            "token",
            "--tenant",
            "demo",
            "--sub",
            "crm",
            "--scope",
            "consents:write",
        ])
        .current_dir(folder.path())
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let mut csv = String::from("number,action,method,occurred_at\n");
    for index in 0..2000 {
        csv.push_str(&format!(
            "+1415555{index:04},opt_in,web_form,2026-06-01T12:00:00Z\n"
        ));
    }
    let file = folder.path().join("contacts.csv");
    std::fs::write(&file, csv).unwrap();
    let output = Command::new(BINARY)
        .args(["consents", "import"])
        .arg(&file)
        .args(["--url", &format!("https://localhost:{port}"), "--cacert"])
        .arg(folder.path().join("consentry-data/tls/cert.pem"))
        .env("CONSENTRY_TOKEN", &token)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
    assert_eq!(summary["recorded"], 2000, "{summary}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");

    // A carrier's deactivation file for some of them, with --deactivations.
    let mut deactivations = String::from("number,deactivated_at,carrier\n");
    for index in 0..300 {
        deactivations.push_str(&format!("+1415555{index:04},2026-11-01,T-Mobile\n"));
    }
    let deactivation_file = folder.path().join("deactivations.csv");
    std::fs::write(&deactivation_file, deactivations).unwrap();
    let output = Command::new(BINARY)
        .args(["consents", "import", "--deactivations"])
        .arg(&deactivation_file)
        .args(["--url", &format!("https://localhost:{port}"), "--cacert"])
        .arg(folder.path().join("consentry-data/tls/cert.pem"))
        .env("CONSENTRY_TOKEN", &token)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}");
    let summary: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
    assert_eq!(summary["recorded"], 300, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");

    // A token without the scope: refused, with the API's reason.
    let refused = Command::new(BINARY)
        .args(["consents", "import"])
        .arg(&file)
        .args(["--url", &format!("https://localhost:{port}"), "--cacert"])
        .arg(folder.path().join("consentry-data/tls/cert.pem"))
        .env("CONSENTRY_TOKEN", "not-a-token")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("malformed_token"));
}
