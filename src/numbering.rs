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
/// The most digits an E.164 number has (ITU-T E.164, section 6.1), country code included.
const MAX_E164_DIGITS: usize = 15;

pub fn parse(input: &str, default_region: Id) -> Result<Parsed, Refusal> {
    match nanp_e164(input) {
        Some(national) => parse_nanp(input, national),
        None => parse_written(input, default_region),
    }
}

/// The national number of a North American number written in E.164 (`+1` and ten digits, the
/// first of them 2-9, as every NANP area code), the form most sends name their recipient and
/// sender in; `None` for anything else.
fn nanp_e164(input: &str) -> Option<&str> {
    let national = input.strip_prefix("+1")?;
    let bytes = national.as_bytes();
    (bytes.len() == 10 && (b'2'..=b'9').contains(&bytes[0]) && bytes.iter().all(u8::is_ascii_digit))
        .then_some(national)
}

/// [`parse`] of a number [`nanp_e164`] read: the same plans and the same answer as
/// [`parse_written`] (a test holds them to it for every area code), without the crate's reading
/// of the text, most of a parse's cost (`cargo bench --bench core -- parse`).
fn parse_nanp(e164: &str, national: &str) -> Result<Parsed, Refusal> {
    let plan = plans_of(1)
        .source(national)
        .filter(|plan| plan.kind(national) != phonenumber::Type::Unknown)
        .ok_or(Refusal::Invalid)?;
    let country = Some(plan.metadata.id().to_owned())
        .filter(|id| id.len() == 2 && id.bytes().all(|b| b.is_ascii_uppercase()));
    Ok(Parsed {
        calling_code: 1,
        geographic: true,
        e164: e164.to_owned(),
        country,
    })
}

/// [`parse`] of any written form, through the crate.
fn parse_written(input: &str, default_region: Id) -> Result<Parsed, Refusal> {
    let database = database();
    let first = match phonenumber::parse_with(database, Some(default_region), input) {
        Ok(number) => number,
        // The same crate bug can refuse outright a number that carries its own country code
        // (`+33 1 00 00 00 00` read with US as default: found by fuzzing): such a number needs
        // no default region, so it is read without one (and again in its own region below).
        Err(_) if input.trim_start().starts_with('+') => {
            phonenumber::parse_with(database, None, input).map_err(|_| Refusal::Unparseable)?
        }
        Err(_) => return Err(Refusal::Unparseable),
    };
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
    let calling_code = number.code().value();
    // As the crate's `is_valid_with` (the national number with its leading zeros), then its
    // `metadata` and `number_type` (without them: Italy's, Gabon's... numbers then find no
    // region and no type, and are taken as not geographic, their country's zones: the safe
    // side; their country comes from their country code when one region owns it).
    let national = number.national();
    let written = national.to_string();
    let plans = plans_of(calling_code);
    let valid = plans
        .source(&written)
        .is_some_and(|plan| plan.kind(&written) != phonenumber::Type::Unknown);
    if !valid {
        return Err(Refusal::Invalid);
    }
    let bare = if national.zeros() == 0 {
        written
    } else {
        national.value().to_string()
    };
    let source = plans.source(&bare);
    // NANP numbers need no type (see `is_geographic`), which spares the patterns of every type.
    let geographic = calling_code == 1
        || is_geographic(
            source.map_or(phonenumber::Type::Unknown, |plan| plan.kind(&bare)),
            calling_code,
        );
    let country = match source {
        Some(plan) => Some(plan.metadata.id().to_owned()),
        None => database
            .region(&calling_code)
            .filter(|regions| regions.len() == 1)
            .map(|regions| regions[0].to_owned()),
    }
    .filter(|id| id.len() == 2 && id.bytes().all(|b| b.is_ascii_uppercase()));
    let e164 = number
        .format_with(database)
        .mode(phonenumber::Mode::E164)
        .to_string();
    // E.164 allows at most 15 digits; the metadata calls some longer German and Indonesian
    // numbers valid (found by fuzzing), which no gateway takes as E.164.
    if e164.bytes().filter(u8::is_ascii_digit).count() > MAX_E164_DIGITS {
        return Err(Refusal::Invalid);
    }
    Ok(Parsed {
        calling_code,
        geographic,
        e164,
        country,
    })
}

