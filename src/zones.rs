//! Where a recipient is: country, region (state, province) and candidate time zones of a
//! number, from data maintained upstream and shipped in `policies/zones/` (see its README):
//!
//! - `map_data.txt`: libphonenumber's prefix → time zones map, verbatim; the longest prefix of
//!   the E.164 digits decides;
//! - `overrides.txt`: consentry's own corrections, each with its source and the value it
//!   `replaces`, which must still be what the map says (else loading fails: a refresh of the
//!   map makes someone look at each correction again);
//! - `regions.txt`: NANP area code → ISO 3166-2 state or province, generated from
//!   libphonenumber's geocoding by `policies/zones/refresh`.
//!
//! Pure and data-driven. A number maps to a *set* of zones — numbers are ported and people move
//! — and the callers treat a message as inside a window only if it is inside it in every
//! candidate zone. Non-geographic numbers (toll-free, and mobiles where a prefix says nothing)
//! fall back to their country's entry, which lists all of the country's zones; a country with
//! one zone has one. A number with no zone at all has an empty set, which no window ever allows.

use std::collections::{BTreeSet, HashMap};

use jiff::tz::TimeZone;

use crate::domain::PhoneNumber;

/// The shipped files (see `policies/zones/README.md`).
pub const EMBEDDED_MAP: &str = include_str!("../policies/zones/map_data.txt");
pub const EMBEDDED_REGIONS: &str = include_str!("../policies/zones/regions.txt");
pub const EMBEDDED_OVERRIDES: &str = include_str!("../policies/zones/overrides.txt");

/// A data file's text and the name errors give it.
#[derive(Debug, Clone, Copy)]
pub struct DataFile<'a> {
    pub origin: &'a str,
    pub text: &'a str,
}

/// The candidate location of a number.
#[derive(Debug, Clone)]
pub struct Location {
    /// ISO 3166-1 alpha-2, from the country code.
    pub country: Option<String>,
    /// ISO 3166-2 subdivisions (US-FL) of the number's NANP area code; usually one, several
    /// where an area code serves several (902: Nova Scotia and Prince Edward Island).
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

/// The zone map with its overrides applied, and the regions of NANP area codes.
#[derive(Debug, Clone)]
pub struct ZoneTable {
    zones: HashMap<String, Vec<TimeZone>>,
    /// Keyed by `1` and the area code (`1305`), as the map's prefixes are.
    regions: HashMap<String, BTreeSet<String>>,
    longest: usize,
}

impl PartialEq for ZoneTable {
    fn eq(&self, other: &Self) -> bool {
        self.longest == other.longest
            && self.regions == other.regions
            && self.zones.len() == other.zones.len()
            && self.zones.iter().all(|(prefix, zones)| {
                other.zones.get(prefix).is_some_and(|theirs| {
                    names(theirs).collect::<Vec<_>>() == names(zones).collect::<Vec<_>>()
                })
            })
    }
}

impl Eq for ZoneTable {}

fn names(zones: &[TimeZone]) -> impl Iterator<Item = &str> {
    zones.iter().map(|zone| zone.iana_name().unwrap_or("?"))
}

impl ZoneTable {
    /// The shipped data.
    pub fn embedded() -> Result<ZoneTable, String> {
        ZoneTable::load(
            DataFile {
                origin: "policies/zones/map_data.txt (embedded)",
                text: EMBEDDED_MAP,
            },
            DataFile {
                origin: "policies/zones/regions.txt (embedded)",
                text: EMBEDDED_REGIONS,
            },
            DataFile {
                origin: "policies/zones/overrides.txt (embedded)",
                text: EMBEDDED_OVERRIDES,
            },
        )
    }

