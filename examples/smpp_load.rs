//! A load generator for consentry's SMPP front (`bench/smpp.sh`): `SESSIONS` plain SMPP
//! sessions bind as transmitters, and each keeps `WINDOW` `submit_sm` outstanding for
//! `SECONDS`, every one to a random number of the bench's million (`+1415 EEE LLLL`, as
//! `bench/run.sh` draws them), GSM text. Prints one line: submits answered, per second, the
//! statuses, and latency percentiles from submit to answer.
//!
//! Usage: smpp_load HOST:PORT SYSTEM_ID PASSWORD SENDER [SESSIONS] [WINDOW] [SECONDS] [WARMUP]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use consentry::smpp::pdu;
use rusmpp::pdus::{BindTransmitter, SubmitSm};
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{InterfaceVersion, Npi, Ton};
use rusmpp::{Command, CommandStatus, Pdu};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn c_string<const MAX: usize>(text: &str) -> COctetString<1, MAX> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    COctetString::from_vec(bytes).expect("an SMPP C string")
}

/// What one session saw in the measured time.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u64>,
    statuses: BTreeMap<u32, u64>,
}

/// What every session does.
#[derive(Clone)]
struct Load {
    address: String,
    system_id: String,
    password: String,
    sender: String,
    window: usize,
    warmup: Duration,
    until: Instant,
}

async fn session(load: Load, seed: u64) -> Seen {
    let Load {
        address,
        system_id,
        password,
        sender,
        window,
        warmup,
        until,
    } = load;
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stream.set_nodelay(true).ok();
    let (mut reader, mut writer) = stream.into_split();
    let mut out = BytesMut::new();
    let bind = BindTransmitter::builder()
        .system_id(c_string(&system_id))
        .password(c_string(&password))
        .system_type(c_string(""))
        .interface_version(InterfaceVersion::Smpp3_4)
        .build();
    pdu::encode_into(&Command::new(CommandStatus::EsmeRok, 1, bind), &mut out);
    writer.write_all(&out).await.expect("bind");
    out.clear();
    let first = read(&mut reader).await.expect("bind answered");
    assert_eq!(u32::from(first.status()), 0, "bind refused");

    let measured_from = Instant::now() + warmup;
    let mut random = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = |bound: u64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % bound
    };
    let mut sequence = 1u32;
    let mut outstanding: HashMap<u32, Instant> = HashMap::new();
    let mut seen = Seen::default();
    let (answers_in, mut answers) = tokio::sync::mpsc::unbounded_channel::<Command>();
    tokio::spawn(async move {
        while let Some(command) = read(&mut reader).await {
            if answers_in.send(command).is_err() {
                return;
            }
        }
    });
    loop {
        let now = Instant::now();
        if now < until {
            while outstanding.len() < window {
                sequence += 1;
                let i = next(1_000_000);
                let to = format!("1415{:03}{:04}", 200 + i / 10_000, i % 10_000);
                let submit = SubmitSm::builder()
                    .source_addr_ton(Ton::International)
                    .source_addr_npi(Npi::Isdn)
                    .source_addr(c_string(sender.trim_start_matches('+')))
                    .dest_addr_ton(Ton::International)
                    .dest_addr_npi(Npi::Isdn)
                    .destination_addr(c_string(&to))
                    .short_message(OctetString::from_vec(b"bench message".to_vec()).expect("text"))
                    .build();
                pdu::encode_into(
                    &Command::new(CommandStatus::EsmeRok, sequence, submit),
                    &mut out,
                );
                outstanding.insert(sequence, now);
            }
            if !out.is_empty() {
                writer.write_all(&out).await.expect("submit");
                out.clear();
            }
        } else if outstanding.is_empty() {
            return seen;
        }
        let Some(answer) = answers.recv().await else {
            return seen;
        };
        if let Some(Pdu::SubmitSmResp(_)) = answer.pdu()
            && let Some(sent) = outstanding.remove(&answer.sequence_number())
        {
            let answered = Instant::now();
            if sent >= measured_from && answered <= until {
                seen.latencies_us
                    .push(answered.duration_since(sent).as_micros() as u64);
                *seen.statuses.entry(u32::from(answer.status())).or_default() += 1;
            }
        }
    }
}

async fn read(reader: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Command> {
    let mut length = [0u8; 4];
    reader.read_exact(&mut length).await.ok()?;
    let mut frame = BytesMut::zeroed(u32::from_be_bytes(length) as usize - 4);
    reader.read_exact(&mut frame).await.ok()?;
    pdu::decode(frame)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!(
            "usage: smpp_load HOST:PORT SYSTEM_ID PASSWORD SENDER [SESSIONS] [WINDOW] [SECONDS] [WARMUP]"
        );
        std::process::exit(2);
    }
    let number = |index: usize, default: u64| {
        args.get(index)
            .map_or(default, |text| text.parse().expect("a number"))
    };
    let (sessions, window) = (number(5, 4) as usize, number(6, 50) as usize);
    let (seconds, warmup) = (number(7, 15), number(8, 3));
    let load = Load {
        address: args[1].clone(),
        system_id: args[2].clone(),
        password: args[3].clone(),
        sender: args[4].clone(),
        window,
        warmup: Duration::from_secs(warmup),
        until: Instant::now() + Duration::from_secs(warmup + seconds),
    };
    let mut tasks = Vec::new();
    for index in 0..sessions {
        tasks.push(tokio::spawn(session(load.clone(), index as u64 + 1)));
    }
    let mut all = Seen::default();
    for task in tasks {
        let seen = task.await.expect("a session");
        all.latencies_us.extend(seen.latencies_us);
        for (status, count) in seen.statuses {
            *all.statuses.entry(status).or_default() += count;
        }
    }
    all.latencies_us.sort_unstable();
    let at = |fraction: f64| {
        all.latencies_us
            .get(
                ((all.latencies_us.len() as f64 * fraction) as usize)
                    .min(all.latencies_us.len().saturating_sub(1)),
            )
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    let statuses: Vec<String> = all
        .statuses
        .iter()
        .map(|(status, count)| format!("0x{status:x}:{count}"))
        .collect();
    println!(
        "RESULT submits={} seconds={} rate={:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} statuses={}",
        all.latencies_us.len(),
        seconds,
        all.latencies_us.len() as f64 / seconds as f64,
        at(0.50),
        at(0.99),
        at(1.0),
        statuses.join(",")
    );
}
