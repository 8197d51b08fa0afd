//! The SMPP front, end to end: a real SMPP session (plain on loopback, or TLS) against a
//! running consentry, each `submit_sm` decided by the send flow and forwarded to the fake
//! gateway; and `smpplib`, an SMPP client nobody here wrote, through the same front.

use std::path::Path;
use std::time::Duration;

use rusmpp::decode::DecodeWithLength as _;
use rusmpp::encode::{Encode as _, Length as _};
use rusmpp::pdus::{BindTransceiver, DeliverSm, DeliverSmResp, SubmitSm};
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, InterfaceVersion, Npi, Ton};
use rusmpp::{Command, CommandStatus, Pdu};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::helpers::*;

const SYSTEM_ID: &str = "acme-app";
const PASSWORD: &str = "s3cret";
const OPTED_OUT: &str = "+14155550777";
/// An account of tw-shop, whose gateway (Twilio) reports delivery statuses.
const TW_SYSTEM_ID: &str = "tw-app";

/// The test configuration with an SMPP front for acme (`tls` as given), its account's
/// password hashed as `consentry smpp-password` would.
fn smpp_config(folder: &Path, gateway_url: &str, tls: bool) -> String {
    let hash = consentry::smpp::accounts::hash_password(PASSWORD, 100_000).unwrap();
    format!(
        "{}\n[smpp]\nlisten = \"127.0.0.1:0\"\ntls = {tls}\nreassembly_timeout_seconds = 2\n\
         [[smpp.accounts]]\nsystem_id = \"{SYSTEM_ID}\"\ntenant = \"acme\"\n\
         password_hash = \"{hash}\"\npurpose = \"transactional\"\n\
         [[smpp.accounts]]\nsystem_id = \"{TW_SYSTEM_ID}\"\ntenant = \"tw-shop\"\n\
         password_hash = \"{hash}\"\npurpose = \"transactional\"\n",
        test_config(folder, gateway_url)
    )
}

/// consentry with the SMPP front of [`smpp_config`] (its folder, kept by the caller), in front
/// of a fake gateway.
async fn front(tls: bool) -> (tempfile::TempDir, FakeGateway, TestApp) {
    let folder = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn_with(
        folder.path(),
        &smpp_config(folder.path(), &gateway.url(), tls),
    )
    .await;
    (folder, gateway, app)
}

/// The test configuration with an `smpp` upstream named `smsc` at `address` (binding as
/// `system_id` with `password`) and a tenant `sm-shop` sending through it from `sender`.
fn smsc_config(
    folder: &Path,
    gateway_url: &str,
    address: &str,
    system_id: &str,
    password: &str,
    sender: &str,
) -> String {
    std::fs::write(folder.join("smsc.secret"), password).unwrap();
    format!(
        "{}\n[[upstreams]]\nname = \"smsc\"\nkind = \"smpp\"\nurl = \"smpp://{address}\"\n\
         system_id = \"{system_id}\"\ncredential = {{ file = \"smsc.secret\" }}\nwindow = 20\n\
         connect_timeout_ms = 5000\nrequest_timeout_ms = 5000\n\n\
         [[tenants]]\nid = \"sm-shop\"\nsenders = [\"{sender}\"]\nupstream = \"smsc\"\n",
        test_config(folder, gateway_url),
    )
}

async fn opt_out(app: &TestApp, number: &str) {
    let token = app.token("acme", "consents:write");
    let event = json!({ "number": number, "action": "opt_out", "method": "keyword" });
    assert_eq!(app.consent(&token, &event).await.status(), 201);
}

/// A minimal SMPP client: PDUs out, PDUs in, with the framing the front reads.
struct Client<S> {
    stream: S,
    sequence: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(stream: S) -> Self {
        Client {
            stream,
            sequence: 0,
        }
    }

    async fn send(&mut self, pdu: impl Into<Pdu>) -> u32 {
        self.sequence += 1;
        let command = Command::new(CommandStatus::EsmeRok, self.sequence, pdu);
        let mut bytes = vec![0u8; 4 + command.length()];
        bytes[..4].copy_from_slice(&(4 + command.length() as u32).to_be_bytes());
        command.encode(&mut bytes[4..]);
        self.stream.write_all(&bytes).await.unwrap();
        self.sequence
    }

    /// The next PDU, or `None` once the front has closed the session.
    async fn read(&mut self) -> Option<Command> {
        let mut length = [0u8; 4];
        let read =
            tokio::time::timeout(Duration::from_secs(20), self.stream.read_exact(&mut length))
                .await
                .expect("the front answered in time");
        if read.is_err() {
            return None;
        }
        let length = u32::from_be_bytes(length) as usize;
        let mut frame = bytes::BytesMut::zeroed(length - 4);
        self.stream.read_exact(&mut frame).await.unwrap();
        let size = frame.len();
        Some(Command::decode(&mut frame, size).unwrap().0)
    }