    /// Loads the map, applies the overrides and reads the regions. Every error names the file
    /// and the line.
    pub fn load(
        map: DataFile<'_>,
        regions: DataFile<'_>,
        overrides: DataFile<'_>,
    ) -> Result<ZoneTable, String> {
        let mut cache: HashMap<String, TimeZone> = HashMap::new();
        let mut zones = HashMap::new();
        for line in lines(map) {
            let [prefix, names] = line.fields::<2>("prefix|zones")?;
            let parsed = parse_zones(&line, names, &mut cache)?;
            if zones.insert(line.prefix(prefix)?, parsed).is_some() {
                return Err(line.error(format!("prefix {prefix} appears twice")));
            }
        }
        let mut table = ZoneTable {
            longest: zones.keys().map(String::len).max().unwrap_or(0),
            zones,
            regions: HashMap::new(),
        };

        let mut overridden = BTreeSet::new();
        let mut corrections = Vec::new();
        for line in lines(overrides) {
            let [prefix, names, replaces] = line.fields::<3>("prefix|zones|replaces")?;
            let prefix = line.prefix(prefix)?;
            let ours = parse_zones(&line, names, &mut cache)?;
            let theirs = parse_zones(&line, replaces, &mut cache)?;
            let map_says = table.zones_of(&prefix);
            if zone_set(&map_says) != zone_set(&theirs) {
                return Err(line.error(format!(
                    "the map now gives {prefix} {:?}, not {replaces:?}: look at this correction \
                     again and update or remove it",
                    names_of(&map_says)
                )));
            }
            if zone_set(&ours) == zone_set(&theirs) {
                return Err(line.error(format!(
                    "the override of {prefix} says what the map already says: remove it"
                )));
            }
            if !overridden.insert(prefix.clone()) {
                return Err(line.error(format!("prefix {prefix} appears twice")));
            }
            corrections.push((prefix, ours));
        }
        for (prefix, ours) in corrections {
            table.longest = table.longest.max(prefix.len());
            table.zones.insert(prefix, ours);
        }
        table.complete_area_codes();

        for line in lines(regions) {
            let [prefix, codes] = line.fields::<2>("prefix|regions")?;
            let prefix = line.prefix(prefix)?;
            if prefix.len() != 4 || !prefix.starts_with('1') {
                return Err(line.error(format!(
                    "{prefix} is not 1 and a NANP area code (three digits)"
                )));
            }
            let mut set = BTreeSet::new();
            for code in codes.split('&') {
                let valid = code.len() == 5
                    && (code.starts_with("US-") || code.starts_with("CA-"))
                    && code[3..].bytes().all(|b| b.is_ascii_uppercase());
                if !valid {
                    return Err(line.error(format!(
                        "{code:?} is not an ISO 3166-2 code of the US or Canada (US-FL, CA-ON)"
                    )));
                }
                set.insert(code.to_owned());
            }
            if table.regions.insert(prefix.clone(), set).is_some() {
                return Err(line.error(format!("prefix {prefix} appears twice")));
            }
        }
        Ok(table)
    }

    /// Gives each NANP area code that the map lists only by its exchanges (208 in Idaho, 242
    /// in the Bahamas) an entry of its own: every zone its exchanges have. Without it, a number
    /// in an exchange the map does not list would fall back to all of the plan's zones, from
    /// Guam to Newfoundland, and no window would ever open for it.
    fn complete_area_codes(&mut self) {
        let mut completed: HashMap<String, Vec<TimeZone>> = HashMap::new();
        for (prefix, zones) in &self.zones {
            if prefix.len() > 4 && prefix.starts_with('1') && !self.zones.contains_key(&prefix[..4])
            {
                let entry = completed.entry(prefix[..4].to_owned()).or_default();
                for zone in zones {
                    if !entry
                        .iter()
                        .any(|known| known.iana_name() == zone.iana_name())
                    {
                        entry.push(zone.clone());
                    }
                }
            }
        }
        for zones in completed.values_mut() {
            zones.sort_by(|a, b| a.iana_name().cmp(&b.iana_name()));
        }
        self.zones.extend(completed);
    }

    /// The zones of the longest prefix of `digits` (E.164 without `+`) in the table.
    fn zones_of(&self, digits: &str) -> Vec<TimeZone> {
        (1..=self.longest.min(digits.len()))
            .rev()
            .find_map(|length| self.zones.get(&digits[..length]))
            .cloned()
            .unwrap_or_default()
    }

    /// Every NANP area code the table knows (`1` and three digits), with its regions.
    pub fn area_codes(&self) -> impl Iterator<Item = (&str, &BTreeSet<String>)> {
        self.regions
            .iter()
            .map(|(prefix, regions)| (prefix.as_str(), regions))
    }

