//! SMPP 3.4 short-message text: what the octets of a `submit_sm`'s `short_message` mean, and
//! the reverse for a `deliver_sm`. Pure: octets in, strings out, and a bounded store for the
//! parts of concatenated messages, with the clock passed in.
//!
//! - [`coding`] reads `data_coding`, refusing binary and codings consentry does not read: a
//!   compliance check on text it cannot read would be a check on nothing;
//! - [`decode`] turns the octets into text, refusing malformed input rather than guessing;
//! - [`encode`] picks the GSM 7-bit default alphabet when it can hold the text, UCS-2 if not;
//! - [`split_udh`] reads a user data header (`esm_class` bit `0x40`, UDHI) for its
//!   concatenation reference;
//! - [`Reassembly`] holds the parts of concatenated messages until the whole text is there,
//!   since consent and content rules apply to the message, not to a fragment of it.

use std::collections::HashMap;
use std::hash::Hash;

/// `data_coding` of the GSM 7-bit default alphabet (SMPP's "SMSC default alphabet").
const DATA_CODING_GSM7: u8 = 0x00;
/// `data_coding` of UCS-2 (sent as UTF-16BE, which UCS-2 readers take code unit by unit).
const DATA_CODING_UCS2: u8 = 0x08;
/// The GSM 7-bit escape to the extension table.
const ESC: u8 = 0x1B;

/// Why a short message's text could not be read. Each message says what was wrong in words an
/// operator can act on, since these end up in refusals and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// A `data_coding` that is binary, or text in a coding consentry does not read.
    #[error("{}", unsupported_coding(*.0))]
    UnsupportedCoding(u8),
    /// Octets that are not valid in their declared coding.
    #[error("the short message is not valid text: {0}")]
    Invalid(String),
    /// A user data header that does not parse.
    #[error("the user data header is malformed: {0}")]
    InvalidUdh(String),
}

/// The operator's sentence for a refused `data_coding`: binary is told apart from text in a
/// coding that is merely unsupported, since the sender's fix differs.
fn unsupported_coding(code: u8) -> String {
    let label = match code {
        0x02 | 0x04 | 0xF4..=0xF7 => {
            return format!("data_coding {code:#04x} (8-bit binary) is not text");
        }
        0x05 => "JIS X 0208-1990",
        0x06 => "Cyrillic, ISO-8859-5",
        0x07 => "Latin/Hebrew, ISO-8859-8",
        0x09 => "pictogram encoding",
        0x0A => "ISO-2022-JP music codes",
        0x0D => "extended Kanji, JIS X 0212-1990",
        0x0E => "KS C 5601",
        0xC0..=0xEF => "message waiting indication group",
        _ => "reserved",
    };
    format!("data_coding {code:#04x} ({label}) is not a text coding consentry reads")
}

/// The text codings consentry reads from a `short_message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// GSM 03.38 (3GPP TS 23.038) default alphabet, one septet per octet: SMPP carries it
    /// unpacked.
    Gsm7,
    /// IA5, which is 7-bit ASCII.
    Ascii,
    /// ISO-8859-1.
    Latin1,
    /// UCS-2 big-endian; UTF-16 surrogate pairs are accepted, since many ESMEs send UTF-16 here.
    Ucs2,
}

/// The coding a `data_coding` value declares, or why its text cannot be read.
///
/// `0x00` (SMSC default alphabet) is taken as the GSM 7-bit default alphabet, as SMSCs do. In
/// the GSM general data coding group `0xF0..=0xF3` (bit 2 clear, bits 1-0 a message class) is
/// GSM 7-bit; `0xF4..=0xF7` (bit 2 set) is 8-bit data, refused as binary; `0xF8..=0xFF` set a
/// reserved bit and are refused.
pub fn coding(data_coding: u8) -> Result<Coding, TextError> {
    match data_coding {
        0x00 | 0xF0..=0xF3 => Ok(Coding::Gsm7),
        0x01 => Ok(Coding::Ascii),
        0x03 => Ok(Coding::Latin1),
        0x08 => Ok(Coding::Ucs2),
        other => Err(TextError::UnsupportedCoding(other)),
    }
}

