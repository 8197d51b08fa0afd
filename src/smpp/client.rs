//! consentry as an ESME: the SMPP upstream (`kind = "smpp"`). One connection per upstream,
//! bound as a transceiver, kept up by a task of its own: it reconnects with backoff (1 s,
//! doubling to 30 s), sends `enquire_link` when the line is quiet and gives the connection up
//! when nothing answers. A permitted message goes out as a `submit_sm` (at most `window`
//! outstanding) and its `submit_sm_resp` is the gateway's answer; the SMSC's `deliver_sm`
//! (receipts and recipients' messages) are handed to the flows through [`Events`], and
//! answered only once the flow has recorded them, so that an SMSC redelivers what consentry
//! did not keep.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rusmpp::pdus::{BindTransceiver, DeliverSmResp};
use rusmpp::types::COctetString;
use rusmpp::values::InterfaceVersion;
use rusmpp::{Command, CommandStatus, Pdu};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::pdu::{self, Delivered};
use super::wire::read_frame;
use crate::dialect::{DeliveryState, DeliveryStatus, InboundMessage};

/// The longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A quiet line gets an `enquire_link` this often; twice this without a PDU ends it.
const ENQUIRE_EVERY: Duration = Duration::from_secs(30);

/// What an SMSC delivered, for the flows (`flow::receive`).
#[derive(Debug)]
pub enum Event {
    Message(InboundMessage),
    Status(DeliveryStatus),
}

/// What became of an SMSC's delivery, for its `deliver_sm_resp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Recorded: `ESME_ROK`.
    Recorded,
    /// It can never be recorded (not a reply consentry reads): `ESME_RX_P_APPN`.
    Refused,
    /// Not recorded now (the store failed): `ESME_RX_T_APPN`, the SMSC delivers it again.
    Failed,
}

/// An SMSC's delivery on its way to the flows: the upstream's name, the event, and where to
/// say what became of it (the `deliver_sm_resp` waits for it).
#[derive(Debug)]
pub struct Incoming {
    pub upstream: String,
    pub event: Event,
    pub handled: oneshot::Sender<Handled>,
}

/// Where SMPP upstreams hand what their SMSCs deliver (read by a worker of `app`).
pub type Events = mpsc::UnboundedSender<Incoming>;