    /// Answers the front's PDU number `sequence`.
    async fn answer(&mut self, sequence: u32, pdu: impl Into<Pdu>) {
        let command = Command::new(CommandStatus::EsmeRok, sequence, pdu);
        let mut bytes = vec![0u8; 4 + command.length()];
        bytes[..4].copy_from_slice(&(4 + command.length() as u32).to_be_bytes());
        command.encode(&mut bytes[4..]);
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// Reads until the front delivers a `deliver_sm`, answers it, and returns it.
    async fn delivered(&mut self) -> DeliverSm {
        loop {
            let command = self
                .read()
                .await
                .expect("a deliver_sm before the session closed");
            if let Some(Pdu::DeliverSm(pdu)) = command.pdu() {
                let pdu = pdu.clone();
                self.answer(command.sequence_number(), DeliverSmResp::default())
                    .await;
                return pdu;
            }
        }
    }

    /// Sends `pdu` and reads until its answer.
    async fn call(&mut self, pdu: impl Into<Pdu>) -> Command {
        let sequence = self.send(pdu).await;
        loop {
            let answer = self
                .read()
                .await
                .expect("an answer before the session closed");
            if answer.sequence_number() == sequence {
                return answer;
            }
        }
    }

    async fn bind(&mut self, password: &str) -> Command {
        self.bind_as(SYSTEM_ID, password).await
    }

    async fn bind_as(&mut self, system_id: &str, password: &str) -> Command {
        self.call(
            BindTransceiver::builder()
                .system_id(c_string(system_id))
                .password(c_string(password))
                .system_type(c_string(""))
                .interface_version(InterfaceVersion::Smpp3_4)
                .build(),
        )
        .await
    }
}

fn c_string<const MIN: usize, const MAX: usize>(text: &str) -> COctetString<MIN, MAX> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    COctetString::from_vec(bytes).unwrap()
}

/// A `submit_sm` from acme's sender to `to`, its octets in `data_coding`, with a user data
/// header when `udh` is given.
fn submit(to: &str, data_coding: u8, udh: Option<&[u8]>, text: &[u8]) -> SubmitSm {
    let mut octets = udh.map(<[u8]>::to_vec).unwrap_or_default();
    octets.extend_from_slice(text);
    let (to_ton, to) = match to.strip_prefix('+') {
        Some(digits) => (Ton::International, digits),
        None => (Ton::Unknown, to),
    };
    SubmitSm::builder()
        .source_addr_ton(Ton::International)
        .source_addr_npi(Npi::Isdn)
        .source_addr(c_string(ACME_SENDER.trim_start_matches('+')))
        .dest_addr_ton(to_ton)
        .dest_addr_npi(Npi::Isdn)
        .destination_addr(c_string(to))
        .esm_class(EsmClass::from(if udh.is_some() { 0x40 } else { 0x00 }))
        .data_coding(DataCoding::from(data_coding))
        .short_message(OctetString::from_vec(octets).unwrap())
        .build()
}

fn code_of(command: &Command) -> u32 {
    u32::from(command.status())
}

fn message_id(command: &Command) -> String {
    match command.pdu() {
        Some(Pdu::SubmitSmResp(answer)) => answer.message_id().as_str().to_owned(),
        other => panic!("not a submit_sm_resp: {other:?}"),
    }
}

