//! The SMPP listener and its sessions: the IO edge of the front. A session reads PDUs,
//! answers binds, `enquire_link` and `unbind` itself, and hands each whole message (a
//! concatenated one once all its parts are in) to the one send flow, many at once up to the
//! session's window; answers go back as they are ready, in any order, as SMPP allows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rusmpp::pdus::{BindReceiverResp, BindTransceiverResp, BindTransmitterResp, SubmitSm};
use rusmpp::types::COctetString;
use rusmpp::values::InterfaceVersion;
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::deliver::Handoff;
use super::pdu::{self, read_submit, submit_resp};
use super::status;
use super::text::{self, Added, Concat, Reassembly};
use super::wire::read_frame;
use crate::auth::Principal;
use crate::config::SmppConfig;
use crate::domain::TenantId;
use crate::flow::request::{SendRequest, canonical_message, sender_bounds};
use crate::flow::send::{self, Delivery, Processed};
use crate::state::{AppState, Current};

/// Concatenated messages one session may have waiting for parts at once.
const MAX_WAITING: usize = 256;
/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// The `system_id` consentry answers binds with.
const SYSTEM_ID: &[u8] = b"consentry\0";

/// The session settings of `[smpp]`.
#[derive(Debug, Clone)]
pub struct Settings {
    window: usize,
    idle: Duration,
    reassembly: Duration,
    throttle_when_paced: bool,
}

impl Settings {
    pub fn from_config(config: &SmppConfig) -> Settings {
        Settings {
            window: config.window,
            idle: Duration::from_secs(config.idle_timeout_seconds),
            reassembly: Duration::from_secs(config.reassembly_timeout_seconds),
            throttle_when_paced: config.when_paced == crate::config::WhenPaced::Throttle,
        }
    }
}

/// Accepts SMPP sessions on `listener` (over TLS when `tls` is given) until `stop` turns true;
/// then each session ends once its outstanding messages are answered.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    current: Current,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, usually: wait rather than spin.
                        tracing::warn!(%error, "SMPP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let (tls, current, settings, stop) =
                    (tls.clone(), current.clone(), settings.clone(), stop.clone());
                sessions.spawn(async move {
                    match tls {
                        None => run(socket, peer, current, settings, stop).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(HANDSHAKE, acceptor.accept(socket)).await {
                                Ok(Ok(stream)) => run(stream, peer, current, settings, stop).await,
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "SMPP TLS handshake failed");
                                }
                                Err(_) => tracing::debug!(%peer, "SMPP TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
    }
    while sessions.join_next().await.is_some() {}
}

/// Resolves when `stop` turns true (or its sender is gone), holding no borrow of it after.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// What a bind allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Transmitter,
    Receiver,
    Transceiver,
}

impl Mode {
    fn submits(self) -> bool {
        self != Mode::Receiver
    }
}

/// The parts of one concatenated message: who sent it to whom, and its reference.
type PartKey = (String, String, u8, u16);

/// A whole message's octets, and the sequence numbers of its parts.
type Whole = (Vec<u8>, Vec<u32>);

/// One session's state, owned by its reading loop.
struct Session {
    peer: SocketAddr,
    current: Current,
    settings: Settings,
    out: mpsc::Sender<Command>,
    bound: Option<(String, Mode)>,
    window: Arc<Semaphore>,
    parts: Reassembly<PartKey>,
    /// The sequence numbers of the parts [`Session::parts`] holds, answered together.
    held: HashMap<PartKey, Vec<u32>>,
    started: Instant,
    /// Where replies and receipts for this session queue, once it is bound to receive.
    deliveries: mpsc::Sender<Handoff>,
    /// Its place in the table of sessions that receive.
    receiving: Option<(TenantId, u64)>,
    /// `deliver_sm` sent and not yet answered, by sequence number.
    awaiting: HashMap<u32, tokio::sync::oneshot::Sender<u32>>,
    /// The sequence number of the last PDU consentry sent first.
    sequence: u32,
}

/// Whether the session goes on after a PDU.
#[derive(PartialEq, Eq)]
enum Next {
    Continue,
    Close,
}

async fn run<S>(
    stream: S,
    peer: SocketAddr,
    current: Current,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (out, outgoing) = mpsc::channel::<Command>(settings.window * 2 + 16);
    let writing = tokio::spawn(write_all(writer, outgoing));
    // Reading in a task of its own: a frame half read is never dropped by the select below.
    let (frames, mut incoming) = mpsc::channel::<std::io::Result<Option<BytesMut>>>(1);
    let reading = tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut reader).await;
            let last = !matches!(frame, Ok(Some(_)));
            if frames.send(frame).await.is_err() || last {
                return;
            }
        }
    });
    let (deliveries, mut to_deliver) = mpsc::channel::<Handoff>(settings.window);
    let mut session = Session {
        peer,
        deliveries,
        receiving: None,
        awaiting: HashMap::new(),
        sequence: 0,
        window: Arc::new(Semaphore::new(settings.window)),
        parts: Reassembly::new(MAX_WAITING),
        held: HashMap::new(),
        started: Instant::now(),
        current,
        settings,
        out,
        bound: None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut idle_since = Instant::now();
    loop {
        let frame = tokio::select! {
            frame = incoming.recv() => frame,
            Some(delivery) = to_deliver.recv() => {
                session.send_delivery(delivery).await;
                continue;
            }
            _ = tick.tick() => {
                session.expire_parts().await;
                if idle_since.elapsed() >= session.settings.idle {
                    tracing::info!(%peer, "SMPP session idle: closed");
                    break;
                }
                continue;
            }
            () = stopped(&mut stop) => break,
        };
        idle_since = Instant::now();
        match frame {
            None | Some(Ok(None)) => break,
            Some(Err(error)) => {
                tracing::debug!(%peer, %error, "SMPP session ended");
                break;
            }
            Some(Ok(Some(frame))) => {
                if session.handle(frame).await == Next::Close {
                    break;
                }
            }
        }
    }
    reading.abort();
    session.expire_all().await;
    if let Some((tenant, id)) = session.receiving.take() {
        session
            .current
            .borrow()
            .smpp_receivers
            .unregister(&tenant, id);
    }
    if let Some((system_id, _)) = &session.bound {
        tracing::info!(%peer, %system_id, "SMPP session closed");
    }
    // Messages being decided hold clones of the sender: the writer ends after their answers.
    drop(session);
    let _ = writing.await;
}