/// The GSM 7-bit default alphabet, indexed by septet: 3GPP TS 23.038, section 6.2.1.
/// Entry `0x1B` is the escape to the extension table, never a character of its own; it holds
/// U+001B only as a placeholder, which [`decode`] and [`encode`] both treat specially.
const GSM7_DEFAULT: [char; 128] = [
    // 0x00
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å',
    // 0x10
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1B}', 'Æ', 'æ', 'ß', 'É',
    // 0x20
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/',
    // 0x30
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?',
    // 0x40
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O',
    // 0x50
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§',
    // 0x60
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o',
    // 0x70
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à',
];

/// The GSM 7-bit default alphabet extension table (code after an escape, character): 3GPP TS
/// 23.038, section 6.2.1.1. Only the characters it defines; other codes fall back to the default
/// table when decoding.
const GSM7_EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'), // form feed
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// The default-table character of a septet. `code` must be below 0x80.
fn gsm7_default(code: u8) -> char {
    GSM7_DEFAULT[usize::from(code & 0x7F)]
}

/// The character an escaped septet stands for. Per 3GPP TS 23.038 an extension code the table
/// does not define is shown as the default-table character of that code, and an escape after
/// an escape (reserved for a further table) is shown as a space.
fn gsm7_extension(code: u8) -> char {
    if code == ESC {
        return ' ';
    }
    GSM7_EXTENSION
        .iter()
        .find(|(c, _)| *c == code)
        .map_or_else(|| gsm7_default(code), |(_, ch)| *ch)
}

/// The text of a `short_message` (after any user data header) in its declared coding.
/// Malformed octets are an error rather than a replacement character: a compliance check must
/// read the text the handset would show, not a guess at it.
pub fn decode(coding: Coding, bytes: &[u8]) -> Result<String, TextError> {
    match coding {
        Coding::Gsm7 => decode_gsm7(bytes),
        Coding::Ascii => decode_ascii(bytes),
        Coding::Latin1 => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
        Coding::Ucs2 => decode_ucs2(bytes),
    }
}

/// Unpacked GSM 7-bit: one septet per octet, escapes resolved through the extension table.
fn decode_gsm7(bytes: &[u8]) -> Result<String, TextError> {
    let mut text = String::with_capacity(bytes.len());
    let mut octets = bytes.iter().copied().enumerate();
    while let Some((offset, b)) = octets.next() {
        check_septet(offset, b)?;
        if b != ESC {
            text.push(gsm7_default(b));
            continue;
        }
        let Some((next_offset, code)) = octets.next() else {
            return Err(TextError::Invalid(format!(
                "the GSM 7-bit text ends in an escape (offset {offset}) with nothing after it"
            )));
        };
        check_septet(next_offset, code)?;
        text.push(gsm7_extension(code));
    }
    Ok(text)
}

/// A GSM 7-bit octet in unpacked form holds a septet: its top bit must be clear.
fn check_septet(offset: usize, b: u8) -> Result<(), TextError> {
    if b > 0x7F {
        return Err(TextError::Invalid(format!(
            "octet {b:#04x} at offset {offset} is not a GSM 7-bit septet"
        )));
    }
    Ok(())
}

/// IA5: 7-bit ASCII, so an octet with its top bit set is not text in this coding.
fn decode_ascii(bytes: &[u8]) -> Result<String, TextError> {
    match bytes.iter().position(|b| !b.is_ascii()) {
        Some(offset) => Err(TextError::Invalid(format!(
            "octet {:#04x} at offset {offset} is not ASCII",
            bytes[offset]
        ))),
        None => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
    }
}

