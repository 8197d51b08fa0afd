//! Numbering plans: libphonenumber's metadata as consentry ships it
//! (`policies/zones/PhoneNumberMetadata.xml`, refreshed by `policies/zones/refresh`), loaded by
//! the `phonenumber` crate in place of the copy frozen into it, and the one function that reads
//! a written number with it.
//!
//! Pure: the metadata is embedded and parsed once, on first use (the server forces that at
//! start-up, so that no request pays for it).

use std::sync::LazyLock;

use phonenumber::country::{Id, Source};
use phonenumber::metadata::Database;

/// The shipped metadata, verbatim from libphonenumber (see `policies/zones/VERSION`).
pub const EMBEDDED_METADATA: &str = include_str!("../policies/zones/PhoneNumberMetadata.xml");

static DATABASE: LazyLock<Database> = LazyLock::new(|| {
    Database::parse(EMBEDDED_METADATA)
        .expect("the shipped PhoneNumberMetadata.xml loads (tested in numbering::tests)")
});

/// The metadata every parse and validation uses.
pub fn database() -> &'static Database {
    &DATABASE
}

/// A number libphonenumber's metadata calls valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// `+` and digits.
    pub e164: String,
    /// The ISO 3166-1 alpha-2 code of the region whose plan the number belongs to, if one.
    pub country: Option<String>,
    /// The country calling code (`1`, `44`).
    pub calling_code: u16,
    /// Whether the number's leading digits say where it is (see [`is_geographic`]).
    pub geographic: bool,
}

/// Country calling codes whose mobile numbers carry an area code: Mexico, Argentina, Brazil
/// and China, from libphonenumber's `GEO_MOBILE_COUNTRIES` (PhoneNumberUtil.java). consentry
/// leaves out Indonesia (62), which libphonenumber lists for "some prefixes only (fixed CDMA
/// wireless)": its ordinary mobiles are nationwide, and its map places them all in Jakarta.
const GEO_MOBILE_COUNTRIES: [u16; 4] = [52, 54, 55, 86];

/// libphonenumber's `isNumberGeographical`: a fixed line always, a mobile only where mobile
/// numbers carry an area code, nothing else (toll-free, premium, personal, VoIP...). The time
/// zone of a number that is not geographic is its country's, not its prefix's: a prefix of an
/// Australian mobile says nothing of where in Australia it is.
///
/// The North American Numbering Plan is geographic whatever the type: its numbers of every
/// kind are numbered from area codes that name a place (a Caribbean mobile's names its
/// island), and its non-geographic services (8XX toll-free, 900, 5XX) have area codes of their
/// own, which the map does not list, so they fall back to the plan's entry all the same.
fn is_geographic(kind: phonenumber::Type, calling_code: u16) -> bool {
    match kind {
        _ if calling_code == 1 => true,
        phonenumber::Type::FixedLine | phonenumber::Type::FixedLineOrMobile => true,
        phonenumber::Type::Mobile => GEO_MOBILE_COUNTRIES.contains(&calling_code),
        _ => false,
    }
}

/// Why a written number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unparseable,
    Invalid,
}

/// Reads a written number; national forms in `default_region`.
///
/// The crate strips the *default* region's national prefix from a number that carries its own
/// country code (`+55 11 9…` read with US as default loses its `1`: whisperfish/rust-phonenumber
/// since #93), so a number whose country code is not the default region's is read again in the
/// region its country code belongs to, as libphonenumber itself does.
pub fn parse(input: &str, default_region: Id) -> Result<Parsed, Refusal> {
    let database = database();
    let first = phonenumber::parse_with(database, Some(default_region), input)
        .map_err(|_| Refusal::Unparseable)?;
    let default_code = database
        .by_id(default_region.as_ref())
        .map(|metadata| metadata.country_code());
    let number = if Some(first.code().value()) == default_code {
        first
    } else {
        let own_region = main_region(database, first.code().value()).ok_or(Refusal::Invalid)?;
        let international = match first.code().source() {
            Source::Idd => without_idd(database, default_region, input).ok_or(Refusal::Invalid)?,
            _ => input.to_owned(),
        };
        phonenumber::parse_with(database, Some(own_region), &international)
            .map_err(|_| Refusal::Unparseable)?
    };
    if !number.is_valid_with(database) {
        return Err(Refusal::Invalid);
    }
    let calling_code = number.code().value();
    // The crate's `metadata` and `number_type` drop a national number's leading zeros (Italy,
    // Gabon...), and then find no region and no type: such a number is taken as not
    // geographic (its country's zones: the safe side), and its country comes from its
    // country code when one region owns it. NANP numbers need no type (see `is_geographic`),
    // which spares the regexes of every type.
    let geographic = calling_code == 1 || is_geographic(number.number_type(database), calling_code);
    let country = match number.metadata(database) {
        Some(metadata) => Some(metadata.id().to_owned()),
        None => database
            .region(&calling_code)
            .filter(|regions| regions.len() == 1)
            .map(|regions| regions[0].to_owned()),
    }
    .filter(|id| id.len() == 2 && id.bytes().all(|b| b.is_ascii_uppercase()));
    Ok(Parsed {
        calling_code,
        geographic,
        e164: number
            .format_with(database)
            .mode(phonenumber::Mode::E164)
            .to_string(),
        country,
    })
}