impl Session {
    async fn handle(&mut self, frame: BytesMut) -> Next {
        let (id, sequence) = pdu::header(&frame);
        let command = match pdu::decode(frame) {
            Some(command) => command,
            None => {
                let status = match CommandId::from(id) {
                    CommandId::Other(_) => 0x0000_0003, // ESME_RINVCMDID
                    _ => status::INVALID_MESSAGE,
                };
                self.answer(Command::new(
                    CommandStatus::from(status),
                    sequence,
                    Pdu::GenericNack,
                ))
                .await;
                return Next::Continue;
            }
        };
        match command.pdu() {
            Some(Pdu::BindTransmitter(bind)) => {
                let (system_id, password) = (bind.system_id.clone(), bind.password.clone());
                self.bind(sequence, Mode::Transmitter, system_id, password)
                    .await
            }
            Some(Pdu::BindReceiver(bind)) => {
                let (system_id, password) = (bind.system_id.clone(), bind.password.clone());
                self.bind(sequence, Mode::Receiver, system_id, password)
                    .await
            }
            Some(Pdu::BindTransceiver(bind)) => {
                let (system_id, password) = (bind.system_id.clone(), bind.password.clone());
                self.bind(sequence, Mode::Transceiver, system_id, password)
                    .await
            }
            Some(Pdu::EnquireLink) => {
                self.answer(Command::new(ROK, sequence, Pdu::EnquireLinkResp))
                    .await;
                Next::Continue
            }
            Some(Pdu::Unbind) => {
                self.answer(Command::new(ROK, sequence, Pdu::UnbindResp))
                    .await;
                Next::Close
            }
            Some(Pdu::SubmitSm(submit)) => {
                self.submit(sequence, submit).await;
                Next::Continue
            }
            Some(Pdu::DeliverSmResp(_)) => {
                if let Some(answered) = self.awaiting.remove(&sequence) {
                    let _ = answered.send(u32::from(command.status()));
                }
                Next::Continue
            }
            Some(Pdu::GenericNack) => {
                // A client that could not read a deliver_sm: it is retried later.
                if let Some(answered) = self.awaiting.remove(&sequence) {
                    let _ = answered.send(u32::from(command.status()).max(1));
                }
                Next::Continue
            }
            // Answers to what consentry sent.
            Some(Pdu::EnquireLinkResp | Pdu::UnbindResp | Pdu::DataSmResp(_)) => Next::Continue,
            _ => {
                // query_sm, cancel_sm, replace_sm, submit_multi, data_sm...: not offered.
                self.answer(Command::new(
                    CommandStatus::EsmeRinvcmdid,
                    sequence,
                    Pdu::GenericNack,
                ))
                .await;
                Next::Continue
            }
        }
    }

