//! SMPP PDUs as the front reads and writes them, without IO: the framing around rusmpp's
//! codec (a frame is read whole before it is decoded, so one that does not decode is answered
//! and the stream stays in step), what a `submit_sm` asks, and the answers consentry builds.

use bytes::{BufMut as _, BytesMut};
use rusmpp::decode::DecodeWithLength as _;
use rusmpp::encode::{Encode as _, Length as _};
use rusmpp::pdus::{DeliverSm, SubmitSm, SubmitSmResp};
use rusmpp::tlvs::{MessageSubmissionRequestTlvValue, TlvValue};
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{DataCoding, MessagePayload, Npi, RegisteredDelivery, Ton};
use rusmpp::{Command, CommandStatus};

use super::status;
use super::text::{self, Concat};

/// The largest PDU read: a `message_payload` of 64 KiB and the rest of a `submit_sm`.
pub const MAX_PDU: usize = 70 * 1024;

/// What a `submit_sm` asks, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSubmit {
    pub to: String,
    pub from: String,
    pub data_coding: u8,
    /// The part of a concatenated message this is, from its user data header.
    pub concat: Option<Concat>,
    /// The text's octets, after any user data header.
    pub octets: Vec<u8>,
    /// `registered_delivery` asks for a receipt of the final status.
    pub receipts: bool,
}

/// Reads addresses, coding and text octets (`short_message`, or `message_payload` when the
/// short message is empty), and the concatenation header if `esm_class` says there is one.
/// The error is the status to answer with.
pub fn read_submit(submit: &SubmitSm) -> Result<ReadSubmit, u32> {
    let mut octets: &[u8] = submit.short_message().as_ref();
    if octets.is_empty() {
        for tlv in submit.tlvs() {
            if let Some(rusmpp::tlvs::TlvValue::MessagePayload(payload)) = tlv.value() {
                octets = payload.value.as_ref();
            }
        }
    }
    let udhi = u8::from(submit.esm_class) & 0x40 != 0;
    let (concat, octets) = if udhi {
        let (udh, rest) = text::split_udh(octets).map_err(|_| status::INVALID_ESM_CLASS)?;
        (udh.concat, rest)
    } else {
        (None, octets)
    };
    Ok(ReadSubmit {
        to: address(submit.dest_addr_ton, submit.destination_addr.as_str()),
        from: address(submit.source_addr_ton, submit.source_addr.as_str()),
        data_coding: u8::from(submit.data_coding),
        concat,
        octets: octets.to_vec(),
        receipts: u8::from(submit.registered_delivery) & 0x03 != 0,
    })
}

/// An SMPP address as the API would take it: an international number gets its `+`.
fn address(ton: Ton, address: &str) -> String {
    if ton == Ton::International && !address.starts_with('+') {
        format!("+{address}")
    } else {
        address.to_owned()
    }
}

/// What an SMSC delivers to consentry (`deliver_sm`, read by the SMPP upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// A recipient's message: from its number, to the sender it wrote to.
    Message {
        from: String,
        to: String,
        body: String,
    },
    /// A delivery receipt: the SMSC's id of the message (its `submit_sm_resp` gave it), the
    /// final word (`DELIVRD`, `UNDELIV`...) and the error code, if not zero.
    Receipt {
        id: String,
        stat: String,
        error: Option<String>,
    },
}

/// Reads a `deliver_sm`: a receipt (`esm_class` message type 0x04, or a `receipted_message_id`)
/// from its TLVs or its SMPP 3.4 Appendix B text, anything else as a recipient's message.
pub fn read_deliver(deliver: &DeliverSm) -> Result<Delivered, String> {
    let mut octets: &[u8] = deliver.short_message().as_ref();
    let mut receipted = None;
    let mut state = None;
    for tlv in deliver.tlvs() {
        match tlv.value() {
            Some(TlvValue::MessagePayload(payload)) if octets.is_empty() => {
                octets = payload.value.as_ref();
            }
            Some(TlvValue::ReceiptedMessageId(id)) => receipted = Some(id.as_str().to_owned()),
            Some(TlvValue::MessageState(value)) => state = Some(*value),
            _ => {}
        }
    }
    let esm_class = u8::from(deliver.esm_class);
    if esm_class & 0x3C == 0x04 || receipted.is_some() {
        let text = String::from_utf8_lossy(octets);
        let word = |name: &str| {
            text.split_whitespace()
                .find_map(|part| part.strip_prefix(name))
                .map(str::to_owned)
        };
        let id = receipted
            .or_else(|| word("id:"))
            .ok_or("a receipt without the id of its message")?;
        let stat = word("stat:")
            .or_else(|| state.map(|state| format!("{state:?}").to_uppercase()))
            .ok_or("a receipt without a state")?;
        let error = word("err:").filter(|code| !code.trim_start_matches('0').is_empty());
        return Ok(Delivered::Receipt { id, stat, error });
    }
    let octets = if esm_class & 0x40 != 0 {
        text::split_udh(octets).map_err(|e| e.to_string())?.1
    } else {
        octets
    };
    let coding = text::coding(u8::from(deliver.data_coding)).map_err(|e| e.to_string())?;
    Ok(Delivered::Message {
        from: address(deliver.source_addr_ton, deliver.source_addr.as_str()),
        to: address(deliver.dest_addr_ton, deliver.destination_addr.as_str()),
        body: text::decode(coding, octets).map_err(|e| e.to_string())?,
    })
}

