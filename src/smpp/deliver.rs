//! What consentry delivers to bound SMPP sessions: recipients' replies (mobile-originated
//! messages: a STOP has already opted the number out when it is delivered) and delivery
//! receipts. Both come from the durable outbox (`outbox`), which retries until a session
//! bound to receive has answered the `deliver_sm` with `ESME_ROK`: a reply that arrives while
//! no application is bound waits for one.
//!
//! [`Receivers`] is the table of sessions that may receive, by tenant; [`mo`] and [`receipt`]
//! build the PDUs (pure).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusmpp::pdus::DeliverSm;
use rusmpp::tlvs::MessageDeliveryRequestTlvValue;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, MessagePayload, MessageState, Npi, Ton};
use tokio::sync::{mpsc, oneshot};

use super::text;
use crate::domain::TenantId;

/// How long a session has to answer a `deliver_sm` before the outbox tries again later.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A `deliver_sm` for a session, and where its answer's status goes.
#[derive(Debug)]
pub struct Handoff {
    pub pdu: DeliverSm,
    pub answered: oneshot::Sender<u32>,
}

/// One session that may receive.
#[derive(Debug)]
struct Receiver {
    id: u64,
    system_id: String,
    queue: mpsc::Sender<Handoff>,
}

/// The sessions bound to receive (receiver and transceiver binds), by tenant. Kept across
/// reloads; a session adds itself when it binds and removes itself when it ends.
#[derive(Debug, Default)]
pub struct Receivers {
    sessions: Mutex<HashMap<TenantId, Vec<Receiver>>>,
    next: AtomicU64,
    turn: AtomicU64,
}

impl Receivers {
    /// Adds a session; the id removes it.
    pub fn register(
        &self,
        tenant: &TenantId,
        system_id: &str,
        queue: mpsc::Sender<Handoff>,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.table()
            .entry(tenant.clone())
            .or_default()
            .push(Receiver {
                id,
                system_id: system_id.to_owned(),
                queue,
            });
        id
    }

    pub fn unregister(&self, tenant: &TenantId, id: u64) {
        let mut table = self.table();
        if let Some(sessions) = table.get_mut(tenant) {
            sessions.retain(|session| session.id != id);
            if sessions.is_empty() {
                table.remove(tenant);
            }
        }
    }