    async fn bind(
        &mut self,
        sequence: u32,
        mode: Mode,
        system_id: COctetString<1, 16>,
        password: COctetString<1, 9>,
    ) -> Next {
        let answer = |status: u32| {
            let system_id = COctetString::from_static_slice(SYSTEM_ID).unwrap_or_default();
            let version = Some(InterfaceVersion::Smpp3_4);
            let status = CommandStatus::from(status);
            match mode {
                Mode::Transmitter => Command::new(
                    status,
                    sequence,
                    BindTransmitterResp::new(system_id, version),
                ),
                Mode::Receiver => {
                    Command::new(status, sequence, BindReceiverResp::new(system_id, version))
                }
                Mode::Transceiver => Command::new(
                    status,
                    sequence,
                    BindTransceiverResp::new(system_id, version),
                ),
            }
        };
        if self.bound.is_some() {
            self.answer(answer(status::ALREADY_BOUND)).await;
            return Next::Continue;
        }
        let accounts = self.current.borrow().smpp_accounts.clone();
        let (id, secret) = (system_id.as_str().to_owned(), password.as_str().to_owned());
        // PBKDF2 takes a good part of a second the first time: not on the async threads.
        let checked = tokio::task::spawn_blocking(move || {
            accounts
                .authenticate(&id, &secret)
                .map(|account| (id, account.tenant.clone()))
        })
        .await
        .ok()
        .flatten();
        let Some((system_id, tenant)) = checked else {
            tracing::warn!(peer = %self.peer, system_id = %system_id.as_str(), "SMPP bind refused");
            self.answer(answer(status::BIND_FAILED)).await;
            return Next::Close;
        };
        tracing::info!(peer = %self.peer, %system_id, ?mode, "SMPP session bound");
        if mode != Mode::Transmitter {
            let receivers = self.current.borrow().smpp_receivers.clone();
            let id = receivers.register(&tenant, &system_id, self.deliveries.clone());
            self.receiving = Some((tenant, id));
        }
        self.bound = Some((system_id, mode));
        self.answer(answer(status::OK)).await;
        Next::Continue
    }