/// How to reach and bind to one SMSC (`[[upstreams]]` of kind `smpp`).
#[derive(Clone)]
pub struct Settings {
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// With `smpps://`: the server name to verify and the TLS client configuration.
    pub tls: Option<(
        rustls_pki_types::ServerName<'static>,
        Arc<rustls::ClientConfig>,
    )>,
    pub system_id: String,
    pub password: crate::config::Secret,
    pub window: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("tls", &self.tls.is_some())
            .field("system_id", &self.system_id)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// Why a `submit_sm` got no message id.
#[derive(Debug)]
pub enum Refusal {
    /// Not bound, or the connection ended before the answer.
    Unavailable(String),
    Timeout,
    /// The SMSC's `submit_sm_resp` status.
    Status(u32),
}

/// A `submit_sm` for the connection task, and where its answer goes.
struct Request {
    submit: rusmpp::pdus::SubmitSm,
    answer: oneshot::Sender<Result<String, Refusal>>,
}

/// The handle of one SMPP upstream. Dropping it (a reload that replaced it, once its last
/// send is done) ends its connection.
#[derive(Debug)]
pub struct SmppGateway {
    settings: Settings,
    requests: Option<mpsc::Sender<Request>>,
    bound: watch::Receiver<bool>,
    window: Arc<Semaphore>,
}

impl SmppGateway {
    /// The upstream, connecting and binding in the background and handing what its SMSC
    /// delivers to `events`. Without `events` (`consentry check`), it never connects.
    pub fn start(settings: Settings, events: Option<&Events>) -> SmppGateway {
        let (bound_tx, bound) = watch::channel(false);
        let requests = events.map(|events| {
            let (requests, queue) = mpsc::channel(settings.window.max(1));
            tokio::spawn(run(settings.clone(), queue, bound_tx, events.clone()));
            requests
        });
        SmppGateway {
            window: Arc::new(Semaphore::new(settings.window.max(1))),
            settings,
            requests,
            bound,
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Sends `submit` and waits for the SMSC's message id: within `connect_timeout` for a
    /// bind if there is none, then within `request_timeout` for the answer.
    pub async fn submit(&self, submit: rusmpp::pdus::SubmitSm) -> Result<String, Refusal> {
        let Some(requests) = &self.requests else {
            return Err(Refusal::Unavailable(
                "the SMPP upstream is not started".into(),
            ));
        };
        let mut bound = self.bound.clone();
        if tokio::time::timeout(
            self.settings.connect_timeout,
            bound.wait_for(|bound| *bound),
        )
        .await
        .is_err()
        {
            return Err(Refusal::Unavailable(format!(
                "not bound to the SMSC at {}",
                self.settings.address
            )));
        }
        let waited = tokio::time::timeout(self.settings.request_timeout, async {
            let _slot = self
                .window
                .acquire()
                .await
                .map_err(|_| Refusal::Unavailable("the SMPP upstream is closed".into()))?;
            let (answer, answered) = oneshot::channel();
            requests
                .send(Request { submit, answer })
                .await
                .map_err(|_| Refusal::Unavailable("the SMPP connection task ended".into()))?;
            answered.await.map_err(|_| {
                Refusal::Unavailable("the SMPP connection ended before the SMSC answered".into())
            })?
        })
        .await;
        waited.unwrap_or(Err(Refusal::Timeout))
    }
}

/// Connects, binds and serves until the handle is dropped; reconnects with backoff.
async fn run(
    settings: Settings,
    mut requests: mpsc::Receiver<Request>,
    bound: watch::Sender<bool>,
    events: Events,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let served = match connect(&settings).await {
            Ok(Connection::Plain(stream)) => {
                serve(stream, &settings, &mut requests, &bound, &events).await
            }
            Ok(Connection::Tls(stream)) => {
                serve(*stream, &settings, &mut requests, &bound, &events).await
            }
            Err(error) => {
                tracing::warn!(upstream = %settings.name, address = %settings.address, %error, retry_in_s = backoff.as_secs(), "SMPP upstream: no bind");
                Served::Lost
            }
        };
        bound.send_replace(false);
        match served {
            Served::Closed => return,
            Served::Lost if requests.is_closed() => return,
            Served::Lost => {}
            Served::Bound => backoff = Duration::from_secs(1),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

enum Connection {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

async fn connect(settings: &Settings) -> Result<Connection, String> {
    let connecting = async {
        let tcp = tokio::net::TcpStream::connect(&settings.address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match &settings.tls {
            None => Ok(Connection::Plain(tcp)),
            Some((name, config)) => tokio_rustls::TlsConnector::from(config.clone())
                .connect(name.clone(), tcp)
                .await
                .map(|stream| Connection::Tls(Box::new(stream)))
                .map_err(|e| format!("TLS: {e}")),
        }
    };
    tokio::time::timeout(settings.connect_timeout, connecting)
        .await
        .map_err(|_| "connect: timed out".to_owned())?
}

/// How a connection ended.
enum Served {
    /// The handle was dropped: unbound, and the task ends.
    Closed,
    /// It was bound and then lost.
    Bound,
    /// It never bound, or was lost before.
    Lost,
}

async fn serve<S>(
    stream: S,
    settings: &Settings,
    requests: &mut mpsc::Receiver<Request>,
    bound: &watch::Sender<bool>,
    events: &Events,
) -> Served
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut sequence = 1u32;
    let bind = BindTransceiver::builder()
        .system_id(c_string(&settings.system_id))
        .password(c_string(settings.password.expose()))
        .system_type(c_string(""))
        .interface_version(InterfaceVersion::Smpp3_4)
        .build();
    if write(
        &mut writer,
        &Command::new(CommandStatus::EsmeRok, sequence, bind),
    )
    .await
    .is_err()
    {
        return Served::Lost;
    }
    let answer = tokio::time::timeout(settings.connect_timeout, read_frame(&mut reader)).await;
    let status = match answer {
        Ok(Ok(Some(frame))) => pdu::decode(frame).map(|command| u32::from(command.status())),
        _ => None,
    };
    if status != Some(0) {
        tracing::warn!(upstream = %settings.name, status = ?status.map(|s| format!("0x{s:08x}")), "SMPP upstream: the SMSC refused the bind");
        return Served::Lost;
    }
    tracing::info!(upstream = %settings.name, address = %settings.address, "SMPP upstream bound");
    bound.send_replace(true);

    // Frames in a task of their own (a frame half read is never dropped by the select), and
    // one writer the deliveries' answers share.
    let (frames, mut incoming) = mpsc::channel::<BytesMut>(64);
    let reading = tokio::spawn(async move {
        while let Ok(Some(frame)) = read_frame(&mut reader).await {
            if frames.send(frame).await.is_err() {
                return;
            }
        }
    });
    let (out, mut outgoing) = mpsc::unbounded_channel::<Command>();
    let mut pending: HashMap<u32, oneshot::Sender<Result<String, Refusal>>> = HashMap::new();
    let mut tick = tokio::time::interval(ENQUIRE_EVERY);
    tick.tick().await;
    let mut quiet_ticks = 0;
    let ended = loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else {
                    sequence = next(sequence);
                    let _ = write(&mut writer, &Command::new(CommandStatus::EsmeRok, sequence, Pdu::Unbind)).await;
                    break Served::Closed;
                };
                sequence = next(sequence);
                let command = Command::new(CommandStatus::EsmeRok, sequence, request.submit);
                if write(&mut writer, &command).await.is_err() {
                    let _ = request.answer.send(Err(Refusal::Unavailable("the SMPP connection failed".into())));
                    break Served::Bound;
                }
                pending.insert(sequence, request.answer);
            }
            Some(command) = outgoing.recv() => {
                if write(&mut writer, &command).await.is_err() {
                    break Served::Bound;
                }
            }
            frame = incoming.recv() => {
                let Some(frame) = frame else { break Served::Bound };
                quiet_ticks = 0;
                let (_, number) = pdu::header(&frame);
                let Some(command) = pdu::decode(frame) else {
                    let nack = Command::new(CommandStatus::EsmeRinvcmdid, number, Pdu::GenericNack);
                    if write(&mut writer, &nack).await.is_err() { break Served::Bound; }
                    continue;
                };
                match command.pdu() {
                    Some(Pdu::SubmitSmResp(answer)) => {
                        if let Some(waiting) = pending.remove(&number) {
                            let status = u32::from(command.status());
                            let _ = waiting.send(if status == 0 {
                                Ok(answer.message_id().as_str().to_owned())
                            } else {
                                Err(Refusal::Status(status))
                            });
                        }
                    }
                    Some(Pdu::GenericNack) => {
                        if let Some(waiting) = pending.remove(&number) {
                            let _ = waiting.send(Err(Refusal::Status(u32::from(command.status()).max(1))));
                        }
                    }
                    Some(Pdu::DeliverSm(deliver)) => {
                        hand_over(settings, deliver, number, events, &out);
                    }
                    Some(Pdu::EnquireLink) => {
                        let answer = Command::new(CommandStatus::EsmeRok, number, Pdu::EnquireLinkResp);
                        if write(&mut writer, &answer).await.is_err() { break Served::Bound; }
                    }
                    Some(Pdu::Unbind) => {
                        let answer = Command::new(CommandStatus::EsmeRok, number, Pdu::UnbindResp);
                        let _ = write(&mut writer, &answer).await;
                        tracing::info!(upstream = %settings.name, "SMPP upstream: the SMSC unbound");
                        break Served::Bound;
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                quiet_ticks += 1;
                if quiet_ticks > 2 {
                    tracing::warn!(upstream = %settings.name, "SMPP upstream: the SMSC stopped answering");
                    break Served::Bound;
                }
                sequence = next(sequence);
                if write(&mut writer, &Command::new(CommandStatus::EsmeRok, sequence, Pdu::EnquireLink)).await.is_err() {
                    break Served::Bound;
                }
            }
        }
    };
    reading.abort();
    for (_, waiting) in pending {
        let _ = waiting.send(Err(Refusal::Unavailable(
            "the SMPP connection ended before the SMSC answered".into(),
        )));
    }
    ended
}

/// Hands a `deliver_sm` to the flows; its answer goes out once the flow has recorded it
/// (`ESME_ROK`), or with `ESME_RX_T_APPN` (a temporary error: the SMSC delivers it again)
/// if it was not. One that does not read is refused for good (`ESME_RX_P_APPN`).
fn hand_over(
    settings: &Settings,
    deliver: &rusmpp::pdus::DeliverSm,
    number: u32,
    events: &Events,
    out: &mpsc::UnboundedSender<Command>,
) {
    let answer =
        move |status: CommandStatus| Command::new(status, number, DeliverSmResp::default());
    let event = match pdu::read_deliver(deliver) {
        Ok(Delivered::Message { from, to, body }) => Event::Message(InboundMessage {
            // SMPP gives a recipient's message no id: each delivery is a message of its own.
            gateway_id: format!("smpp_{}", uuid::Uuid::now_v7().simple()),
            from,
            to,
            body,
        }),
        Ok(Delivered::Receipt { id, stat, error }) => Event::Status(DeliveryStatus {
            gateway_message_id: id,
            state: match stat.as_str() {
                "DELIVRD" | "DELIVERED" => DeliveryState::Delivered,
                "UNDELIV" | "UNDELIVERABLE" | "EXPIRED" | "DELETED" => DeliveryState::Undelivered,
                "REJECTD" | "REJECTED" | "UNKNOWN" => DeliveryState::Failed,
                _ => DeliveryState::InProgress,
            },
            raw: stat.to_lowercase(),
            error_code: error,
        }),
        Err(why) => {
            tracing::warn!(upstream = %settings.name, %why, "SMPP upstream: a deliver_sm that does not read");
            let _ = out.send(answer(CommandStatus::EsmeRxPAppn));
            return;
        }
    };
    let (handled, was_handled) = oneshot::channel();
    let incoming = Incoming {
        upstream: settings.name.clone(),
        event,
        handled,
    };
    if events.send(incoming).is_err() {
        let _ = out.send(answer(CommandStatus::EsmeRxTAppn));
        return;
    }
    let out = out.clone();
    tokio::spawn(async move {
        let status = match was_handled.await {
            Ok(Handled::Recorded) => CommandStatus::EsmeRok,
            Ok(Handled::Refused) => CommandStatus::EsmeRxPAppn,
            Ok(Handled::Failed) | Err(_) => CommandStatus::EsmeRxTAppn,
        };
        let _ = out.send(answer(status));
    });
}

fn c_string<const MAX: usize>(text: &str) -> COctetString<1, MAX> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    COctetString::from_vec(bytes).unwrap_or_default()
}

fn next(sequence: u32) -> u32 {
    sequence % 0x7FFF_FFFF + 1
}

async fn write<W: AsyncWrite + Unpin>(writer: &mut W, command: &Command) -> std::io::Result<()> {
    let mut buffer = BytesMut::new();
    pdu::encode_into(command, &mut buffer);
    writer.write_all(&buffer).await?;
    writer.flush().await
}
