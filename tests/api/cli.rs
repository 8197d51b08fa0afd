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
            .env("RUST_LOG", "info")
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
