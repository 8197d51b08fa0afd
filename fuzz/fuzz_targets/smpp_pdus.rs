//! The SMPP front's reading of untrusted PDUs, as a session reads them: `smpp::pdu::header`
//! and `smpp::pdu::decode` of any frame, then for a `submit_sm` `smpp::pdu::read_submit`,
//! `smpp::text::coding` and `smpp::text::decode` of its octets, and the parts it would hold
//! (`smpp::text::Reassembly`); and, for any text, `smpp::text::encode` (what a `deliver_sm`
//! carries) read back with `decode`.
//!
//! Properties: no panic; a frame that decodes re-encodes to a frame that decodes to the same
//! command; text that consentry encodes decodes back to itself.
#![no_main]

use bytes::BytesMut;
use consentry::smpp::{pdu, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pdu::header(data);
    if let Some(command) = pdu::decode(BytesMut::from(data)) {
        let mut again = BytesMut::new();
        pdu::encode_into(&command, &mut again);
        let frame = again.split_off(4);
        assert_eq!(
            pdu::decode(frame).as_ref(),
            Some(&command),
            "a decoded PDU re-encodes to itself"
        );
        if let Some(rusmpp::Pdu::SubmitSm(submit)) = command.pdu() {
            if let Ok(read) = pdu::read_submit(submit) {
                if let Ok(coding) = text::coding(read.data_coding) {
                    let _ = text::decode(coding, &read.octets);
                }
                if let Some(concat) = read.concat {
                    let mut parts = text::Reassembly::new(4);
                    let _ = parts.add(0u8, concat, read.octets.clone(), 0);
                    let _ = parts.expire(1, 0);
                }
            }
        }
    }
    if let Ok(written) = std::str::from_utf8(data) {
        let (data_coding, octets) = text::encode(written);
        let coding = text::coding(data_coding).expect("consentry's own coding reads");
        assert_eq!(
            text::decode(coding, &octets).as_deref(),
            Ok(written),
            "encoded text decodes back"
        );
    }
});