    /// Every prefix of the table, for tests that walk the data.
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.zones.keys().map(String::as_str)
    }

    /// Locates a number: by its longest prefix when it is geographic, else (a nationwide mobile,
    /// toll-free...) by its country code's entry, as libphonenumber's own time zone mapper does.
    pub fn locate(&self, number: &PhoneNumber) -> Location {
        let digits = number.e164().trim_start_matches('+');
        let nanp = digits.starts_with('1') && digits.len() == 11;
        let code_length = number.calling_code().to_string().len().min(digits.len());
        let zones = if number.is_geographic() {
            self.zones_of(digits)
        } else {
            self.zones
                .get(&digits[..code_length])
                .cloned()
                .unwrap_or_default()
        };
        Location {
            country: number.country().map(str::to_owned),
            regions: nanp
                .then(|| self.regions.get(&digits[..4]).cloned())
                .flatten()
                .unwrap_or_default(),
            area_code: nanp.then(|| digits[1..4].to_owned()),
            zones,
        }
    }
}

fn zone_set(zones: &[TimeZone]) -> BTreeSet<&str> {
    names(zones).collect()
}

fn names_of(zones: &[TimeZone]) -> String {
    names(zones).collect::<Vec<_>>().join("&")
}

/// One data line, with where it is for errors.
struct Line<'a> {
    origin: &'a str,
    number: usize,
    text: &'a str,
}

impl<'a> Line<'a> {
    fn error(&self, message: String) -> String {
        format!("{}, line {}: {message}", self.origin, self.number)
    }

    fn fields<const N: usize>(&self, shape: &str) -> Result<[&'a str; N], String> {
        let fields: Vec<&str> = self.text.split('|').map(str::trim).collect();
        fields
            .try_into()
            .map_err(|_| self.error(format!("expected {shape}")))
    }

    fn prefix(&self, prefix: &str) -> Result<String, String> {
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.error(format!("prefix {prefix:?} is not digits")));
        }
        Ok(prefix.to_owned())
    }
}