/// The region that owns a country code (`1` → US, `44` → GB).
fn main_region(database: &Database, code: u16) -> Option<Id> {
    let regions = database.by_code(&code)?;
    let main = regions
        .iter()
        .find(|metadata| metadata.is_main_country_for_code())
        .or(regions.first())?;
    main.id().parse().ok()
}

/// `011 33 1 42…` dialled from the US → `+33142…`: the digits after the default region's
/// international call prefix.
fn without_idd(database: &Database, default_region: Id, input: &str) -> Option<String> {
    let prefix = database
        .by_id(default_region.as_ref())?
        .international_prefix()?;
    let digits: String = input.chars().filter(char::is_ascii_digit).collect();
    let found = prefix.find(&digits).filter(|found| found.start() == 0)?;
    Some(format!("+{}", &digits[found.end()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e164(input: &str, region: Id) -> Result<String, Refusal> {
        parse(input, region).map(|parsed| parsed.e164)
    }

    #[test]
    fn numbers_with_their_own_country_code_keep_their_digits() {
        for (input, expected) in [
            ("+55 11 91234-5678", "+5511912345678"),
            ("+33 1 42 68 53 00", "+33142685300"),
            ("+330142685300", "+33142685300"),
            ("011 33 1 42 68 53 00", "+33142685300"),
            ("011 55 11 91234 5678", "+5511912345678"),
            ("+44 7911 123456", "+447911123456"),
            ("(415) 555-0123", "+14155550123"),
            ("1-415-555-0123", "+14155550123"),
            ("+1 628 212 3456", "+16282123456"),
        ] {
            assert_eq!(e164(input, Id::US).as_deref(), Ok(expected), "{input}");
        }
        assert_eq!(
            e164("01 42 68 53 00", Id::FR).as_deref(),
            Ok("+33142685300")
        );
        assert_eq!(
            e164("00 1 415 555 0123", Id::FR).as_deref(),
            Ok("+14155550123")
        );
        assert_eq!(
            parse("+33 1 42 68 53 00", Id::US)
                .unwrap()
                .country
                .as_deref(),
            Some("FR")
        );
        assert_eq!(
            parse("+1 306 555 0100", Id::US).unwrap().country.as_deref(),
            Some("CA")
        );
        let mobile = parse("+61 412 345 678", Id::US).unwrap();
        assert_eq!((mobile.calling_code, mobile.geographic), (61, false));
        let landline = parse("+61 2 9374 4000", Id::US).unwrap();
        assert!(landline.geographic);
        assert!(parse("+55 11 91234-5678", Id::US).unwrap().geographic);
        assert!(parse("+1 415 555 0123", Id::US).unwrap().geographic);
        assert!(
            parse("+1 876 555 0123", Id::US).unwrap().geographic,
            "a Jamaican mobile"
        );
        assert!(
            !parse("+44 7400 123456", Id::US).unwrap().geographic,
            "a British mobile"
        );
        assert_eq!(e164("+1 415 555", Id::US), Err(Refusal::Invalid));
        assert_eq!(e164("call me", Id::US), Err(Refusal::Unparseable));
    }

    /// Every example number of every region in the shipped metadata (fixed line and mobile) is
    /// accepted in international form read from the US, and in a national form (with the national
    /// prefix, or as the bare national number where the prefix is not dialled) read in its own
    /// region, with the same E.164.
    #[test]
    fn every_example_number_of_the_metadata_is_valid() {
        let database = database();
        let mut checked = 0;
        let mut failures = Vec::new();
        for metadata in database.iter() {
            let Ok(region) = metadata.id().parse::<Id>() else {
                continue; // "001": non-geographic entities have no region to read them in
            };
            let descriptors = metadata.descriptors();
            for descriptor in [descriptors.fixed_line(), descriptors.mobile()]
                .into_iter()
                .flatten()
            {
                let Some(example) = descriptor.example() else {
                    continue;
                };
                let expected = format!("+{}{example}", metadata.country_code());
                checked += 1;
                if e164(&expected, Id::US).as_deref() != Ok(expected.as_str()) {
                    failures.push(format!("{} {expected} from the US", metadata.id()));
                }
                let prefixed = format!("{}{example}", metadata.national_prefix().unwrap_or(""));
                let read = |national: &str| e164(national, region).ok();
                if read(&prefixed).or_else(|| read(example)).as_deref() != Some(&expected) {
                    failures.push(format!("{} {example} in its region", metadata.id()));
                }
            }
        }
        assert!(checked > 400, "only {checked} examples");
        assert!(
            failures.is_empty(),
            "{} refused: {failures:#?}",
            failures.len()
        );
    }
}