/// The numbering plans of one country calling code, with their patterns compiled once.
///
/// This is the crate's `source_for` and `number_type` (phonenumber/src/validator.rs) over
/// regexes of our own: the crate's go through one LRU cache of 100 compiled patterns behind a
/// mutex, keyed by the pattern's text, so that each match hashes a pattern of up to a few
/// kilobytes, and the thousands of patterns of the metadata evict each other. Matching is the
/// crate's: a pattern matches a national number from its first digit (not necessarily to its
/// last), within the descriptor's possible lengths.
struct Plans {
    /// In the metadata's order for the code, which the choice of region follows.
    regions: Vec<Plan>,
}

struct Plan {
    metadata: &'static phonenumber::metadata::Metadata,
    leading_digits: Option<regex::Regex>,
    general: Pattern,
    /// In the order `number_type` tries them; fixed line and mobile last.
    types: Vec<(phonenumber::Type, Pattern)>,
    fixed_line: Option<Pattern>,
    mobile: Option<Pattern>,
    /// Fixed lines and mobiles share one pattern: a fixed line is then "fixed line or mobile".
    same_fixed_and_mobile: bool,
}

struct Pattern {
    regex: regex::Regex,
    possible_lengths: Vec<u16>,
}

/// The compiled plans of every code seen so far: each code's are compiled on its first number.
static PLANS: LazyLock<std::collections::HashMap<u16, std::sync::OnceLock<Plans>>> =
    LazyLock::new(|| {
        database()
            .iter()
            .map(|metadata| (metadata.country_code(), std::sync::OnceLock::new()))
            .collect()
    });

/// Plans with no region: a code the metadata does not know.
static NO_PLANS: Plans = Plans {
    regions: Vec::new(),
};

fn plans_of(code: u16) -> &'static Plans {
    match PLANS.get(&code) {
        Some(plans) => plans.get_or_init(|| Plans::compile(code)),
        None => &NO_PLANS,
    }
}

/// `^(?:source)`, with the crate's flag: the metadata's patterns are written across lines.
fn from_start(source: &str) -> regex::Regex {
    regex::RegexBuilder::new(&format!("^(?:{source})"))
        .ignore_whitespace(true)
        .build()
        .expect("the shipped metadata's patterns compile (the crate compiled them already)")
}

impl Pattern {
    fn of(descriptor: &phonenumber::metadata::Descriptor) -> Pattern {
        Pattern {
            regex: from_start(descriptor.national_number().as_str()),
            possible_lengths: descriptor.possible_length().to_vec(),
        }
    }

    /// The crate's `Descriptor::is_match`.
    fn matches(&self, national: &str) -> bool {
        (self.possible_lengths.is_empty()
            || self.possible_lengths.contains(&(national.len() as u16)))
            && self.regex.is_match(national)
    }
}

impl Plans {
    fn compile(code: u16) -> Plans {
        let database = database();
        let metadata: Vec<&'static phonenumber::metadata::Metadata> =
            match database.region(&code).as_deref() {
                // Non-geographic entities ("001") are found by their code.
                Some(["001"]) => database
                    .by_code(&code)
                    .and_then(|all| all.into_iter().next())
                    .into_iter()
                    .collect(),
                Some(regions) => regions
                    .iter()
                    .filter_map(|region| database.by_id(*region))
                    .collect(),
                None => Vec::new(),
            };
        Plans {
            regions: metadata.into_iter().map(Plan::compile).collect(),
        }
    }

    /// The crate's `source_for`: the one region of a code, or the first whose leading digits
    /// (or, without them, whose patterns) the number matches.
    fn source(&self, national: &str) -> Option<&Plan> {
        if let [only] = &self.regions[..] {
            return Some(only);
        }
        self.regions.iter().find(|plan| match &plan.leading_digits {
            Some(leading) => leading.is_match(national),
            None => plan.kind(national) != phonenumber::Type::Unknown,
        })
    }
}

impl Plan {
    fn compile(metadata: &'static phonenumber::metadata::Metadata) -> Plan {
        use phonenumber::Type;
        let descriptors = metadata.descriptors();
        let types = [
            (Type::PremiumRate, descriptors.premium_rate()),
            (Type::TollFree, descriptors.toll_free()),
            (Type::SharedCost, descriptors.shared_cost()),
            (Type::Voip, descriptors.voip()),
            (Type::PersonalNumber, descriptors.personal_number()),
            (Type::Pager, descriptors.pager()),
            (Type::Uan, descriptors.uan()),
            (Type::Voicemail, descriptors.voicemail()),
        ]
        .into_iter()
        .filter_map(|(kind, descriptor)| Some((kind, Pattern::of(descriptor?))))
        .collect();
        Plan {
            metadata,
            leading_digits: metadata
                .leading_digits()
                .map(|pattern| from_start(pattern.as_str())),
            general: Pattern::of(descriptors.general()),
            types,
            fixed_line: descriptors.fixed_line().map(Pattern::of),
            mobile: descriptors.mobile().map(Pattern::of),
            same_fixed_and_mobile: descriptors
                .fixed_line()
                .map(|d| d.national_number().as_str())
                == descriptors.mobile().map(|d| d.national_number().as_str()),
        }
    }