    /// Delivers `pdu` to one of the tenant's sessions bound to receive (of `system_id` only,
    /// if given), taking them in turn, and waits for its answer. An error says why it was not
    /// delivered; the outbox then tries again later.
    pub async fn deliver(
        &self,
        tenant: &TenantId,
        system_id: Option<&str>,
        pdu: DeliverSm,
    ) -> Result<(), String> {
        let queue = {
            let table = self.table();
            let candidates: Vec<&Receiver> = table
                .get(tenant)
                .into_iter()
                .flatten()
                .filter(|session| system_id.is_none_or(|wanted| session.system_id == wanted))
                .collect();
            if candidates.is_empty() {
                return Err(match system_id {
                    Some(system_id) => {
                        format!("no SMPP session of {system_id} is bound to receive")
                    }
                    None => "no SMPP session of the tenant is bound to receive".to_owned(),
                });
            }
            let turn = self.turn.fetch_add(1, Ordering::Relaxed) as usize;
            candidates[turn % candidates.len()].queue.clone()
        };
        let (answered, answer) = oneshot::channel();
        queue
            .send(Handoff { pdu, answered })
            .await
            .map_err(|_| "the SMPP session ended".to_owned())?;
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(status)) => Err(format!(
                "the application answered deliver_sm with 0x{status:08x}"
            )),
            Ok(Err(_)) => Err("the SMPP session ended before it answered".to_owned()),
            Err(_) => Err("the SMPP session did not answer in time".to_owned()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Vec<Receiver>>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A recipient's reply, from its number to the sender it wrote to.
pub fn mo(from: &str, to: &str, body: &str) -> Result<DeliverSm, String> {
    let (data_coding, octets) = text::encode(body);
    Ok(with_text(
        address(from)?,
        address(to)?,
        0x00,
        data_coding,
        octets,
        Vec::new(),
    ))
}

/// What a delivery receipt says about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    Delivered,
    Undelivered,
    Failed,
}

/// A delivery receipt for consentry's message `id` (the `message_id` its `submit_sm_resp`
/// gave), from the recipient to the sender, in SMPP 3.4's Appendix B text with the
/// `receipted_message_id` and `message_state` TLVs. `done` is `YYMMDDhhmm`.
pub fn receipt(
    id: &str,
    recipient: &str,
    sender: &str,
    state: Final,
    error_code: Option<&str>,
    done: &str,
) -> Result<DeliverSm, String> {
    let (stat, message_state, delivered) = match state {
        Final::Delivered => ("DELIVRD", MessageState::Delivered, "001"),
        Final::Undelivered => ("UNDELIV", MessageState::Undeliverable, "000"),
        Final::Failed => ("REJECTD", MessageState::Rejected, "000"),
    };
    let error: String = error_code
        .unwrap_or("0")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(3)
        .collect();
    let body = format!(
        "id:{id} sub:001 dlvrd:{delivered} submit date:{done} done date:{done} stat:{stat} err:{error:0>3} text:"
    );
    let receipted = c_string::<65>(id)?;
    Ok(with_text(
        address(recipient)?,
        address(sender)?,
        0x04,
        0x00,
        body.into_bytes(),
        vec![
            MessageDeliveryRequestTlvValue::ReceiptedMessageId(receipted),
            MessageDeliveryRequestTlvValue::MessageState(message_state),
        ],
    ))
}

fn with_text(
    (source_ton, source): (Ton, COctetString<1, 21>),
    (dest_ton, destination): (Ton, COctetString<1, 21>),
    esm_class: u8,
    data_coding: u8,
    octets: Vec<u8>,
    mut tlvs: Vec<MessageDeliveryRequestTlvValue>,
) -> DeliverSm {
    // Longer than a short message can carry: in message_payload, as SMPP 3.4 allows.
    let short = if octets.len() <= 254 {
        OctetString::from_vec(octets).unwrap_or_default()
    } else {
        tlvs.push(MessageDeliveryRequestTlvValue::MessagePayload(
            MessagePayload::new(octets.into()),
        ));
        OctetString::empty()
    };
    DeliverSm::builder()
        .source_addr_ton(source_ton)
        .source_addr_npi(Npi::Isdn)
        .source_addr(source)
        .dest_addr_ton(dest_ton)
        .dest_addr_npi(Npi::Isdn)
        .destination_addr(destination)
        .esm_class(EsmClass::from(esm_class))
        .data_coding(DataCoding::from(data_coding))
        .short_message(short)
        .tlvs(tlvs)
        .build()
}

/// An E.164 number as an international SMPP address (digits, no `+`); anything else (an
/// alphanumeric sender) as alphanumeric.
fn address(number: &str) -> Result<(Ton, COctetString<1, 21>), String> {
    match number.strip_prefix('+') {
        Some(digits) if digits.chars().all(|c| c.is_ascii_digit()) => {
            Ok((Ton::International, c_string(digits)?))
        }
        _ => Ok((Ton::Alphanumeric, c_string(number)?)),
    }
}

fn c_string<const MAX: usize>(text: &str) -> Result<COctetString<1, MAX>, String> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    COctetString::from_vec(bytes)
        .map_err(|error| format!("{text:?} is not an SMPP address: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_says_what_smpp_3_4_appendix_b_says() {
        let pdu = receipt(
            "msg_01",
            "+14155550123",
            "+12025550100",
            Final::Delivered,
            None,
            "2611181800",
        )
        .unwrap();
        let text = String::from_utf8(pdu.short_message().as_ref().to_vec()).unwrap();
        assert_eq!(
            text,
            "id:msg_01 sub:001 dlvrd:001 submit date:2611181800 done date:2611181800 stat:DELIVRD err:000 text:"
        );
        assert_eq!(u8::from(pdu.esm_class), 0x04);
        assert_eq!(pdu.source_addr.as_str(), "14155550123");
        assert_eq!(pdu.tlvs().len(), 2);
    }

    #[test]
    fn a_long_reply_goes_in_message_payload() {
        let pdu = mo("+14155550123", "+12025550100", &"é".repeat(300)).unwrap();
        assert!(pdu.short_message().as_ref().is_empty());
        assert_eq!(pdu.tlvs().len(), 1);
        let short = mo("+14155550123", "ACME", "STOP").unwrap();
        assert_eq!(short.short_message().as_ref(), b"STOP");
        assert_eq!(short.dest_addr_ton, Ton::Alphanumeric);
    }
}
