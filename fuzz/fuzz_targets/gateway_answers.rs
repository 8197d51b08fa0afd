//! Gateways' answers to sends, as the upstream client reads them: any JSON value to
//! `dialect::gateway_error`, `dialect::{generic,twilio,telnyx,vonage}::message_id` and
//! `vonage::read_answer`; any text to `dialect::mask_numbers` and
//! `twilio::message_id_of_sid`; the fronts' error shapes for any code.
//!
//! Properties: no panic; `mask_numbers` leaves no run of six or more digits and keeps every
//! character that is not a digit; a Twilio SID made from a message id leads back to it.
#![no_main]

use consentry::dialect::{self, generic, telnyx, twilio, vonage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    let masked = dialect::mask_numbers(&text);
    let mut run = 0;
    for c in masked.chars() {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        assert!(run < 6, "mask_numbers({text:?}) = {masked:?} keeps six digits in a row");
    }
    let others = |s: &str| s.chars().filter(|c| !c.is_ascii_digit() && *c != '*').collect::<String>();
    assert_eq!(others(&masked), others(&text), "mask_numbers changed other characters");

    if let Some(id) = twilio::message_id_of_sid(&text) {
        assert_eq!(
            twilio::message_id_of_sid(&twilio::message_sid(&id)),
            Some(id.clone()),
            "a SID does not lead back to its id"
        );
    }
    let _ = twilio::front_error(&text);
    let _ = twilio::error_body(&text, &text);
    let _ = telnyx::error_body(&text, &text);
    let _ = vonage::status_for(&text);
    let _ = vonage::front_answer(&text, None, "3", Some(&text), &text);

    if let Ok(answer) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Some(error) = dialect::gateway_error(&answer) {
            assert_eq!(error, dialect::mask_numbers(&error), "gateway_error leaves digits");
        }
        let _ = generic::message_id(&answer);
        let _ = twilio::message_id(&answer);
        let _ = telnyx::message_id(&answer);
        let _ = vonage::message_id(&answer);
        let _ = vonage::read_answer(&answer);
    }
});
