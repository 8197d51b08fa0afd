//! `domain::PhoneNumber::parse` and `domain::Sender::parse` (through them
//! `numbering::parse`) on any text, read in a region the first byte picks.
//!
//! Properties: no panic; a parsed number's E.164 form parses again, in the same region and
//! in the US, to the same number (E.164, country, calling code, geography); the E.164 form is
//! `+` and at most 15 digits (ITU-T E.164), starting with its calling code; a parsed sender's `as_str` parses
//! again to the same sender.
#![no_main]

use consentry::domain::{PhoneNumber, Region, Sender};
use fuzz_common::{region, Fields};
use libfuzzer_sys::fuzz_target;

fn same(a: &PhoneNumber, b: &PhoneNumber) -> bool {
    a.e164() == b.e164()
        && a.country() == b.country()
        && a.calling_code() == b.calling_code()
        && a.is_geographic() == b.is_geographic()
}

fuzz_target!(|data: &[u8]| {
    let mut fields = Fields::new(data);
    let region = region(fields.byte());
    let Ok(text) = std::str::from_utf8(fields.rest()) else {
        return;
    };

    if let Ok(number) = PhoneNumber::parse(text, region) {
        let e164 = number.e164();
        assert!(
            e164.starts_with('+')
                && e164.len() >= 3
                && e164.len() <= 16
                && e164[1..].bytes().all(|b| b.is_ascii_digit()),
            "{text:?} in {region:?} gave E.164 {e164:?}"
        );
        assert!(
            e164[1..].starts_with(&number.calling_code().to_string()),
            "{text:?}: {e164:?} does not start with its calling code {}",
            number.calling_code()
        );
        for again_in in [region, Region::US] {
            match PhoneNumber::parse(e164, again_in) {
                Ok(again) => assert!(
                    same(&number, &again),
                    "{text:?} in {region:?} gave {e164:?} (country {:?}, geographic {}), \
                     which read in {again_in:?} gives {:?} (country {:?}, geographic {})",
                    number.country(),
                    number.is_geographic(),
                    again.e164(),
                    again.country(),
                    again.is_geographic()
                ),
                Err(error) => panic!(
                    "{text:?} in {region:?} gave {e164:?}, which read in {again_in:?} is refused: {error}"
                ),
            }
        }
        let _ = number.masked();
    }

    if let Ok(sender) = Sender::parse(text, region) {
        let shown = sender.as_str().to_owned();
        match Sender::parse(&shown, region) {
            Ok(again) => assert!(
                again == sender,
                "sender {text:?} in {region:?} is {shown:?}, which parses to {:?}",
                again.as_str()
            ),
            Err(error) => {
                panic!("sender {text:?} in {region:?} is {shown:?}, which is refused: {error}")
            }
        }
        let _ = sender.masked();
    }
});