#[tokio::test]
async fn an_smpp_application_binds_and_each_submit_is_decided_by_the_send_flow() {
    let (_folder, gateway, app) = front(false).await;
    opt_out(&app, OPTED_OUT).await;
    let address = app.smpp.expect("the SMPP front listens");

    // A wrong password: refused, and the session closed.
    let mut client = Client::new(tokio::net::TcpStream::connect(address).await.unwrap());
    let refused = client.bind("wrong").await;
    assert_eq!(code_of(&refused), 0x0D, "ESME_RBINDFAIL");
    assert!(client.read().await.is_none(), "closed after a refused bind");

    let mut client = Client::new(tokio::net::TcpStream::connect(address).await.unwrap());
    let early = client
        .call(submit("+14155550123", 0, None, b"too early"))
        .await;
    assert_eq!(code_of(&early), 0x04, "ESME_RINVBNDSTS before a bind");
    let bound = client.bind(PASSWORD).await;
    assert_eq!(code_of(&bound), 0);
    match bound.pdu() {
        Some(Pdu::BindTransceiverResp(answer)) => {
            assert_eq!(answer.system_id.as_str(), "consentry")
        }
        other => panic!("not a bind_transceiver_resp: {other:?}"),
    }
    let again = client.bind(PASSWORD).await;
    assert_eq!(code_of(&again), 0x05, "ESME_RALYBND");
    let alive = client.call(Pdu::EnquireLink).await;
    assert!(matches!(alive.pdu(), Some(Pdu::EnquireLinkResp)));

    // GSM 7-bit, unpacked, with an escape: the euro sign.
    let mut text = b"Your code is 1234 ".to_vec();
    text.extend_from_slice(&[0x1B, 0x65]);
    let sent = client.call(submit("+14155550123", 0x00, None, &text)).await;
    assert_eq!(code_of(&sent), 0, "ESME_ROK");
    let id = message_id(&sent);
    assert!(id.starts_with("msg_"), "consentry's id: {id}");
    let requests = gateway.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body["to"], "+14155550123");
    assert_eq!(requests[0].body["body"], "Your code is 1234 €");

    // The same record as an API send: readable through the API, decided, sent.
    let token = app.token("acme", "messages:read");
    let record = status_of(&app, &token, &id).await;
    assert_eq!(record["decision"], "allowed", "{record}");
    assert_eq!(record["purpose"], "transactional", "the account's purpose");

    // Denials and bad input each have their status; nothing reaches the gateway.
    let denied = client.call(submit(OPTED_OUT, 0x00, None, b"hello")).await;
    assert_eq!(code_of(&denied), 0x0401, "opted_out");
    let binary = client
        .call(submit("+14155550123", 0x04, None, b"\x01\x02"))
        .await;
    assert_eq!(code_of(&binary), 0x0104, "ESME_RINVDCS: binary is not text");
    let nowhere = client
        .call(submit("not-a-number", 0x00, None, b"hello"))
        .await;
    assert_eq!(code_of(&nowhere), 0x0B, "ESME_RINVDSTADR");
    assert_eq!(gateway.requests().len(), 1);

    // A concatenated UCS-2 message, all parts sent before any answer is read (a window),
    // split so that an emoji's surrogate pair straddles two parts: decided once, as a whole.
    let whole = format!("{}🎉 and more", "Привет, это consentry. ".repeat(3));
    let units: Vec<u8> = whole.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let emoji_at = whole
        .encode_utf16()
        .position(|unit| (0xD800..0xDC00).contains(&unit))
        .unwrap();
    let parts = [&units[..(emoji_at + 1) * 2], &units[(emoji_at + 1) * 2..]];
    let mut sequences = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        let udh = [0x05, 0x00, 0x03, 0x2A, 2, index as u8 + 1];
        sequences.push(
            client
                .send(submit("+14155550124", 0x08, Some(&udh), part))
                .await,
        );
    }
    let mut ids = Vec::new();
    for _ in &sequences {
        let answer = client.read().await.unwrap();
        assert!(sequences.contains(&answer.sequence_number()));
        assert_eq!(code_of(&answer), 0);
        ids.push(message_id(&answer));
    }
    assert_eq!(ids[0], ids[1], "one message, one id for every part");
    let requests = gateway.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].body["body"], whole.as_str());

    // A part whose other part never comes is refused once the reassembly time is up.
    let udh = [0x05, 0x00, 0x03, 0x2B, 2, 1];
    let lonely = client
        .call(submit("+14155550125", 0x00, Some(&udh), b"half"))
        .await;
    assert_eq!(code_of(&lonely), 0x0420, "an incomplete message");
    assert_eq!(gateway.requests().len(), 2);

    let unbound = client.call(Pdu::Unbind).await;
    assert!(matches!(unbound.pdu(), Some(Pdu::UnbindResp)));
    assert!(client.read().await.is_none(), "closed after unbind");
    app.stop().await;
}

#[tokio::test]
async fn the_smpp_front_speaks_tls_with_the_apis_certificate() {
    let (_folder, gateway, app) = front(true).await;
    let address = app.smpp.expect("the SMPP front listens");
    let pem = std::fs::read(app.data_dir().join("tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let mut client = Client::new(stream);
    assert_eq!(code_of(&client.bind(PASSWORD).await), 0);
    let sent = client
        .call(submit("+14155550123", 0x00, None, b"over TLS"))
        .await;
    assert_eq!(code_of(&sent), 0);
    assert_eq!(gateway.requests()[0].body["body"], "over TLS");

    // Plain SMPP on the TLS port gets no session: at most a TLS alert, then the end.
    let mut plain = Client::new(tokio::net::TcpStream::connect(address).await.unwrap());
    plain.send(Pdu::EnquireLink).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        plain.stream.read_to_end(&mut answer),
    )
    .await
    .expect("closed");
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "not an SMPP answer: {answer:02x?}"
    );
    app.stop().await;
}

