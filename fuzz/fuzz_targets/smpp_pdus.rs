//! The reading of untrusted SMPP PDUs, as the front's sessions and the upstream read them:
//! `smpp::pdu::header` and `smpp::pdu::decode` of any frame, `smpp::pdu::read_deliver` of a
//! `deliver_sm` (what an SMSC sends), and for a `submit_sm` `smpp::pdu::read_submit`,
//! `smpp::text::coding` and `smpp::text::decode` of its octets, and the parts it would hold
//! (`smpp::text::Reassembly`); and, for any text, `smpp::text::encode` (what a `deliver_sm`
//! carries) read back with `decode`.
//!
//! Properties: no panic; text that consentry encodes decodes back to itself; and a
//! `submit_sm` and a reply's `deliver_sm` that consentry builds from any text go through the
//! wire encoding and read back to that text.
#![no_main]

use bytes::BytesMut;
use consentry::smpp::{pdu, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pdu::header(data);
    if let Some(command) = pdu::decode(BytesMut::from(data)) {
        // Encoding what was decoded does not panic. (Whether rusmpp reads its own encoding of
        // any value back is rusmpp's property, not consentry's: the front only encodes what it
        // builds, checked below.)
        let mut encoded = BytesMut::new();
        pdu::encode_into(&command, &mut encoded);
        if let Some(rusmpp::Pdu::DeliverSm(deliver)) = command.pdu() {
            let _ = pdu::read_deliver(deliver);
        }
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
        // What consentry sends reads back as it was meant, through the wire encoding.
        let wire = |command: rusmpp::Command| {
            let mut bytes = BytesMut::new();
            pdu::encode_into(&command, &mut bytes);
            pdu::decode(bytes.split_off(4)).expect("consentry's own PDU decodes")
        };
        let ok = rusmpp::CommandStatus::EsmeRok;
        if let Ok(submit) = pdu::submit_for("+14155550123", "ACME", written) {
            let back = wire(rusmpp::Command::new(ok, 1, submit));
            let Some(rusmpp::Pdu::SubmitSm(submit)) = back.pdu() else {
                panic!("a submit_sm decodes as one")
            };
            let read = pdu::read_submit(submit).expect("consentry's submit reads");
            let coding = text::coding(read.data_coding).expect("its coding reads");
            assert_eq!(text::decode(coding, &read.octets).as_deref(), Ok(written));
        }
        if let Ok(reply) = consentry::smpp::deliver::mo("+14155550123", "+12025550100", written) {
            let back = wire(rusmpp::Command::new(ok, 2, reply));
            let Some(rusmpp::Pdu::DeliverSm(reply)) = back.pdu() else {
                panic!("a deliver_sm decodes as one")
            };
            match pdu::read_deliver(reply) {
                Ok(pdu::Delivered::Message { body, .. }) => assert_eq!(body, written),
                other => panic!("a reply read back as {other:?}"),
            }
        }
    }
});