    /// Reads a `submit_sm`; a whole message goes to the flow, a part waits for the others.
    async fn submit(&mut self, sequence: u32, submit: &SubmitSm) {
        let Some((system_id, mode)) = self.bound.clone() else {
            return self.refuse(sequence, status::INVALID_BIND_STATE).await;
        };
        if !mode.submits() {
            return self.refuse(sequence, status::INVALID_BIND_STATE).await;
        }
        let read = match read_submit(submit) {
            Ok(read) => read,
            Err(code) => return self.refuse(sequence, code).await,
        };
        let (octets, sequences) = match read.concat {
            None => (read.octets, vec![sequence]),
            Some(concat) => {
                let key: PartKey = (
                    read.from.clone(),
                    read.to.clone(),
                    read.data_coding,
                    concat.reference,
                );
                match self.add_part(key, concat, read.octets, sequence) {
                    Ok(Some(whole)) => whole,
                    Ok(None) => return,
                    Err(code) => return self.refuse(sequence, code).await,
                }
            }
        };
        let body =
            match text::coding(read.data_coding).and_then(|coding| text::decode(coding, &octets)) {
                Ok(body) => body,
                Err(error) => {
                    tracing::debug!(peer = %self.peer, %error, "SMPP text refused");
                    let code = match error {
                        text::TextError::UnsupportedCoding(_) => status::INVALID_DATA_CODING,
                        _ => status::INVALID_MESSAGE,
                    };
                    for sequence in sequences {
                        self.refuse(sequence, code).await;
                    }
                    return;
                }
            };
        let Ok(permit) = self.window.clone().try_acquire_owned() else {
            for sequence in sequences {
                self.refuse(sequence, status::THROTTLED).await;
            }
            return;
        };
        let state = self.current.borrow().clone();
        let Some(principal) = state.smpp_accounts.principal(&system_id) else {
            // The account was removed by a reload: its sessions send no more.
            for sequence in sequences {
                self.refuse(sequence, status::INVALID_BIND_STATE).await;
            }
            return;
        };
        let out = self.out.clone();
        let receipts = read
            .receipts
            .then(|| crate::flow::receive::smpp_receipts_to(&system_id));
        let throttle = self.settings.throttle_when_paced;
        // Tracked with the API's handlers: shutdown waits for it, and a session that ends
        // does not stop it.
        let in_flight = state.in_flight.clone();
        in_flight.spawn(async move {
            let message = Submitted {
                to: read.to,
                from: read.from,
                body,
                receipts,
                throttle,
            };
            let (code, id) = decide(&state, &principal, message).await;
            drop(permit);
            for sequence in sequences {
                let _ = out.send(submit_resp(sequence, code, &id)).await;
            }
        });
    }

    /// Holds a part; when it completes its message, the whole octets and the sequence
    /// numbers of all its parts (answered together, with the message's one answer).
    fn add_part(
        &mut self,
        key: PartKey,
        concat: Concat,
        octets: Vec<u8>,
        sequence: u32,
    ) -> Result<Option<Whole>, u32> {
        let now_ms = self.started.elapsed().as_millis() as u64;
        match self.parts.add(key.clone(), concat, octets, now_ms) {
            Added::Waiting | Added::Duplicate => {
                self.held.entry(key).or_default().push(sequence);
                Ok(None)
            }
            Added::Complete(whole) => {
                let mut sequences = self.held.remove(&key).unwrap_or_default();
                sequences.push(sequence);
                Ok(Some((whole, sequences)))
            }
            Added::Mismatch => {
                // The held parts are dropped with it; they are answered by the caller's refusal
                // of this one and the expiry below.
                if let Some(held) = self.held.remove(&key) {
                    let out = self.out.clone();
                    tokio::spawn(async move {
                        for sequence in held {
                            let _ = out
                                .send(submit_resp(sequence, status::INCOMPLETE_MESSAGE, ""))
                                .await;
                        }
                    });
                }
                Err(status::INCOMPLETE_MESSAGE)
            }
            Added::Full => Err(status::TOO_MANY_PARTS_WAITING),
            Added::Invalid => Err(status::INVALID_ESM_CLASS),
        }
    }

    /// Refuses the held parts of messages whose other parts did not come in time.
    async fn expire_parts(&mut self) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let max_age_ms = self.settings.reassembly.as_millis() as u64;
        for key in self.parts.expire(now_ms, max_age_ms) {
            for sequence in self.held.remove(&key).unwrap_or_default() {
                self.refuse(sequence, status::INCOMPLETE_MESSAGE).await;
            }
        }
    }

    /// At the session's end: every held part gets its answer (the client may still read it).
    async fn expire_all(&mut self) {
        self.parts.expire(u64::MAX, 0);
        let held: Vec<u32> = self.held.drain().flat_map(|(_, held)| held).collect();
        for sequence in held {
            self.refuse(sequence, status::INCOMPLETE_MESSAGE).await;
        }
    }

    /// Sends a reply or receipt; its answer goes back to the outbox that asked.
    async fn send_delivery(&mut self, delivery: Handoff) {
        self.sequence = self.sequence % 0x7FFF_FFFF + 1;
        self.awaiting.insert(self.sequence, delivery.answered);
        // Answers that never come (a client that drops them) are not kept for ever.
        self.awaiting.retain(|_, answered| !answered.is_closed());
        self.answer(Command::new(ROK, self.sequence, delivery.pdu))
            .await;
    }

    async fn refuse(&self, sequence: u32, code: u32) {
        self.answer(submit_resp(sequence, code, "")).await;
    }

    async fn answer(&self, command: Command) {
        let _ = self.out.send(command).await;
    }
}