/// The lines of a `prefix|…` file that hold data (not blank, not `#` comments).
fn lines(file: DataFile<'_>) -> impl Iterator<Item = Line<'_>> {
    file.text
        .lines()
        .enumerate()
        .filter_map(move |(index, text)| {
            let text = text.trim();
            (!text.is_empty() && !text.starts_with('#')).then_some(Line {
                origin: file.origin,
                number: index + 1,
                text,
            })
        })
}

fn parse_zones(
    line: &Line<'_>,
    names: &str,
    cache: &mut HashMap<String, TimeZone>,
) -> Result<Vec<TimeZone>, String> {
    let zones = names
        .split('&')
        .map(|name| match cache.get(name) {
            Some(zone) => Ok(zone.clone()),
            None => {
                let zone = TimeZone::get(name)
                    .map_err(|_| line.error(format!("unknown time zone {name:?}")))?;
                cache.insert(name.to_owned(), zone.clone());
                Ok(zone)
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    if zones.is_empty() {
        return Err(line.error("no time zone".into()));
    }
    Ok(zones)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Region;

    const MAP: &str = "\
# sample
1|America/New_York&America/Chicago&America/Denver&America/Los_Angeles
1305|America/New_York
1850|America/Chicago&America/New_York
1850222|America/New_York
1850433|America/Chicago
1907|America/Anchorage&America/Adak
1907581|Pacific/Honolulu
33|Europe/Paris
";
    const REGIONS: &str = "1305|US-FL\n1850|US-FL\n1907|US-AK\n1902|CA-NS&CA-PE\n";
    const OVERRIDES: &str = "1907581|America/Anchorage|Pacific/Honolulu\n";

    fn file<'a>(origin: &'a str, text: &'a str) -> DataFile<'a> {
        DataFile { origin, text }
    }

    fn load(map: &str, regions: &str, overrides: &str) -> Result<ZoneTable, String> {
        ZoneTable::load(
            file("map", map),
            file("regions", regions),
            file("overrides", overrides),
        )
    }

    fn locate(number: &str) -> Location {
        load(MAP, REGIONS, OVERRIDES)
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
        let listed_only_by_exchanges = load(
            "1|UTC&Pacific/Guam\n1208201|America/Denver\n1208215|America/Boise",
            "",
            "",
        )
        .unwrap();
        let boise = PhoneNumber::parse("+12083001234", Region::US).unwrap();
        assert_eq!(
            listed_only_by_exchanges.locate(&boise).zone_names(),
            ["America/Boise", "America/Denver"],
            "every zone of the area code's exchanges, not the whole plan's"
        );

        let toll_free = locate("+18005550199");
        assert_eq!(
            toll_free.zone_names().len(),
            4,
            "all of the country's zones"
        );
        assert!(toll_free.regions.is_empty());

        let paris = locate("+33142685300");
        assert_eq!(paris.zone_names(), ["Europe/Paris"]);
        assert_eq!(paris.country.as_deref(), Some("FR"));
        assert!(paris.regions.is_empty() && paris.area_code.is_none());

        let halifax = locate("+19024210123");
        assert_eq!(halifax.regions.len(), 2, "902 serves Nova Scotia and PEI");
    }

    #[test]
    fn an_override_replaces_the_maps_entry_for_its_prefix() {
        assert_eq!(locate("+19075810123").zone_names(), ["America/Anchorage"]);
        assert_eq!(locate("+19075550123").zone_names().len(), 2);
    }

    #[test]
    fn an_override_that_contradicts_the_map_is_refused() {
        let stale = load(MAP, REGIONS, "1907581|America/Anchorage|America/Juneau\n").unwrap_err();
        assert!(
            stale.contains("overrides, line 1") && stale.contains("Pacific/Honolulu"),
            "{stale}"
        );
        let no_op = load(MAP, REGIONS, "1305|America/New_York|America/New_York").unwrap_err();
        assert!(no_op.contains("already says"), "{no_op}");
        // An override below an entry replaces what the longest entry above it says.
        let below = load(MAP, REGIONS, "1305555|America/Chicago|America/New_York").unwrap();
        let number = PhoneNumber::parse("+13055550123", Region::US).unwrap();
        assert_eq!(below.locate(&number).zone_names(), ["America/Chicago"]);
        let twice =
            "1305555|America/Chicago|America/New_York\n1305555|America/Chicago|America/New_York";
        assert!(load(MAP, REGIONS, twice).unwrap_err().contains("line 2"));
    }

    #[test]
    fn bad_files_are_refused_naming_the_line() {
        let error = load("1|Mars/Olympus", "", "").unwrap_err();
        assert!(
            error.contains("map, line 1") && error.contains("Mars/Olympus"),
            "{error}"
        );
        assert!(load("1x|UTC", "", "").unwrap_err().contains("line 1"));
        assert!(
            load("1|UTC|UTC", "", "")
                .unwrap_err()
                .contains("prefix|zones")
        );
        assert!(load("1|UTC\n1|UTC", "", "").unwrap_err().contains("line 2"));
        assert!(load("1|", "", "").unwrap_err().contains("time zone"));
        let region = load(MAP, "1305|Florida", "").unwrap_err();
        assert!(
            region.contains("regions, line 1") && region.contains("ISO 3166-2"),
            "{region}"
        );
        assert!(
            load(MAP, "13055|US-FL", "")
                .unwrap_err()
                .contains("area code")
        );
    }

    /// Zones each state, province and territory of the US and Canada spans, from the IANA time
    /// zone database's zone1970.tab / backward links and the US Department of Transportation's
    /// time zone boundaries (49 CFR part 71). The shipped data must place every area code inside
    /// its region's zones: this is the check that found 474 in Winnipeg's zone.
    fn zones_of_region(region: &str) -> &'static [&'static str] {
        const EASTERN: &str = "America/New_York";
        const CENTRAL: &str = "America/Chicago";
        const MOUNTAIN: &str = "America/Denver";
        const PACIFIC: &str = "America/Los_Angeles";
        match region {
            "US-CT" | "US-DE" | "US-DC" | "US-GA" | "US-ME" | "US-MD" | "US-MA" | "US-NH"
            | "US-NJ" | "US-NY" | "US-NC" | "US-OH" | "US-PA" | "US-RI" | "US-SC" | "US-VT"
            | "US-VA" | "US-WV" => &[EASTERN],
            "US-AR" | "US-IL" | "US-IA" | "US-LA" | "US-MN" | "US-MS" | "US-MO" | "US-OK"
            | "US-WI" => &[CENTRAL],
            "US-CO" | "US-MT" | "US-NM" | "US-UT" | "US-WY" => &[MOUNTAIN],
            "US-CA" | "US-WA" => &[PACIFIC],
            "US-AL" | "US-FL" | "US-IN" | "US-KY" | "US-MI" | "US-TN" => &[EASTERN, CENTRAL],
            "US-KS" | "US-NE" | "US-TX" => &[CENTRAL, MOUNTAIN],
            "US-ND" | "US-SD" => &[CENTRAL, MOUNTAIN, "America/North_Dakota/Center"],
            "US-ID" | "US-NV" | "US-OR" => &[PACIFIC, MOUNTAIN, "America/Boise"],
            "US-AZ" => &["America/Phoenix", MOUNTAIN],
            "US-AK" => &["America/Anchorage", "America/Juneau", "America/Adak"],
            "US-HI" => &["Pacific/Honolulu"],
            "CA-AB" => &["America/Edmonton"],
            "CA-BC" => &[
                "America/Vancouver",
                "America/Edmonton",
                "America/Fort_Nelson",
            ],
            "CA-MB" => &["America/Winnipeg"],
            "CA-NB" | "CA-NS" | "CA-PE" => &["America/Halifax"],
            "CA-NL" => &["America/St_Johns", "America/Halifax", "America/Puerto_Rico"],
            "CA-ON" => &["America/Toronto", "America/Winnipeg"],
            "CA-QC" => &["America/Toronto", "America/Halifax", "America/Puerto_Rico"],
            "CA-SK" => &["America/Regina", "America/Edmonton"],
            "CA-NT" | "CA-NU" | "CA-YT" => &[
                "America/Edmonton",
                "America/Toronto",
                "America/Winnipeg",
                "America/Vancouver",
                "America/Fort_Nelson",
            ],
            _ => &[],
        }
    }

    #[test]
    fn every_area_code_is_placed_inside_its_regions_zones() {
        let table = ZoneTable::embedded().unwrap();
        let mut wrong = Vec::new();
        for (area_code, regions) in table.area_codes() {
            let allowed: BTreeSet<&str> = regions
                .iter()
                .flat_map(|region| zones_of_region(region).iter().copied())
                .collect();
            assert!(
                !allowed.is_empty(),
                "{area_code}: unknown region {regions:?}"
            );
            for prefix in table.prefixes().filter(|p| p.starts_with(area_code)) {
                for zone in names(&table.zones[prefix]) {
                    if !allowed.contains(zone) {
                        wrong.push(format!("{prefix} {zone} ({regions:?})"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "outside their region: {wrong:#?}");
    }

    #[test]
    fn the_shipped_overrides_agree_with_the_shipped_map() {
        // Loading checks each override's `replaces` against the map: this fails on a refresh
        // that changed a prefix under a correction.
        let table = ZoneTable::embedded().unwrap();
        let saskatchewan = PhoneNumber::parse("+14742123456", Region::US).unwrap();
        assert_eq!(table.locate(&saskatchewan).zone_names(), ["America/Regina"]);
        assert!(table.locate(&saskatchewan).regions.contains("CA-SK"));
    }

    #[test]
    fn a_country_with_one_zone_gets_it_and_a_multi_zone_country_gets_all() {
        let table = ZoneTable::embedded().unwrap();
        let zones = |number: &str| {
            table
                .locate(&PhoneNumber::parse(number, Region::US).unwrap())
                .zone_names()
        };
        assert_eq!(zones("+33142685300"), ["Europe/Paris"]);
        assert_eq!(zones("+442079460958"), ["Europe/London"]);
        assert!(zones("+447911123456").contains(&"Europe/London".to_owned()));
        assert_eq!(zones("+919876543210"), ["Asia/Calcutta"]);
        assert!(zones("+5511912345678").contains(&"America/Sao_Paulo".to_owned()));
        let australian_mobile = zones("+61412345678");
        assert!(
            australian_mobile.len() > 3,
            "every zone: {australian_mobile:?}"
        );
    }
}