/// UCS-2 big-endian, read as UTF-16BE so surrogate pairs give the characters they encode.
fn decode_ucs2(bytes: &[u8]) -> Result<String, TextError> {
    if bytes.len() % 2 != 0 {
        return Err(TextError::Invalid(format!(
            "UCS-2 text has an odd number of octets ({})",
            bytes.len()
        )));
    }
    let units = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
    char::decode_utf16(units)
        .enumerate()
        .map(|(index, unit)| {
            unit.map_err(|e| {
                TextError::Invalid(format!(
                    "UCS-2 text has an unpaired surrogate {:#06x} near code unit {index}",
                    e.unpaired_surrogate()
                ))
            })
        })
        .collect()
}

/// Text as a `deliver_sm` carries it: `(data_coding, short_message)`. GSM 7-bit unpacked
/// (`0x00`) when every character is in the default or extension table, since that is what
/// every handset reads and what costs least; UCS-2 (`0x08`, as UTF-16BE) otherwise. Splitting
/// long text into parts is the caller's.
pub fn encode(text: &str) -> (u8, Vec<u8>) {
    match encode_gsm7(text) {
        Some(octets) => (DATA_CODING_GSM7, octets),
        None => (
            DATA_CODING_UCS2,
            text.encode_utf16().flat_map(u16::to_be_bytes).collect(),
        ),
    }
}

/// The unpacked GSM 7-bit octets of the text, or `None` if some character is in neither table.
fn encode_gsm7(text: &str) -> Option<Vec<u8>> {
    let mut octets = Vec::with_capacity(text.len());
    for ch in text.chars() {
        if let Some(code) = default_code(ch) {
            octets.push(code);
        } else {
            let (code, _) = GSM7_EXTENSION.iter().find(|(_, c)| *c == ch)?;
            octets.extend_from_slice(&[ESC, *code]);
        }
    }
    Some(octets)
}

/// The default-table septet of a character; never the escape's placeholder.
fn default_code(ch: char) -> Option<u8> {
    GSM7_DEFAULT
        .iter()
        .zip(0u8..)
        .find(|(c, code)| **c == ch && *code != ESC)
        .map(|(_, code)| code)
}

/// What a user data header says that consentry uses: today, only concatenation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Udh {
    /// The concatenation information element, if the header has one (the last, if several).
    pub concat: Option<Concat>,
}

/// One part of a concatenated message (3GPP TS 23.040, IEI 0x00 and 0x08).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concat {
    /// The sender's reference shared by every part of one message (8-bit references are
    /// widened).
    pub reference: u16,
    /// How many parts the message has, at least 1.
    pub total: u8,
    /// Which part this is, from 1 to `total`.
    pub seq: u8,
}

/// Concatenated short messages, 8-bit reference.
const IEI_CONCAT_8: u8 = 0x00;
/// Concatenated short messages, 16-bit reference.
const IEI_CONCAT_16: u8 = 0x08;

/// The user data header at the start of a `short_message` whose `esm_class` has UDHI (`0x40`)
/// set, and the octets after it, which are the text. The first octet is the header's length
/// (not counting itself); the header is a run of information elements (IEI, length, data).
/// Concatenation IEs are read and checked; others are skipped.
///
/// For GSM 7-bit text, SMPP carries septets unpacked, one per octet, so the text is simply the
/// octets after the header: the fill bits that align packed septets after a header on the air
/// interface do not exist here.
pub fn split_udh(bytes: &[u8]) -> Result<(Udh, &[u8]), TextError> {
    let bad = |why: String| Err(TextError::InvalidUdh(why));
    let Some((&udhl, rest)) = bytes.split_first() else {
        return bad("the message is empty, with no header length".to_string());
    };
    let udhl = usize::from(udhl);
    if udhl > rest.len() {
        return bad(format!(
            "the header length {udhl} is past the end of the {} octets after it",
            rest.len()
        ));
    }
    let (mut header, text) = rest.split_at(udhl);
    let mut udh = Udh::default();
    while let Some((&iei, after)) = header.split_first() {
        let Some((&len, after)) = after.split_first() else {
            return bad(format!("IE {iei:#04x} has no length octet"));
        };
        let len = usize::from(len);
        if len > after.len() {
            return bad(format!(
                "IE {iei:#04x} says {len} octets but the header has {} left",
                after.len()
            ));
        }
        let (data, next) = after.split_at(len);
        match iei {
            IEI_CONCAT_8 => udh.concat = Some(concat(iei, data, 3)?),
            IEI_CONCAT_16 => udh.concat = Some(concat(iei, data, 4)?),
            _ => {}
        }
        header = next;
    }
    Ok((udh, text))
}