    /// The crate's `number_type`.
    fn kind(&self, national: &str) -> phonenumber::Type {
        use phonenumber::Type;
        if !self.general.matches(national) {
            return Type::Unknown;
        }
        if let Some((kind, _)) = self.types.iter().find(|(_, p)| p.matches(national)) {
            return *kind;
        }
        let mobile = || self.mobile.as_ref().is_some_and(|p| p.matches(national));
        if self
            .fixed_line
            .as_ref()
            .is_some_and(|p| p.matches(national))
        {
            if self.same_fixed_and_mobile || mobile() {
                Type::FixedLineOrMobile
            } else {
                Type::FixedLine
            }
        } else if mobile() {
            Type::Mobile
        } else {
            Type::Unknown
        }
    }
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

    /// The shortcut for North American E.164 numbers answers as the crate's reading does, for
    /// every area code, exchanges valid and not, and whatever the default region.
    #[test]
    fn north_american_e164_numbers_read_the_same_by_the_shortcut() {
        let mut valid = 0;
        for area in 200..=999 {
            for subscriber in [
                "2345678", "5550123", "9876543", "1234567", "0000000", "4560199",
            ] {
                let input = format!("+1{area}{subscriber}");
                let national = nanp_e164(&input).expect("the shortcut's form");
                let shortcut = parse_nanp(&input, national);
                for region in [Id::US, Id::CA, Id::JM, Id::GB, Id::FR, Id::MX] {
                    assert_eq!(
                        shortcut,
                        parse_written(&input, region),
                        "{input} in {region:?}"
                    );
                }
                valid += usize::from(shortcut.is_ok());
            }
        }
        // Both answers are exercised: most area codes are assigned, some are not.
        assert!((1_000..4_800).contains(&valid), "{valid} valid");
        for other in [
            "+1415555012",
            "+141555501234",
            "+11155550123",
            "+1 415 555 0123",
            "14155550123",
            "+1415555012a",
        ] {
            assert_eq!(nanp_e164(other), None, "{other}");
        }
    }

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

    /// The compiled plans choose the crate's region and type for every example number of every
    /// descriptor of the metadata, and for their prefixes and extensions (the invalid ones).
    #[test]
    fn compiled_plans_agree_with_the_crate() {
        let database = database();
        let mut checked = 0;
        for metadata in database.iter() {
            let code = metadata.country_code();
            let descriptors = metadata.descriptors();
            let examples = [
                descriptors.fixed_line(),
                descriptors.mobile(),
                descriptors.toll_free(),
                descriptors.premium_rate(),
                descriptors.shared_cost(),
                descriptors.personal_number(),
                descriptors.voip(),
                descriptors.pager(),
                descriptors.uan(),
                descriptors.voicemail(),
            ]
            .into_iter()
            .flatten()
            .filter_map(|descriptor| descriptor.example());
            for example in examples {
                let trimmed = example.trim_start_matches('0');
                for national in [
                    example.to_owned(),
                    trimmed.to_owned(),
                    format!("{example}9"),
                    example[..example.len() - 1].to_owned(),
                ] {
                    let Ok(number) =
                        phonenumber::parse_with(database, None, format!("+{code}{national}"))
                    else {
                        continue;
                    };
                    let national = number.national();
                    let plans = plans_of(number.code().value());
                    let written = national.to_string();
                    let valid = plans
                        .source(&written)
                        .is_some_and(|plan| plan.kind(&written) != phonenumber::Type::Unknown);
                    assert_eq!(valid, number.is_valid_with(database), "+{code} {written}");
                    let bare = national.value().to_string();
                    let source = plans.source(&bare);
                    assert_eq!(
                        source.map(|plan| plan.metadata.id()),
                        number.metadata(database).map(|metadata| metadata.id()),
                        "+{code} {bare}"
                    );
                    assert_eq!(
                        source.map_or(phonenumber::Type::Unknown, |plan| plan.kind(&bare)),
                        number.number_type(database),
                        "+{code} {bare}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 4000, "only {checked} numbers");
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