/// The `submit_sm` of a permitted message to an SMSC: GSM 7-bit when the text fits the
/// alphabet, UCS-2 otherwise, in `message_payload` when longer than 254 octets; a receipt asked
/// for, so that the final status comes back.
pub fn submit_for(to: &str, from: &str, body: &str) -> Result<SubmitSm, String> {
    let (data_coding, octets) = text::encode(body);
    let (dest_ton, dest) = smsc_address(to);
    let (source_ton, source) = smsc_address(from);
    let c_string = |text: &str| {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        COctetString::from_vec(bytes).map_err(|e| format!("{text:?} is not an SMPP address: {e}"))
    };
    let mut tlvs = Vec::new();
    let short = if octets.len() <= 254 {
        OctetString::from_vec(octets).map_err(|e| e.to_string())?
    } else {
        tlvs.push(MessageSubmissionRequestTlvValue::MessagePayload(
            MessagePayload::new(octets.into()),
        ));
        OctetString::empty()
    };
    Ok(SubmitSm::builder()
        .source_addr_ton(source_ton)
        .source_addr_npi(if source_ton == Ton::Alphanumeric {
            Npi::Unknown
        } else {
            Npi::Isdn
        })
        .source_addr(c_string(&source)?)
        .dest_addr_ton(dest_ton)
        .dest_addr_npi(Npi::Isdn)
        .destination_addr(c_string(&dest)?)
        .registered_delivery(RegisteredDelivery::from(0x01))
        .data_coding(DataCoding::from(data_coding))
        .short_message(short)
        .tlvs(tlvs)
        .build())
}

/// A number or sender as an SMSC takes it: E.164 without its `+` (TON 1), a short code's
/// digits (TON 3, network specific), or an alphanumeric sender (TON 5).
fn smsc_address(written: &str) -> (Ton, String) {
    match written.strip_prefix('+') {
        Some(digits) => (Ton::International, digits.to_owned()),
        None if written.chars().all(|c| c.is_ascii_digit()) => {
            (Ton::NetworkSpecific, written.to_owned())
        }
        None => (Ton::Alphanumeric, written.to_owned()),
    }
}

/// The answer to `submit_sm` number `sequence`: `code`, and consentry's message id when the
/// message was accepted.
pub fn submit_resp(sequence: u32, code: u32, id: &str) -> Command {
    let mut message_id = Vec::with_capacity(id.len() + 1);
    message_id.extend_from_slice(id.as_bytes());
    message_id.push(0);
    let message_id = COctetString::from_vec(message_id).unwrap_or_default();
    Command::new(
        CommandStatus::from(code),
        sequence,
        SubmitSmResp::new(message_id, Vec::new()),
    )
}

/// The command id and sequence number of a frame (after its length), read before decoding so
/// that a PDU that does not decode can still be answered.
pub fn header(frame: &[u8]) -> (u32, u32) {
    let word = |at: usize| {
        frame
            .get(at..at + 4)
            .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
            .map_or(0, u32::from_be_bytes)
    };
    (word(0), word(8))
}

/// Decodes a frame (the PDU after its length field); `None` if it is not a PDU rusmpp reads.
pub fn decode(mut frame: BytesMut) -> Option<Command> {
    let length = frame.len();
    Command::decode(&mut frame, length)
        .map(|(command, _)| command)
        .ok()
}

/// Appends `command`, with its length field, to `buffer`.
pub fn encode_into(command: &Command, buffer: &mut BytesMut) {
    let length = command.length();
    buffer.put_u32((4 + length) as u32);
    let start = buffer.len();
    buffer.resize(start + length, 0);
    command.encode(&mut buffer[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_encodes_and_decodes_back() {
        let mut buffer = BytesMut::new();
        encode_into(&submit_resp(7, status::OK, "msg_1"), &mut buffer);
        let length = u32::from_be_bytes(buffer[..4].try_into().unwrap()) as usize;
        assert_eq!(length, buffer.len());
        let frame = buffer.split_off(4);
        assert_eq!(header(&frame), (0x8000_0004, 7));
        let command = decode(frame).expect("decodes");
        assert_eq!(command.sequence_number(), 7);
    }

    #[test]
    fn receipts_and_messages_read_from_deliver_sm() {
        let receipt = crate::smpp::deliver::receipt(
            "msg_1",
            "+14155550123",
            "+12025550100",
            crate::smpp::deliver::Final::Undelivered,
            Some("12"),
            "2611181800",
        )
        .unwrap();
        assert_eq!(
            read_deliver(&receipt),
            Ok(Delivered::Receipt {
                id: "msg_1".into(),
                stat: "UNDELIV".into(),
                error: Some("012".into())
            })
        );
        let reply = crate::smpp::deliver::mo("+14155550123", "+12025550100", "STOP").unwrap();
        assert_eq!(
            read_deliver(&reply),
            Ok(Delivered::Message {
                from: "+14155550123".into(),
                to: "+12025550100".into(),
                body: "STOP".into()
            })
        );
    }

    #[test]
    fn a_submit_to_an_smsc_reads_back_as_consentry_would() {
        let submit = submit_for("+14155550123", "ACME", "Prix: 5€").unwrap();
        let read = read_submit(&submit).unwrap();
        assert_eq!(read.to, "+14155550123");
        assert_eq!(read.from, "ACME");
        assert!(read.receipts);
        let coding = text::coding(read.data_coding).unwrap();
        assert_eq!(text::decode(coding, &read.octets).unwrap(), "Prix: 5€");
        let long = submit_for("+14155550123", "+12025550100", &"é".repeat(300)).unwrap();
        assert!(
            long.short_message().as_ref().is_empty(),
            "in message_payload"
        );
        assert_eq!(read_submit(&long).unwrap().octets.len(), 300);
    }

    #[test]
    fn a_frame_that_does_not_decode_is_none_and_its_header_still_reads() {
        let frame = BytesMut::from(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 9, 0xFF][..]);
        assert_eq!(header(&frame), (4, 9));
        assert!(decode(frame).is_none());
        assert_eq!(header(&[1, 2]), (0, 0));
    }
}