const ROK: CommandStatus = CommandStatus::EsmeRok;

/// The status of a flow that could not run: nothing was sent, and a retry may succeed, except
/// for a reply that does not read (which a submit never is).
fn of_failure(error: &crate::flow::FlowError) -> u32 {
    use crate::flow::FlowError;
    match error {
        FlowError::Store(_)
        | FlowError::Encryption(_)
        | FlowError::Unreadable(_)
        | FlowError::Lookup(_) => status::SYSTEM_ERROR,
        FlowError::Reply(_) => status::SUBMIT_FAILED,
    }
}

/// A whole message, as the session read it.
struct Submitted {
    to: String,
    from: String,
    body: String,
    /// Where its statuses go, when a receipt was asked for.
    receipts: Option<crate::domain::StatusCallback>,
    /// Answer `ESME_RTHROTTLED` rather than queue it, when its pace is used up.
    throttle: bool,
}

/// Runs one message through the send flow; its status and (if accepted) consentry's id.
async fn decide(
    state: &Arc<AppState>,
    principal: &Principal,
    submitted: Submitted,
) -> (u32, String) {
    let Submitted {
        to,
        from,
        body,
        receipts,
        throttle,
    } = submitted;
    let Some(tenant) = state.tenants.get(&principal.tenant) else {
        return (status::SUBMIT_FAILED, String::new());
    };
    let purpose = match principal
        .purposes
        .as_ref()
        .map(|set| set.iter().collect::<Vec<_>>())
    {
        Some(only) if only.len() == 1 => *only[0],
        _ => tenant.default_purpose,
    };
    let request = SendRequest {
        to,
        from,
        body,
        purpose: purpose.as_str().to_owned(),
        brand: None,
        campaign: None,
        send_at: None,
        media_urls: Vec::new(),
    };
    let mut message = match canonical_message(state, request, tenant, state.clock.now()) {
        Ok(message) => message,
        Err(error) => return (status::of_error(error.code), String::new()),
    };
    message.status_callback = receipts;
    if throttle
        && state
            .pacer
            .would_wait(&tenant.upstream, message.from.as_str(), state.clock.now())
    {
        return (status::THROTTLED, String::new());
    }
    let bounds = sender_bounds(principal, tenant);
    match send::process(state, tenant, &bounds, message, Delivery::Upstream).await {
        Ok(
            Processed::Sent { id, .. }
            | Processed::Requeued { id, .. }
            | Processed::Answered { id, .. },
        ) => (status::OK, id.to_string()),
        Ok(Processed::Scheduled(deferral)) => (status::OK, deferral.message.id.to_string()),
        Ok(Processed::Denied(denial)) => (
            status::of_denial(denial.reasons[0].code).unwrap_or(status::SUBMIT_FAILED),
            String::new(),
        ),
        Ok(Processed::Failed { .. }) => (status::SUBMIT_FAILED, String::new()),
        Err(error) => (of_failure(&error), String::new()),
    }
}

/// Writes answers as they come, several at once when several are ready.
async fn write_all<W: AsyncWrite + Unpin>(mut writer: W, mut outgoing: mpsc::Receiver<Command>) {
    let mut buffer = BytesMut::with_capacity(4096);
    while let Some(command) = outgoing.recv().await {
        pdu::encode_into(&command, &mut buffer);
        while buffer.len() < 64 * 1024 {
            match outgoing.try_recv() {
                Ok(command) => pdu::encode_into(&command, &mut buffer),
                Err(_) => break,
            }
        }
        if writer.write_all(&buffer).await.is_err() || writer.flush().await.is_err() {
            return;
        }
        buffer.clear();
    }
    let _ = writer.shutdown().await;
}