/// `smpplib` (PyPI), an SMPP client nobody here wrote, binds and submits through the front: a
/// short message, a long UCS-2 message it splits itself, and one to an opted-out number.
/// `.ci/run` installs it beside the SDKs and names that Python in `CONSENTRY_SDK_PYTHON`.
#[tokio::test]
async fn smpplib_submits_through_the_smpp_front() {
    let Ok(python) = std::env::var("CONSENTRY_SDK_PYTHON") else {
        eprintln!(
            "CONSENTRY_SDK_PYTHON is not set: the smpplib test did not run (.ci/run sets it)"
        );
        return;
    };
    let (_folder, gateway, app) = front(false).await;
    opt_out(&app, OPTED_OUT).await;
    // A recipient's STOP through the gateway, before smpplib binds: it waits in the outbox.
    let response = app
        .gw_reply("g-smpplib", "+14155550199", ACME_SENDER, "STOP")
        .await;
    assert_eq!(response.status(), 200);
    let address = app.smpp.unwrap();
    let long = "Ваш заказ отправлен. Спасибо, что выбрали нас! Отслеживание: ".repeat(2);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smpp/check_smpplib.py");
    let mut command = std::process::Command::new(python);
    command
        .arg(script)
        .env("SMPP_PORT", address.port().to_string())
        .env("SMPP_SYSTEM_ID", SYSTEM_ID)
        .env("SMPP_PASSWORD", PASSWORD)
        .env("SMPP_FROM", ACME_SENDER.trim_start_matches('+'))
        .env("SMPP_TO", "14155550123")
        .env("SMPP_OPTED_OUT", OPTED_OUT.trim_start_matches('+'))
        .env("SMPP_LONG", &long);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("short: 0x0 msg_"), "{stdout}");
    assert!(stdout.contains("long: 0x0 msg_"), "{stdout}");
    assert!(stdout.contains("opted out: 0x401"), "{stdout}");
    assert!(stdout.contains("mo: STOP from 14155550199"), "{stdout}");
    let bodies: Vec<serde_json::Value> = gateway
        .requests()
        .iter()
        .filter(|request| request.body["to"] == "+14155550123")
        .map(|request| request.body["body"].clone())
        .collect();
    assert_eq!(
        bodies,
        vec![json!("Hello from smpplib"), json!(long)],
        "the short and the long message, each once"
    );
    app.stop().await;
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A reply comes back to the application over SMPP: a STOP (through the gateway's webhook)
/// while no session is bound waits in the outbox, reaches the session that binds next as a
/// `deliver_sm`, and has already opted the number out: the next submit to it is refused.
#[tokio::test]
async fn a_stop_reaches_the_bound_application_as_a_deliver_sm_and_opts_out() {
    let (_folder, gateway, app) = front(false).await;
    let recipient = "+14155550188";
    let response = app.gw_reply("g-77", recipient, ACME_SENDER, "STOP").await;
    assert_eq!(response.status(), 200);
    // Nobody is bound yet: the delivery waits (and is retried) in the outbox.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut client = Client::new(
        tokio::net::TcpStream::connect(app.smpp.unwrap())
            .await
            .unwrap(),
    );
    assert_eq!(code_of(&client.bind(PASSWORD).await), 0);
    let mo = client.delivered().await;
    assert_eq!(mo.short_message().as_ref(), b"STOP");
    assert_eq!(mo.source_addr.as_str(), recipient.trim_start_matches('+'));
    assert_eq!(
        mo.destination_addr.as_str(),
        ACME_SENDER.trim_start_matches('+')
    );
    assert_eq!(u8::from(mo.esm_class), 0x00, "a message, not a receipt");

    let refused = client
        .call(submit(recipient, 0x00, None, b"one more offer"))
        .await;
    assert_eq!(code_of(&refused), 0x0401, "opted out by the STOP");
    // What reached the recipient is consentry's own confirmation of the STOP, not the offer.
    assert!(
        gateway
            .requests()
            .iter()
            .all(|request| request.body["body"] != "one more offer")
    );
    // Answered: the outbox does not deliver it again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app
        .count(
            "SELECT COUNT(*) FROM webhook_outbox WHERE format = 'smpp' AND delivered_at_us IS NULL",
        )
        .await
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the delivery was never marked done"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

/// `registered_delivery` asks for a receipt: when the gateway (Twilio) reports the message
/// delivered, the account's session gets a `deliver_sm` receipt naming consentry's id.
#[tokio::test]
async fn a_delivery_receipt_reaches_the_account_that_asked_for_it() {
    let (_folder, _gateway, app) = front(false).await;
    let mut client = Client::new(
        tokio::net::TcpStream::connect(app.smpp.unwrap())
            .await
            .unwrap(),
    );
    assert_eq!(code_of(&client.bind_as(TW_SYSTEM_ID, PASSWORD).await), 0);
    let mut asked = submit("+14155550123", 0x00, None, b"your parcel is on its way");
    asked.source_addr = c_string(TW_SENDER.trim_start_matches('+'));
    asked.registered_delivery = rusmpp::values::RegisteredDelivery::from(0x01);
    let sent = client.call(asked).await;
    assert_eq!(code_of(&sent), 0);
    let id = message_id(&sent);
    let token = app.token("tw-shop", "messages:read");
    let record = status_of(&app, &token, &id).await;
    let gateway_id = record["upstream_message_id"].as_str().unwrap().to_owned();
    let report = [
        ("MessageSid", gateway_id.as_str()),
        ("MessageStatus", "delivered"),
        ("AccountSid", "AC00000000000000000000000000000001"),
    ];
    assert_eq!(app.twilio_webhook(&report, None).await.status(), 200);
    let receipt = client.delivered().await;
    assert_eq!(
        u8::from(receipt.esm_class),
        0x04,
        "an SMSC delivery receipt"
    );
    let text = String::from_utf8(receipt.short_message().as_ref().to_vec()).unwrap();
    assert!(
        text.starts_with(&format!("id:{id} sub:001 dlvrd:001 ")),
        "{text}"
    );
    assert!(text.contains(" stat:DELIVRD err:000"), "{text}");
    app.stop().await;
}

/// Processes a test started, killed when it ends (passed or not).
struct Processes(Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kannel (Debian's `kannel`: bearerbox and smsbox), software nobody here wrote, binds to the
/// SMPP front as its SMSC (`tests/smpp/kannel.conf.template`) and sends through it: a short
/// message, a long one it splits into parts (reassembled and sent once), and one to an
/// opted-out number, which Kannel takes as a final rejection. Skipped where `bearerbox` is not
/// installed (`.ci/run` installs it).
#[tokio::test]
async fn kannel_binds_to_the_smpp_front_and_sends_through_it() {
    if std::process::Command::new("bearerbox")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("bearerbox is not installed: the Kannel test did not run (.ci/run installs it)");
        return;
    }
    let (folder, gateway, app) = front(false).await;
    opt_out(&app, OPTED_OUT).await;
    let kannel_dir = folder.path().join("kannel");
    std::fs::create_dir_all(&kannel_dir).unwrap();
    let (admin, sendsms) = (free_port(), free_port());
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/smpp/kannel.conf.template"
    ))
    .unwrap();
    let config = template
        .replace("{SMPP_PORT}", &app.smpp.unwrap().port().to_string())
        .replace("{ADMIN_PORT}", &admin.to_string())
        .replace("{SMSBOX_PORT}", &free_port().to_string())
        .replace("{SENDSMS_PORT}", &sendsms.to_string())
        .replace("{DIR}", kannel_dir.to_str().unwrap())
        .replace("{SYSTEM_ID}", SYSTEM_ID)
        .replace("{PASSWORD}", PASSWORD);
    let config_path = kannel_dir.join("kannel.conf");
    std::fs::write(&config_path, config).unwrap();
    let start = |program: &str| {
        std::process::Command::new(program)
            .args(["-v", "1"])
            .arg(&config_path)
            .stdout(std::fs::File::create(kannel_dir.join(format!("{program}.out"))).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut processes = Processes(vec![start("bearerbox")]);
    let http = reqwest::Client::new();
    let status_url = format!("http://127.0.0.1:{admin}/status.txt?password=admin-secret");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = match http.get(&status_url).send().await {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if status
            .lines()
            .any(|line| line.contains("consentry") && line.contains("online"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Kannel never bound to the SMPP front: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    processes.0.push(start("smsbox"));
    let send = |to: &'static str, text: String| {
        let http = http.clone();
        async move {
            let url = format!("http://127.0.0.1:{sendsms}/cgi-bin/sendsms");
            let query = [
                ("username", "app"),
                ("password", "app-secret"),
                ("from", ACME_SENDER),
                ("to", to),
                ("text", text.as_str()),
            ];
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                // Refused until smsbox listens; any answer is final (no second send).
                match http.get(&url).query(&query).send().await {
                    Ok(answer) => return answer.text().await.unwrap(),
                    Err(error) => {
                        assert!(std::time::Instant::now() < deadline, "smsbox: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    };
    let long = "This long message goes through Kannel to consentry, longer than one SMS of 160 \
                GSM characters, so Kannel splits it into parts with a concatenation header: €{} ok."
        .to_owned();
    assert!(long.chars().count() > 160);
    for (to, text) in [
        ("+14155550123", "Hello from Kannel".to_owned()),
        ("+14155550123", long.clone()),
        (OPTED_OUT, "An offer".to_owned()),
    ] {
        let answer = send(to, text).await;
        assert!(answer.contains("Accepted for delivery"), "smsbox: {answer}");
    }
    let access_log = kannel_dir.join("access.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while gateway.requests().len() < 2
        || !std::fs::read_to_string(&access_log)
            .unwrap_or_default()
            .contains("REJECTED Send SMS")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "Kannel's messages did not all come through: {:?}\n{}",
            gateway
                .requests()
                .iter()
                .map(|r| r.body.clone())
                .collect::<Vec<_>>(),
            std::fs::read_to_string(&access_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut bodies: Vec<String> = gateway
        .requests()
        .iter()
        .map(|request| request.body["body"].as_str().unwrap().to_owned())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec!["Hello from Kannel".to_owned(), long],
        "each once, whole"
    );
    assert!(
        gateway
            .requests()
            .iter()
            .all(|request| request.body["to"] == "+14155550123"),
        "the opted-out number was refused (0x0401), not forwarded"
    );
    drop(processes);
    app.stop().await;
}

/// A fake SMSC on a local port (a real SMPP server): takes one bind at a time (of
/// `consentry` / `smsc-pw`), answers each `submit_sm` with `smsc-N` and a delivery receipt for
/// it, delivers the recipients' messages the test gives it, and keeps what it saw.
struct FakeSmsc {
    address: std::net::SocketAddr,
    submits: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
    /// The statuses of consentry's `deliver_sm_resp`, in order.
    acknowledged: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    binds: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    replies: tokio::sync::mpsc::UnboundedSender<(String, String, String)>,
    /// Ends the session being served (the next bind is served again).
    drop_session: std::sync::Arc<tokio::sync::Notify>,
}

impl FakeSmsc {
    async fn start() -> FakeSmsc {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let submits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let binds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let drop_session = std::sync::Arc::new(tokio::sync::Notify::new());
        let (replies, mut to_reply) =
            tokio::sync::mpsc::unbounded_channel::<(String, String, String)>();
        let (seen, acks, bound, dropping) = (
            submits.clone(),
            acknowledged.clone(),
            binds.clone(),
            drop_session.clone(),
        );
        tokio::spawn(async move {
            let mut counter = 0u32;
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let mut smsc = Client::new(stream);
                let Some(bind) = smsc.read().await else {
                    continue;
                };
                let ok = matches!(bind.pdu(), Some(Pdu::BindTransceiver(b))
                    if b.system_id.as_str() == "consentry" && b.password.as_str() == "smsc-pw");
                let status = if ok {
                    CommandStatus::EsmeRok
                } else {
                    CommandStatus::EsmeRbindfail
                };
                let answer = Command::new(
                    status,
                    bind.sequence_number(),
                    rusmpp::pdus::BindTransceiverResp::new(c_string("fake-smsc"), None),
                );
                smsc.write(&answer).await;
                if !ok {
                    continue;
                }
                bound.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                loop {
                    tokio::select! {
                        command = smsc.read() => {
                            let Some(command) = command else { break };
                            match command.pdu() {
                                Some(Pdu::SubmitSm(submit)) => {
                                    counter += 1;
                                    let id = format!("smsc-{counter}");
                                    let text = String::from_utf8_lossy(submit.short_message().as_ref()).into_owned();
                                    seen.lock().unwrap().push((
                                        submit.destination_addr.as_str().to_owned(),
                                        submit.source_addr.as_str().to_owned(),
                                        text,
                                    ));
                                    smsc.answer(command.sequence_number(), rusmpp::pdus::SubmitSmResp::new(c_string(&id), Vec::new())).await;
                                    let receipt = consentry::smpp::deliver::receipt(
                                        &id,
                                        &format!("+{}", submit.destination_addr.as_str()),
                                        &format!("+{}", submit.source_addr.as_str()),
                                        consentry::smpp::deliver::Final::Delivered,
                                        None,
                                        "2611181800",
                                    )
                                    .unwrap();
                                    smsc.send(receipt).await;
                                }
                                Some(Pdu::DeliverSmResp(_)) => {
                                    acks.lock().unwrap().push(u32::from(command.status()));
                                }
                                Some(Pdu::EnquireLink) => {
                                    smsc.answer(command.sequence_number(), Pdu::EnquireLinkResp).await;
                                }
                                Some(Pdu::Unbind) => {
                                    smsc.answer(command.sequence_number(), Pdu::UnbindResp).await;
                                    break;
                                }
                                _ => {}
                            }
                        }
                        Some((from, to, text)) = to_reply.recv() => {
                            smsc.send(consentry::smpp::deliver::mo(&from, &to, &text).unwrap()).await;
                        }
                        () = dropping.notified() => break,
                    }
                }
            }
        });
        FakeSmsc {
            address,
            submits,
            acknowledged,
            binds,
            replies,
            drop_session,
        }
    }

    fn binds(&self) -> usize {
        self.binds.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn write(&mut self, command: &Command) {
        let mut bytes = vec![0u8; 4 + command.length()];
        bytes[..4].copy_from_slice(&(4 + command.length() as u32).to_be_bytes());
        command.encode(&mut bytes[4..]);
        let _ = self.stream.write_all(&bytes).await;
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// consentry as an ESME: an `smpp` upstream binds to the SMSC, a permitted message goes out
/// as `submit_sm` and keeps the SMSC's id, the receipt marks it delivered, a recipient's STOP
/// delivered by the SMSC opts the number out (and is acknowledged once recorded), and a lost
/// connection is bound again.
#[tokio::test]
async fn an_smpp_upstream_sends_through_an_smsc_and_hears_its_receipts_and_replies() {
    let folder = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let smsc = FakeSmsc::start().await;
    let sender = "+12025550188";
    let address = smsc.address.to_string();
    let config = smsc_config(
        folder.path(),
        &gateway.url(),
        &address,
        "consentry",
        "smsc-pw",
        sender,
    );
    let app = TestApp::spawn_with(folder.path(), &config).await;
    eventually("consentry bound to the SMSC", || smsc.binds() == 1).await;
    let token = app.token("sm-shop", "messages:send messages:read");
    let recipient = "+14155550123";
    let message = json!({ "to": recipient, "from": sender, "body": "Votre code : 1234 €", "purpose": "transactional" });
    let response = app.send(&token, &message).await;
    assert_eq!(response.status(), 201);
    let sent: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        sent["upstream"]["message_id"], "smsc-1",
        "the SMSC's id is kept"
    );
    assert_eq!(
        smsc.submits.lock().unwrap()[0],
        (
            "14155550123".to_owned(),
            "12025550188".to_owned(),
            // GSM 7-bit: the euro sign is escape 0x1B 0x65.
            String::from_utf8_lossy(b"Votre code : 1234 \x1b\x65").into_owned()
        )
    );
    let id = sent["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &token, &id, "delivered").await;

    // A STOP through the SMSC: recorded, acknowledged, confirmed, and it blocks the next send.
    smsc.replies
        .send((recipient.to_owned(), sender.to_owned(), "STOP".to_owned()))
        .unwrap();
    eventually("the STOP acknowledged", || {
        smsc.acknowledged.lock().unwrap().len() >= 2
    })
    .await;
    eventually("the confirmation went out through the SMSC", || {
        smsc.submits.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(
        smsc.acknowledged.lock().unwrap()[..2],
        [0, 0],
        "receipt and STOP, ESME_ROK"
    );
    let denied = app.send(&token, &message).await;
    assert_eq!(error_code(denied).await, "opted_out");

    // The SMSC drops the session: consentry binds again and sends on.
    smsc.drop_session.notify_one();
    eventually("bound again", || smsc.binds() == 2).await;
    let other = json!({ "to": "+14155550124", "from": sender, "body": "again", "purpose": "transactional" });
    assert_eq!(app.send(&token, &other).await.status(), 201);
    assert_eq!(
        gateway.requests().len(),
        0,
        "nothing went through the HTTP gateway"
    );
    app.stop().await;
}

/// consentry's SMPP upstream against an SMSC whose SMPP side nobody here wrote: the npm
/// package `smpp` (node-smpp) under `tests/smpp/smsc_sim.js`, which only decides its answers
/// (ids, receipts, recipients' messages on request). A message goes out and keeps the SMSC's
/// id, its receipt marks it delivered, a STOP from the SMSC opts the number out. Skipped
/// where `npm ci --prefix tests/smpp` has not run (`.ci/run` runs it).
#[tokio::test]
async fn the_smpp_upstream_works_with_an_smsc_built_on_node_smpp() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smpp");
    if !Path::new(dir).join("node_modules/smpp").exists() {
        eprintln!(
            "tests/smpp/node_modules is missing: the node-smpp SMSC test did not run (.ci/run installs it)"
        );
        return;
    }
    let mut simulator = std::process::Command::new("node")
        .arg(format!("{dir}/smsc_sim.js"))
        .args([
            "--port",
            "0",
            "--http-port",
            "0",
            "--system-id",
            "upstream",
            "--password",
            "s3cret",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node runs");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(simulator.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    let _simulator = Processes(vec![simulator]);
    let port_of = |name: &str| -> u16 {
        ready
            .split_whitespace()
            .find_map(|part| part.strip_prefix(name))
            .and_then(|address| address.rsplit(':').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("not ready: {ready}"))
    };
    let (smpp_port, control) = (port_of("smpp="), port_of("http="));
    let control = format!("http://127.0.0.1:{control}");

    let folder = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let sender = "+12025550188";
    let address = format!("127.0.0.1:{smpp_port}");
    let config = smsc_config(
        folder.path(),
        &gateway.url(),
        &address,
        "upstream",
        "s3cret",
        sender,
    );
    let app = TestApp::spawn_with(folder.path(), &config).await;
    let token = app.token("sm-shop", "messages:send messages:read");
    let recipient = "+14155550123";
    let message = json!({ "to": recipient, "from": sender, "body": "Привет, ваш код 1234", "purpose": "transactional" });
    let response = app.send(&token, &message).await;
    assert_eq!(response.status(), 201);
    let sent: serde_json::Value = response.json().await.unwrap();
    let smsc_id = sent["upstream"]["message_id"].as_str().unwrap().to_owned();
    assert_eq!(smsc_id.len(), 16, "the SMSC's hex id: {smsc_id}");
    let http = reqwest::Client::new();
    let submitted: serde_json::Value = http
        .get(format!("{control}/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = &submitted.as_array().unwrap()[0];
    assert_eq!(first["text"], "Привет, ваш код 1234", "{first}");
    assert_eq!(first["data_coding"], 8, "UCS-2: {first}");
    let id = sent["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &token, &id, "delivered").await;

    let mo: serde_json::Value = http
        .post(format!("{control}/mo"))
        .json(&json!({ "source_addr": "14155550123", "destination_addr": "12025550188", "text": "STOP" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mo["statuses"], json!([0]), "recorded, then ESME_ROK: {mo}");
    let denied = app.send(&token, &message).await;
    assert_eq!(error_code(denied).await, "opted_out");
    app.stop().await;
}

/// With `when_paced = "throttle"`, a submit over its upstream's pace is answered
/// `ESME_RTHROTTLED` and nothing is recorded or sent: the ESME sends it again later, as an
/// SMSC's own limit would ask. (By default it is accepted and queued, as the HTTP API does.)
#[tokio::test]
async fn a_submit_over_its_pace_is_throttled_when_so_configured() {
    let folder = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let hash = consentry::smpp::accounts::hash_password(PASSWORD, 100_000).unwrap();
    let sender = "+12025550199";
    let config = format!(
        "{}\n[[upstreams]]\nname = \"slow\"\nkind = \"http-json\"\nurl = \"{}\"\n\
         credential = {{ file = \"gateway.secret\" }}\nrate = {{ per_minute = 1 }}\n\n\
         [[tenants]]\nid = \"slow-shop\"\nsenders = [\"{sender}\"]\nupstream = \"slow\"\n\n\
         [smpp]\nlisten = \"127.0.0.1:0\"\ntls = false\nwhen_paced = \"throttle\"\n\
         [[smpp.accounts]]\nsystem_id = \"{SYSTEM_ID}\"\ntenant = \"slow-shop\"\n\
         password_hash = \"{hash}\"\npurpose = \"transactional\"\n",
        test_config(folder.path(), &gateway.url()),
        gateway.url()
    );
    let app = TestApp::spawn_with(folder.path(), &config).await;
    let mut client = Client::new(
        tokio::net::TcpStream::connect(app.smpp.unwrap())
            .await
            .unwrap(),
    );
    assert_eq!(code_of(&client.bind(PASSWORD).await), 0);
    let mut first = submit("+14155550123", 0x00, None, b"first");
    first.source_addr = c_string(sender.trim_start_matches('+'));
    assert_eq!(code_of(&client.call(first).await), 0, "within the pace");
    let mut second = submit("+14155550124", 0x00, None, b"second");
    second.source_addr = c_string(sender.trim_start_matches('+'));
    assert_eq!(
        code_of(&client.call(second).await),
        0x58,
        "ESME_RTHROTTLED over the pace"
    );
    assert_eq!(gateway.requests().len(), 1);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM messages WHERE tenant = 'slow-shop'")
            .await,
        1,
        "the throttled submit left no record"
    );
    app.stop().await;
}