/// A concatenation IE's data: the reference (1 or 2 octets, big-endian), total, then seq.
fn concat(iei: u8, data: &[u8], want: usize) -> Result<Concat, TextError> {
    let bad = |why: String| Err(TextError::InvalidUdh(why));
    let (reference, total, seq) = match *data {
        [r, total, seq] if want == 3 => (u16::from(r), total, seq),
        [hi, lo, total, seq] if want == 4 => (u16::from_be_bytes([hi, lo]), total, seq),
        _ => {
            return bad(format!(
                "concatenation IE {iei:#04x} has {} octets, not {want}",
                data.len()
            ));
        }
    };
    if total == 0 {
        return bad("concatenation says the message has 0 parts".to_string());
    }
    if seq == 0 || seq > total {
        return bad(format!("concatenation part {seq} is outside 1..={total}"));
    }
    Ok(Concat {
        reference,
        total,
        seq,
    })
}

/// What became of a part given to [`Reassembly::add`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Held; other parts are still missing.
    Waiting,
    /// The last missing part: the whole message's octets, parts joined in seq order, to be
    /// decoded as one (a character may straddle two parts). Nothing is held.
    Complete(Vec<u8>),
    /// This seq was already held for this reference; the first copy is kept.
    Duplicate,
    /// The reference is held with a different total: the sender reused it, or one of them is
    /// wrong. The held parts are dropped and this one is not kept.
    Mismatch,
    /// A new reference while `max_pending` messages are held: nothing is kept.
    Full,
    /// A seq of 0 or past the total, or a total of 0 (which [`split_udh`] never gives).
    Invalid,
}

/// One incomplete message: its parts by seq, and when its first part came.
#[derive(Debug)]
struct Pending {
    /// `parts[seq - 1]`; the length is the message's total.
    parts: Vec<Option<Vec<u8>>>,
    /// How many of `parts` are filled.
    received: usize,
    first_ms: u64,
}

/// Incomplete concatenated messages, keyed by a caller's key (for example the bind and the
/// source address, since references are only unique per sender) and the reference. Bounded by
/// `max_pending` messages, each at most 255 parts, so a sender that never finishes its messages
/// cannot grow it without end; [`Reassembly::expire`] ages out the rest. No IO, no clock: times
/// are the caller's milliseconds.
#[derive(Debug)]
pub struct Reassembly<K> {
    max_pending: usize,
    pending: HashMap<(K, u16), Pending>,
}

impl<K: Eq + Hash + Clone> Reassembly<K> {
    /// An empty store holding at most `max_pending` incomplete messages.
    pub fn new(max_pending: usize) -> Self {
        Reassembly {
            max_pending,
            pending: HashMap::new(),
        }
    }

    /// Adds one part's octets (after its header). A message of one part completes at once
    /// without taking a place.
    pub fn add(&mut self, key: K, concat: Concat, text: Vec<u8>, now_ms: u64) -> Added {
        let total = usize::from(concat.total);
        let seq = usize::from(concat.seq);
        if total == 0 || seq == 0 || seq > total {
            return Added::Invalid;
        }
        let id = (key, concat.reference);
        let Some(entry) = self.pending.get_mut(&id) else {
            if total == 1 {
                return Added::Complete(text);
            }
            if self.pending.len() >= self.max_pending {
                return Added::Full;
            }
            let mut parts = vec![None; total];
            parts[seq - 1] = Some(text);
            self.pending.insert(
                id,
                Pending {
                    parts,
                    received: 1,
                    first_ms: now_ms,
                },
            );
            return Added::Waiting;
        };
        if entry.parts.len() != total {
            self.pending.remove(&id);
            return Added::Mismatch;
        }
        let slot = &mut entry.parts[seq - 1];
        if slot.is_some() {
            return Added::Duplicate;
        }
        *slot = Some(text);
        entry.received += 1;
        if entry.received < total {
            return Added::Waiting;
        }
        let parts = std::mem::take(&mut entry.parts);
        self.pending.remove(&id);
        Added::Complete(parts.into_iter().flatten().flatten().collect())
    }

