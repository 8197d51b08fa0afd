//! A fast fake SMSC for `bench/smpp.sh`: accepts any bind, answers every `submit_sm` at once
//! with a message id (`smsc-N`), answers `enquire_link` and `unbind`, and counts what it
//! took. `GET` on the count port (plain HTTP) answers the count, for the bench to read.
//!
//! Usage: fake_smsc SMPP_ADDRESS COUNT_ADDRESS   (e.g. 127.0.0.1:12796 127.0.0.1:18096)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use consentry::smpp::{pdu, wire};
use rusmpp::pdus::{BindTransceiverResp, BindTransmitterResp, SubmitSmResp};
use rusmpp::types::COctetString;
use rusmpp::{Command, CommandStatus, Pdu};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn c_string(text: &str) -> COctetString<1, 65> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    COctetString::from_vec(bytes).expect("an SMPP C string")
}

async fn session(stream: tokio::net::TcpStream, taken: Arc<AtomicU64>) {
    stream.set_nodelay(true).ok();
    let (mut reader, mut writer) = stream.into_split();
    let mut out = BytesMut::new();
    loop {
        let Ok(Some(frame)) = wire::read_frame(&mut reader).await else {
            return;
        };
        let Some(command) = pdu::decode(frame) else {
            return;
        };
        let number = command.sequence_number();
        let ok = CommandStatus::EsmeRok;
        let system_id = || COctetString::from_static_slice(b"fake-smsc\0").expect("a C string");
        let answer = match command.pdu() {
            Some(Pdu::BindTransceiver(_)) => {
                Command::new(ok, number, BindTransceiverResp::new(system_id(), None))
            }
            Some(Pdu::BindTransmitter(_)) => {
                Command::new(ok, number, BindTransmitterResp::new(system_id(), None))
            }
            Some(Pdu::SubmitSm(_)) => {
                let n = taken.fetch_add(1, Ordering::Relaxed) + 1;
                Command::new(
                    ok,
                    number,
                    SubmitSmResp::new(c_string(&format!("smsc-{n}")), Vec::new()),
                )
            }
            Some(Pdu::EnquireLink) => Command::new(ok, number, Pdu::EnquireLinkResp),
            Some(Pdu::Unbind) => Command::new(ok, number, Pdu::UnbindResp),
            _ => continue,
        };
        pdu::encode_into(&answer, &mut out);
        if writer.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(smpp), Some(count)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: fake_smsc SMPP_ADDRESS COUNT_ADDRESS");
        std::process::exit(2);
    };
    let taken = Arc::new(AtomicU64::new(0));
    let counter = tokio::net::TcpListener::bind(count)
        .await
        .expect("count port");
    let seen = taken.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = counter.accept().await else {
                continue;
            };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let body = seen.load(Ordering::Relaxed).to_string();
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    let listener = tokio::net::TcpListener::bind(smpp)
        .await
        .expect("SMPP port");
    eprintln!("fake_smsc: SMPP on {smpp}, count on http://{count}/");
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(session(stream, taken.clone()));
        }
    }
}
