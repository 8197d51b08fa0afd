//! SMPP PDUs as the front reads and writes them, without IO: the framing around rusmpp's
//! codec (a frame is read whole before it is decoded, so one that does not decode is answered
//! and the stream stays in step), what a `submit_sm` asks, and the answers consentry builds.

use bytes::{BufMut as _, BytesMut};
use rusmpp::decode::DecodeWithLength as _;
use rusmpp::encode::{Encode as _, Length as _};
use rusmpp::pdus::{SubmitSm, SubmitSmResp};
use rusmpp::types::COctetString;
use rusmpp::values::Ton;
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
    fn a_frame_that_does_not_decode_is_none_and_its_header_still_reads() {
        let frame = BytesMut::from(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 9, 0xFF][..]);
        assert_eq!(header(&frame), (4, 9));
        assert!(decode(frame).is_none());
        assert_eq!(header(&[1, 2]), (0, 0));
    }
}
