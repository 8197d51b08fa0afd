//! Where a recipient is: country, region (state, province) and candidate time zones of a
//! number, by longest-prefix match over `policies/zones/prefixes.txt` (from libphonenumber's
//! time zone and geocoding data; see the file's header).
//!
//! Pure and data-driven. A number maps to a *set* of zones — numbers are ported and people move
//! — and the callers treat a message as inside a window only if it is inside it in every
//! candidate zone. Non-geographic numbers (toll-free, and mobiles where a prefix says nothing)
//! fall back to their country's entry, which lists all of the country's zones. A number with no
//! zone at all has an empty set, which no window ever allows.

use std::collections::{BTreeSet, HashMap};

use jiff::tz::TimeZone;

use crate::domain::PhoneNumber;

/// The shipped table.
pub const EMBEDDED_PREFIXES: &str = include_str!("../policies/zones/prefixes.txt");

/// The candidate location of a number.
#[derive(Debug, Clone)]
pub struct Location {
    /// ISO 3166-1 alpha-2, from the country code.
    pub country: Option<String>,
    /// ISO 3166-2 subdivisions (US-FL), when the prefix tells.
    pub regions: BTreeSet<String>,
    /// The NANP area code (three digits), for rules that name area codes.
    pub area_code: Option<String>,
    /// Candidate IANA zones; empty when unknown.
    pub zones: Vec<TimeZone>,
}

impl Location {
    pub fn zone_names(&self) -> Vec<String> {
        self.zones
            .iter()
            .map(|zone| zone.iana_name().unwrap_or("?").to_owned())
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    region: Option<String>,
    zones: Vec<TimeZone>,
}

/// The prefix table, loaded once.
#[derive(Debug, Clone)]
pub struct ZoneTable {
    entries: HashMap<String, Entry>,
    longest: usize,
}

impl PartialEq for ZoneTable {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len() && self.longest == other.longest
    }
}

impl Eq for ZoneTable {}

impl ZoneTable {
    /// Parses the table; `origin` names the file in errors, with the line.
    pub fn parse(text: &str, origin: &str) -> Result<ZoneTable, String> {
        let mut entries = HashMap::new();
        let mut cache: HashMap<String, TimeZone> = HashMap::new();
        let mut longest = 0;
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |message: String| format!("{origin}, line {}: {message}", index + 1);
            let mut fields = line.split('|');
            let (Some(prefix), Some(region), Some(zones), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(at("expected prefix|region|zones".into()));
            };
            if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_digit()) {
                return Err(at(format!("prefix {prefix:?} is not digits")));
            }
            let zones = zones
                .split('&')
                .filter(|name| !name.is_empty())
                .map(|name| match cache.get(name) {
                    Some(zone) => Ok(zone.clone()),
                    None => {
                        let zone = TimeZone::get(name)
                            .map_err(|_| at(format!("unknown time zone {name:?}")))?;
                        cache.insert(name.to_owned(), zone.clone());
                        Ok(zone)
                    }
                })
                .collect::<Result<Vec<_>, String>>()?;
            let region = (region != "-").then(|| region.to_owned());
            longest = longest.max(prefix.len());
            if entries
                .insert(prefix.to_owned(), Entry { region, zones })
                .is_some()
            {
                return Err(at(format!("prefix {prefix} appears twice")));
            }
        }
        Ok(ZoneTable { entries, longest })
    }

    /// Locates a number.
    pub fn locate(&self, number: &PhoneNumber) -> Location {
        let digits = number.e164().trim_start_matches('+');
        let country = number.country().map(str::to_owned);
        let nanp = digits.starts_with('1') && digits.len() == 11;
        let area_code = nanp.then(|| digits[1..4].to_owned());

        let mut zones = Vec::new();
        for length in (1..=self.longest.min(digits.len())).rev() {
            if let Some(entry) = self.entries.get(&digits[..length]) {
                zones = entry.zones.clone();
                break;
            }
        }
        // The region of the longest entry inside the area code that names one.
        let mut regions = BTreeSet::new();
        if nanp {
            let region = (4..=self.longest.min(digits.len()))
                .rev()
                .find_map(|length| self.entries.get(&digits[..length])?.region.clone());
            regions.extend(region);
        }
        Location {
            country,
            regions,
            area_code,
            zones,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Region;

    const SAMPLE: &str = "\
# sample
1|-|America/New_York&America/Chicago&America/Denver&America/Los_Angeles
1305|US-FL|America/New_York
1850|US-FL|America/Chicago&America/New_York
1850222|-|America/New_York
1850433|-|America/Chicago
1907|US-AK|America/Anchorage&America/Adak
33|-|Europe/Paris
";

    fn locate(number: &str) -> Location {
        ZoneTable::parse(SAMPLE, "sample")
            .unwrap()
            .locate(&PhoneNumber::parse(number, Region::US).unwrap())
    }

    #[test]
    fn the_longest_prefix_decides_and_the_region_is_the_area_codes() {
        let miami = locate("+13055550123");
        assert_eq!(miami.zone_names(), ["America/New_York"]);
        assert_eq!(miami.regions, BTreeSet::from(["US-FL".to_owned()]));
        assert_eq!(miami.country.as_deref(), Some("US"));
        assert_eq!(miami.area_code.as_deref(), Some("305"));

        let tallahassee = locate("+18502221234");
        assert_eq!(tallahassee.zone_names(), ["America/New_York"]);
        assert!(tallahassee.regions.contains("US-FL"));
        let pensacola = locate("+18504331234");
        assert_eq!(pensacola.zone_names(), ["America/Chicago"]);
        let unknown_exchange = locate("+18505551234");
        assert_eq!(unknown_exchange.zone_names().len(), 2);

        let toll_free = locate("+18005550199");
        assert_eq!(
            toll_free.zone_names().len(),
            4,
            "all of the country's zones"
        );
        assert!(toll_free.regions.is_empty());

        let paris = locate("+33612345678");
        assert_eq!(paris.zone_names(), ["Europe/Paris"]);
        assert_eq!(paris.country.as_deref(), Some("FR"));
    }

    #[test]
    fn bad_tables_are_refused_naming_the_line() {
        let error = ZoneTable::parse("1|-|Mars/Olympus", "t").unwrap_err();
        assert!(
            error.contains("t, line 1") && error.contains("Mars/Olympus"),
            "{error}"
        );
        assert!(
            ZoneTable::parse("1x|-|UTC", "t")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(
            ZoneTable::parse("1|-", "t")
                .unwrap_err()
                .contains("prefix|region|zones")
        );
        assert!(
            ZoneTable::parse("1|-|UTC\n1|-|UTC", "t")
                .unwrap_err()
                .contains("line 2")
        );
    }

    #[test]
    fn the_shipped_table_loads() {
        let table = ZoneTable::parse(EMBEDDED_PREFIXES, "prefixes.txt").unwrap();
        let boise = table.locate(&PhoneNumber::parse("+12083451234", Region::US).unwrap());
        assert!(boise.regions.contains("US-ID"));
        assert!(!boise.zones.is_empty());
        let miami = table.locate(&PhoneNumber::parse("+13055550123", Region::US).unwrap());
        assert!(miami.regions.contains("US-FL"));
    }
}
