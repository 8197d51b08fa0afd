//! Instants written as RFC 3339 `date-time`s, read strictly.
//!
//! `jiff` reads a superset (Temporal's ISO 8601 profile): offsets up to ±25:59:59, offsets
//! without a colon, times without seconds. An API that says "RFC 3339" takes exactly the
//! RFC's grammar (section 5.6):
//!
//! ```text
//! date-time      = full-date "T" full-time
//! full-date      = date-fullyear "-" date-month "-" date-mday
//! full-time      = partial-time time-offset
//! partial-time   = time-hour ":" time-minute ":" time-second [time-secfrac]
//! time-secfrac   = "." 1*DIGIT
//! time-offset    = "Z" / time-numoffset
//! time-numoffset = ("+" / "-") time-hour ":" time-minute      ; hour 00-23, minute 00-59
//! ```
//!
//! `T` and `Z` may be lower case (section 5.6, note), and a space may stand for `T` (the
//! section's note on readability). The calendar (month 13, 30 February, hour 24) is checked by
//! `jiff` once the shape is right.

use jiff::Timestamp;

/// Parses an RFC 3339 `date-time` into an instant, or says what is wrong with it.
pub fn parse(text: &str) -> Result<Timestamp, String> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
    };
    let at = |index: usize, allowed: &[u8]| bytes.get(index).is_some_and(|b| allowed.contains(b));
    let shape = "expected YYYY-MM-DDTHH:MM:SS[.frac] followed by Z or ±HH:MM";
    if !(digits(0..4)
        && at(4, b"-")
        && digits(5..7)
        && at(7, b"-")
        && digits(8..10)
        && at(10, b"Tt ")
        && digits(11..13)
        && at(13, b":")
        && digits(14..16)
        && at(16, b":")
        && digits(17..19))
    {
        return Err(shape.to_owned());
    }
    let mut rest = 19;
    if at(rest, b".") {
        let fraction = bytes[rest + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if fraction == 0 {
            return Err("a decimal point must be followed by at least one digit".to_owned());
        }
        rest += 1 + fraction;
    }
    let offset = &text[rest..];
    match offset.as_bytes() {
        [b'Z' | b'z'] => {}
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()) =>
        {
            let hours = (h1 - b'0') * 10 + (h2 - b'0');
            let minutes = (m1 - b'0') * 10 + (m2 - b'0');
            if hours > 23 || minutes > 59 {
                return Err(format!(
                    "the offset {}{hours:02}:{minutes:02} is out of range: RFC 3339 allows -23:59 to +23:59",
                    *sign as char
                ));
            }
        }
        [] => return Err("the time has no offset: add Z or ±HH:MM".to_owned()),
        _ => return Err(format!("{offset:?} is not an offset: {shape}")),
    }
    text.parse::<Timestamp>().map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfcs_own_examples_parse() {
        // RFC 3339 section 5.8.
        for (text, expected) in [
            ("1985-04-12T23:20:50.52Z", "1985-04-12T23:20:50.52Z"),
            ("1996-12-19T16:39:57-08:00", "1996-12-20T00:39:57Z"),
            ("1990-12-31T23:59:60Z", "1990-12-31T23:59:59Z"),
            ("1990-12-31T15:59:60-08:00", "1990-12-31T23:59:59Z"),
            ("1937-01-01T12:00:27.87+00:20", "1937-01-01T11:40:27.87Z"),
        ] {
            assert_eq!(
                parse(text).map(|t| t.to_string()),
                Ok(expected.to_owned()),
                "{text}"
            );
        }
    }

    #[test]
    fn the_offsets_edges() {
        assert!(parse("2026-11-19T01:30:00+23:59").is_ok());
        assert!(parse("2026-11-19T01:30:00-23:59").is_ok());
        assert!(parse("2026-11-19T01:30:00-00:00").is_ok());
        assert!(parse("2026-11-19t01:30:00z").is_ok());
        assert!(parse("2026-11-19 01:30:00Z").is_ok());
        for text in [
            "2026-11-19T01:30:00+25:00",
            "2026-11-19T01:30:00-24:00",
            "2026-11-19T01:30:00+05:60",
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains("out of range"), "{text}: {error}");
        }
    }

    #[test]
    fn what_the_rfc_does_not_allow_is_refused() {
        for text in [
            "2026-11-19T01:30Z",            // no seconds
            "2026-11-19T01:30:00+0500",     // no colon in the offset
            "2026-11-19T01:30:00+05",       // no offset minutes
            "2026-11-19T01:30:00+05:00:30", // offset seconds
            "2026-11-19T01:30:00",          // no offset at all
            "2026-11-19T01:30:00.Z",        // an empty fraction
            "20261119T013000Z",             // ISO 8601 basic format
            "2026-11-19T01:30:00Z[America/New_York]",
            " 2026-11-19T01:30:00Z",
            "2026-11-19T01:30:00Z ",
            "",
        ] {
            assert!(parse(text).is_err(), "{text:?} must be refused");
        }
    }

    #[test]
    fn the_calendar_is_checked() {
        for text in [
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-19T24:00:00Z",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }
}