    /// Drops the messages whose first part came more than `max_age_ms` before `now_ms`, and
    /// returns their keys (once per dropped message), so the caller can answer the held parts
    /// with an error.
    pub fn expire(&mut self, now_ms: u64, max_age_ms: u64) -> Vec<K> {
        let mut expired = Vec::new();
        self.pending.retain(|(key, _), pending| {
            let old = now_ms.saturating_sub(pending.first_ms) > max_age_ms;
            if old {
                expired.push(key.clone());
            }
            !old
        });
        expired
    }

    /// How many incomplete messages are held.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no incomplete message is held.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gsm(bytes: &[u8]) -> String {
        decode(Coding::Gsm7, bytes).expect("valid GSM 7-bit")
    }

    #[test]
    fn data_coding_values() {
        assert_eq!(coding(0x00), Ok(Coding::Gsm7));
        assert_eq!(coding(0x01), Ok(Coding::Ascii));
        assert_eq!(coding(0x03), Ok(Coding::Latin1));
        assert_eq!(coding(0x08), Ok(Coding::Ucs2));
        for class in 0xF0..=0xF3 {
            assert_eq!(coding(class), Ok(Coding::Gsm7));
        }
        for refused in [
            0x02, 0x04, 0x05, 0x06, 0x07, 0x09, 0x0F, 0xC0, 0xF4, 0xF7, 0xF8, 0xFF,
        ] {
            assert_eq!(coding(refused), Err(TextError::UnsupportedCoding(refused)));
        }
    }

    #[test]
    fn unsupported_coding_messages() {
        assert_eq!(
            TextError::UnsupportedCoding(0x04).to_string(),
            "data_coding 0x04 (8-bit binary) is not text"
        );
        assert_eq!(
            TextError::UnsupportedCoding(0xF5).to_string(),
            "data_coding 0xf5 (8-bit binary) is not text"
        );
        assert_eq!(
            TextError::UnsupportedCoding(0x06).to_string(),
            "data_coding 0x06 (Cyrillic, ISO-8859-5) is not a text coding consentry reads"
        );
    }

    #[test]
    fn default_table_samples() {
        let samples = [
            (0x00, '@'),
            (0x01, '£'),
            (0x02, '$'),
            (0x03, '¥'),
            (0x04, 'è'),
            (0x05, 'é'),
            (0x09, 'Ç'),
            (0x0A, '\n'),
            (0x0B, 'Ø'),
            (0x0D, '\r'),
            (0x0E, 'Å'),
            (0x10, 'Δ'),
            (0x11, '_'),
            (0x12, 'Φ'),
            (0x15, 'Ω'),
            (0x1A, 'Ξ'),
            (0x1C, 'Æ'),
            (0x1E, 'ß'),
            (0x1F, 'É'),
            (0x20, ' '),
            (0x24, '¤'),
            (0x30, '0'),
            (0x40, '¡'),
            (0x41, 'A'),
            (0x5B, 'Ä'),
            (0x5C, 'Ö'),
            (0x5D, 'Ñ'),
            (0x5E, 'Ü'),
            (0x5F, '§'),
            (0x60, '¿'),
            (0x61, 'a'),
            (0x7A, 'z'),
            (0x7B, 'ä'),
            (0x7C, 'ö'),
            (0x7D, 'ñ'),
            (0x7E, 'ü'),
            (0x7F, 'à'),
        ];
        for (code, want) in samples {
            assert_eq!(gsm(&[code]), want.to_string(), "septet {code:#04x}");
        }
    }

    #[test]
    fn extension_table_every_char() {
        let all = [
            (0x0A, '\u{0C}'),
            (0x14, '^'),
            (0x28, '{'),
            (0x29, '}'),
            (0x2F, '\\'),
            (0x3C, '['),
            (0x3D, '~'),
            (0x3E, ']'),
            (0x40, '|'),
            (0x65, '€'),
        ];
        for (code, want) in all {
            assert_eq!(gsm(&[ESC, code]), want.to_string(), "escaped {code:#04x}");
        }
    }

    #[test]
    fn unknown_extension_shows_default_char() {
        // 0x41 is undefined in the extension table: shown as 'A'.
        assert_eq!(gsm(&[ESC, 0x41, 0x62]), "Ab");
        // Escape after escape is reserved: a space, then the next septet as usual.
        assert_eq!(gsm(&[ESC, ESC, 0x41]), " A");
    }

    #[test]
    fn gsm7_errors() {
        assert!(matches!(
            decode(Coding::Gsm7, &[0x41, ESC]),
            Err(TextError::Invalid(_))
        ));
        assert!(matches!(
            decode(Coding::Gsm7, &[0x41, 0x80]),
            Err(TextError::Invalid(_))
        ));
        assert!(matches!(
            decode(Coding::Gsm7, &[ESC, 0xE5]),
            Err(TextError::Invalid(_))
        ));
        assert_eq!(decode(Coding::Gsm7, &[]), Ok(String::new()));
    }

    #[test]
    fn default_table_is_one_to_one() {
        for code in 0u8..0x80 {
            if code == ESC {
                continue;
            }
            let ch = gsm7_default(code);
            assert_eq!(default_code(ch), Some(code), "septet {code:#04x} ({ch:?})");
        }
        assert_eq!(default_code('\u{1B}'), None);
    }

    #[test]
    fn ascii_and_latin1() {
        assert_eq!(
            decode(Coding::Ascii, b"STOP now"),
            Ok("STOP now".to_string())
        );
        assert!(matches!(
            decode(Coding::Ascii, &[0x41, 0xE9]),
            Err(TextError::Invalid(_))
        ));
        assert_eq!(
            decode(Coding::Latin1, &[0x43, 0x61, 0x66, 0xE9, 0xFF]),
            Ok("Caféÿ".to_string())
        );
    }

    #[test]
    fn ucs2_decoding() {
        assert_eq!(
            decode(Coding::Ucs2, &[0x04, 0x1F, 0x00, 0x21]),
            Ok("П!".to_string())
        );
        // U+1F600 as a surrogate pair.
        assert_eq!(
            decode(Coding::Ucs2, &[0xD8, 0x3D, 0xDE, 0x00]),
            Ok("😀".to_string())
        );
        assert!(matches!(
            decode(Coding::Ucs2, &[0x00, 0x41, 0x00]),
            Err(TextError::Invalid(_))
        ));
        // A lone high surrogate, at the end and before an ordinary unit.
        assert!(matches!(
            decode(Coding::Ucs2, &[0xD8, 0x3D]),
            Err(TextError::Invalid(_))
        ));
        assert!(matches!(
            decode(Coding::Ucs2, &[0xD8, 0x3D, 0x00, 0x41]),
            Err(TextError::Invalid(_))
        ));
        // A lone low surrogate.
        assert!(matches!(
            decode(Coding::Ucs2, &[0xDE, 0x00]),
            Err(TextError::Invalid(_))
        ));
    }

    #[test]
    fn gsm_round_trip_with_extension_chars() {
        let text = "Price: 5€ {promo} [x] ~a|b\\c^ @£$¥ Reply STOP";
        let (dc, octets) = encode(text);
        assert_eq!(dc, 0x00);
        assert!(octets.windows(2).any(|w| w == [ESC, 0x65]));
        assert!(octets.iter().all(|&b| b < 0x80));
        let back = decode(coding(dc).expect("coding"), &octets).expect("decode");
        assert_eq!(back, text);
        assert_eq!(encode("{}").1, vec![ESC, 0x28, ESC, 0x29]);
        assert_eq!(encode("\u{0C}").1, vec![ESC, 0x0A]);
    }

    #[test]
    fn ucs2_round_trip_with_emoji_and_cyrillic() {
        for text in ["Привет, мир", "Hi 😀 👍🏽", "Ответ STOP 🛑"] {
            let (dc, octets) = encode(text);
            assert_eq!(dc, 0x08, "{text}");
            let back = decode(coding(dc).expect("coding"), &octets).expect("decode");
            assert_eq!(back, text);
        }
        assert_eq!(encode("😀").1, vec![0xD8, 0x3D, 0xDE, 0x00]);
        // A character outside both tables (lowercase ç, backtick, escape) forces UCS-2.
        assert_eq!(encode("ça").0, 0x08);
        assert_eq!(encode("`").0, 0x08);
        assert_eq!(encode("\u{1B}").0, 0x08);
    }

    #[test]
    fn udh_8bit_concat() {
        let bytes = [0x05, 0x00, 0x03, 0x2A, 0x02, 0x01, 0x48, 0x69];
        let (udh, text) = split_udh(&bytes).expect("udh");
        assert_eq!(
            udh.concat,
            Some(Concat {
                reference: 0x2A,
                total: 2,
                seq: 1
            })
        );
        assert_eq!(text, b"Hi");
    }

    #[test]
    fn udh_16bit_concat() {
        let bytes = [0x06, 0x08, 0x04, 0x12, 0x34, 0x03, 0x03, 0x00, 0x41];
        let (udh, text) = split_udh(&bytes).expect("udh");
        assert_eq!(
            udh.concat,
            Some(Concat {
                reference: 0x1234,
                total: 3,
                seq: 3
            })
        );
        assert_eq!(text, &[0x00, 0x41]);
    }

    #[test]
    fn udh_skips_other_ies_and_allows_none() {
        // A national language shift IE (0x24), then an 8-bit concat.
        let bytes = [0x08, 0x24, 0x01, 0x05, 0x00, 0x03, 0x07, 0x04, 0x02, 0x41];
        let (udh, text) = split_udh(&bytes).expect("udh");
        assert_eq!(
            udh.concat,
            Some(Concat {
                reference: 7,
                total: 4,
                seq: 2
            })
        );
        assert_eq!(text, b"A");
        let (udh, text) = split_udh(&[0x03, 0x24, 0x01, 0x05, 0x41]).expect("udh");
        assert_eq!(udh, Udh::default());
        assert_eq!(text, b"A");
        let (udh, text) = split_udh(&[0x00]).expect("empty header");
        assert_eq!(udh.concat, None);
        assert!(text.is_empty());
    }

    #[test]
    fn udh_errors() {
        let cases: [(&str, &[u8]); 9] = [
            ("empty", &[]),
            ("udhl past end", &[0x05, 0x00, 0x03, 0x01]),
            ("ie without length", &[0x01, 0x24]),
            (
                "ie overruns header",
                &[0x03, 0x24, 0x05, 0x00, 0x41, 0x41, 0x41],
            ),
            ("8-bit concat wrong length", &[0x04, 0x00, 0x02, 0x01, 0x01]),
            (
                "16-bit concat wrong length",
                &[0x05, 0x08, 0x03, 0x00, 0x01, 0x01],
            ),
            ("total 0", &[0x05, 0x00, 0x03, 0x01, 0x00, 0x00]),
            ("seq 0", &[0x05, 0x00, 0x03, 0x01, 0x02, 0x00]),
            (
                "seq past total",
                &[0x06, 0x08, 0x04, 0x00, 0x01, 0x02, 0x03],
            ),
        ];
        for (name, bytes) in cases {
            assert!(
                matches!(split_udh(bytes), Err(TextError::InvalidUdh(_))),
                "{name}"
            );
        }
    }

    fn part(reference: u16, total: u8, seq: u8) -> Concat {
        Concat {
            reference,
            total,
            seq,
        }
    }

    #[test]
    fn reassembly_out_of_order() {
        let mut store = Reassembly::new(4);
        assert!(store.is_empty());
        assert_eq!(store.add("a", part(9, 3, 3), "c".into(), 0), Added::Waiting);
        assert_eq!(store.add("a", part(9, 3, 1), "a".into(), 1), Added::Waiting);
        // Same reference from another key is another message.
        assert_eq!(store.add("b", part(9, 3, 2), "x".into(), 1), Added::Waiting);
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.add("a", part(9, 3, 2), "b".into(), 2),
            Added::Complete("abc".into())
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn reassembly_single_part_and_invalid() {
        let mut store = Reassembly::new(0);
        assert_eq!(
            store.add(1, part(5, 1, 1), "whole".into(), 0),
            Added::Complete("whole".into())
        );
        assert_eq!(store.add(1, part(5, 0, 0), "x".into(), 0), Added::Invalid);
        assert_eq!(store.add(1, part(5, 2, 3), "x".into(), 0), Added::Invalid);
        assert!(store.is_empty());
    }

    #[test]
    fn reassembly_duplicate_keeps_first() {
        let mut store = Reassembly::new(4);
        assert_eq!(
            store.add(1, part(5, 2, 1), "first".into(), 0),
            Added::Waiting
        );
        assert_eq!(
            store.add(1, part(5, 2, 1), "again".into(), 1),
            Added::Duplicate
        );
        assert_eq!(
            store.add(1, part(5, 2, 2), "+second".into(), 2),
            Added::Complete("first+second".into())
        );
    }

    #[test]
    fn reassembly_mismatch_drops_everything() {
        let mut store = Reassembly::new(4);
        assert_eq!(store.add(1, part(5, 2, 1), "a".into(), 0), Added::Waiting);
        assert_eq!(store.add(1, part(5, 3, 2), "b".into(), 1), Added::Mismatch);
        assert!(store.is_empty());
        // The next part with that reference starts afresh.
        assert_eq!(store.add(1, part(5, 3, 2), "b".into(), 2), Added::Waiting);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn reassembly_full() {
        let mut store = Reassembly::new(2);
        assert_eq!(store.add(1, part(1, 2, 1), "a".into(), 0), Added::Waiting);
        assert_eq!(store.add(1, part(2, 2, 1), "a".into(), 0), Added::Waiting);
        assert_eq!(store.add(1, part(3, 2, 1), "a".into(), 0), Added::Full);
        assert_eq!(store.add(2, part(1, 2, 1), "a".into(), 0), Added::Full);
        // Parts of held messages are still taken, and completing one frees a place.
        assert_eq!(
            store.add(1, part(1, 2, 2), "b".into(), 1),
            Added::Complete("ab".into())
        );
        assert_eq!(store.add(1, part(3, 2, 1), "a".into(), 1), Added::Waiting);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn reassembly_expire_by_first_part() {
        let mut store = Reassembly::new(4);
        assert_eq!(
            store.add("old", part(1, 3, 1), "a".into(), 1_000),
            Added::Waiting
        );
        assert_eq!(
            store.add("new", part(1, 2, 1), "a".into(), 5_000),
            Added::Waiting
        );
        // A later part does not renew the message's age.
        assert_eq!(
            store.add("old", part(1, 3, 2), "b".into(), 5_500),
            Added::Waiting
        );
        assert_eq!(store.expire(6_000, 5_000), Vec::<&str>::new());
        assert_eq!(store.expire(6_001, 5_000), vec!["old"]);
        assert_eq!(store.len(), 1);
        assert_eq!(store.expire(u64::MAX, 5_000), vec!["new"]);
        assert!(store.is_empty());
        // A clock that steps back expires nothing.
        assert_eq!(
            store.add("late", part(1, 2, 1), "a".into(), 9_000),
            Added::Waiting
        );
        assert_eq!(store.expire(0, 0), Vec::<&str>::new());
    }
}
