//! Jurisdiction rules: when, how often and with what consent a message may reach a recipient,
//! read from `policies/jurisdictions/*.toml` and evaluated purely against the recipient's
//! candidate location and the time.
//!
//! Combination is by strictness: every rule that applies (to any candidate region or area code
//! of the number) must allow the instant in every candidate zone. A rule whose window is closed
//! either defers the message to the first instant every rule allows in every zone, or rejects
//! it (`outside_window`); a reject beats a defer. Frequency caps count the recipient's messages
//! of the same purpose from the same tenant in the rule's rolling window.
//!
//! The rule format (one file per jurisdiction; see `policies/README.md`):
//!
//! ```toml
//! [[rules]]
//! id = "us-fl-hours"                       # unique across all files
//! title = "Florida: hours for telephone solicitations"
//! source = "Fla. Stat. 501.059(8)(a)"
//! country = "US"                           # ISO 3166-1 alpha-2, or "*" for countries with no file
//! regions = ["US-FL"]                      # optional: ISO 3166-2 subdivisions
//! area_codes = ["305", "786"]              # optional: NANP area codes
//! purposes = ["marketing"]
//! windows = { all = "08:00-20:00", sun = "closed" }   # all, mon..sun; "HH:MM-HH:MM" or "closed"
//! holidays = ["us-federal"]                # calendars whose days are closed
//! outside_window = "defer"                 # or "reject"
//! cap = { count = 3, hours = 24 }          # optional; not with purpose transactional
//! consent = "express_written"              # optional: raises what the purpose needs
//! ```

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use jiff::civil::{Time, Weekday};
use serde::{Deserialize, Serialize};

use crate::consent::Requirement;
use crate::domain::Purpose;
use crate::holidays;
use crate::zones::Location;

/// What to do outside a rule's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutsideWindow {
    Defer,
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    rules: Vec<toml::Spanned<RuleSpec>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: String,
    title: String,
    source: String,
    country: String,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    area_codes: Vec<String>,
    purposes: Vec<Purpose>,
    #[serde(default)]
    windows: BTreeMap<String, String>,
    #[serde(default)]
    holidays: Vec<String>,
    #[serde(default = "default_outside")]
    outside_window: OutsideWindow,
    cap: Option<CapSpec>,
    consent: Option<Requirement>,
}

fn default_outside() -> OutsideWindow {
    OutsideWindow::Defer
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapSpec {
    pub count: u32,
    pub hours: u32,
}

/// A loaded rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub source: String,
    pub file: String,
    country: String,
    regions: BTreeSet<String>,
    area_codes: BTreeSet<String>,
    purposes: BTreeSet<Purpose>,
    /// Per weekday (Monday first): the open window in minutes of the day, or closed. `None`
    /// for the whole array: the rule has no hours.
    windows: Option<[Option<(u16, u16)>; 7]>,
    holidays: Vec<String>,
    pub outside_window: OutsideWindow,
    pub cap: Option<CapSpec>,
    pub consent: Option<Requirement>,
}

/// Every jurisdiction rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jurisdictions {
    rules: Vec<Rule>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// How far ahead a deferred message may be scheduled.
const HORIZON_DAYS: i32 = 14;

impl Jurisdictions {
    /// Loads rule files: `(name, text)` pairs. Errors name the file, the line and the field.
    pub fn load(files: &[(String, String)]) -> Result<Jurisdictions, String> {
        Jurisdictions::load_with_overrides(files, None)
    }

    /// Loads rule files, then `overrides` (TOML text in the same format, from the
    /// configuration): an override replaces the rule with its id, or adds one.
    pub fn load_with_overrides(
        files: &[(String, String)],
        overrides: Option<(&str, &str)>,
    ) -> Result<Jurisdictions, String> {
        let mut loaded = Jurisdictions::parse(files)?;
        if let Some((name, text)) = overrides {
            let added = Jurisdictions::parse(&[(name.to_owned(), text.to_owned())])?;
            for rule in added.rules {
                loaded.rules.retain(|known| known.id != rule.id);
                loaded.rules.push(rule);
            }
        }
        Ok(loaded)
    }

    fn parse(files: &[(String, String)]) -> Result<Jurisdictions, String> {
        let mut rules: Vec<Rule> = Vec::new();
        for (name, text) in files {
            let parsed: RuleFile = toml::from_str(text).map_err(|e| format!("{name}: {e}"))?;
            for spanned in parsed.rules {
                let line = text[..spanned.span().start].matches('\n').count() + 1;
                let at = |field: &str, message: String| {
                    format!(
                        "{name}, line {line}: rule {}: {field}: {message}",
                        spanned.get_ref().id
                    )
                };
                let rule = compile(spanned.get_ref(), name, &at)?;
                if rules.iter().any(|known| known.id == rule.id) {
                    return Err(at("id", "is already used by another rule".into()));
                }
                rules.push(rule);
            }
        }
        Ok(Jurisdictions { rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The longest rolling window of any cap, in hours: how far back sends are counted.
    pub fn longest_cap_hours(&self) -> u32 {
        self.rules
            .iter()
            .filter_map(|rule| rule.cap.map(|cap| cap.hours))
            .max()
            .unwrap_or(0)
    }

    /// The rules that apply to a message of `purpose` to a number at `location`.
    pub fn applicable(&self, location: &Location, purpose: Purpose) -> Vec<&Rule> {
        let country = location.country.as_deref().unwrap_or("");
        let has_file = self.rules.iter().any(|rule| rule.country == country);
        let wanted = if has_file { country } else { "*" };
        self.rules
            .iter()
            .filter(|rule| rule.country == wanted && rule.purposes.contains(&purpose))
            .filter(|rule| {
                (rule.regions.is_empty() && rule.area_codes.is_empty())
                    || rule.regions.iter().any(|r| location.regions.contains(r))
                    || location
                        .area_code
                        .as_ref()
                        .is_some_and(|code| rule.area_codes.contains(code))
            })
            .collect()
    }
}

fn compile(
    spec: &RuleSpec,
    file: &str,
    at: &dyn Fn(&str, String) -> String,
) -> Result<Rule, String> {
    if spec.id.is_empty() {
        return Err(at("id", "must not be empty".into()));
    }
    let country_ok = spec.country == "*"
        || (spec.country.len() == 2 && spec.country.chars().all(|c| c.is_ascii_uppercase()));
    if !country_ok {
        return Err(at(
            "country",
            format!(
                "{:?} is not an ISO 3166-1 alpha-2 code or \"*\"",
                spec.country
            ),
        ));
    }
    for region in &spec.regions {
        if !region.starts_with(&format!("{}-", spec.country)) {
            return Err(at(
                "regions",
                format!("{region:?} is not a subdivision of {}", spec.country),
            ));
        }
    }
    for code in &spec.area_codes {
        if spec.country != "US" && spec.country != "CA"
            || code.len() != 3
            || !code.chars().all(|c| c.is_ascii_digit())
        {
            return Err(at(
                "area_codes",
                format!("{code:?} is not a NANP area code of a US or CA rule"),
            ));
        }
    }
    if spec.purposes.is_empty() {
        return Err(at("purposes", "must name at least one purpose".into()));
    }
    for calendar in &spec.holidays {
        if !holidays::CALENDARS.contains(&calendar.as_str()) {
            return Err(at(
                "holidays",
                format!(
                    "unknown calendar {calendar:?} (known: {})",
                    holidays::CALENDARS.join(", ")
                ),
            ));
        }
    }
    let windows = if spec.windows.is_empty() {
        None
    } else {
        let mut days: [Option<(u16, u16)>; 7] = [None; 7];
        let all = match spec.windows.get("all") {
            Some(text) => parse_window(text).map_err(|e| at("windows.all", e))?,
            None => None,
        };
        for (index, day) in DAYS.iter().enumerate() {
            days[index] = match spec.windows.get(*day) {
                Some(text) => parse_window(text).map_err(|e| at(&format!("windows.{day}"), e))?,
                None => all,
            };
        }
        if let Some(key) = spec
            .windows
            .keys()
            .find(|k| *k != "all" && !DAYS.contains(&k.as_str()))
        {
            return Err(at(
                "windows",
                format!("unknown day {key:?} (all, mon .. sun)"),
            ));
        }
        if days.iter().all(Option::is_none) {
            return Err(at(
                "windows",
                "every day is closed: the rule would never allow a message; use outside_window = \"reject\" with purposes it forbids instead".into(),
            ));
        }
        Some(days)
    };
    if windows.is_none() && !spec.holidays.is_empty() {
        return Err(at(
            "holidays",
            "closing holidays needs windows for the other days".into(),
        ));
    }
    if let Some(cap) = spec.cap
        && (cap.count == 0 || cap.hours == 0 || cap.hours > 24 * 31)
    {
        return Err(at(
            "cap",
            "count must be at least 1 and hours between 1 and 744".into(),
        ));
    }
    // Transactional messages are the ones a recipient asked for (a code, an alert): no law caps
    // them, and the store does not index them by recipient, so a cap could not count them.
    if spec.cap.is_some() && spec.purposes.contains(&Purpose::Transactional) {
        return Err(at(
            "cap",
            "caps count marketing and informational messages only; take \"transactional\" out of this rule's purposes".into(),
        ));
    }
    Ok(Rule {
        id: spec.id.clone(),
        title: spec.title.clone(),
        source: spec.source.clone(),
        file: file.to_owned(),
        country: spec.country.clone(),
        regions: spec.regions.iter().cloned().collect(),
        area_codes: spec.area_codes.iter().cloned().collect(),
        purposes: spec.purposes.iter().copied().collect(),
        windows,
        holidays: spec.holidays.clone(),
        outside_window: spec.outside_window,
        cap: spec.cap,
        consent: spec.consent,
    })
}

/// `"HH:MM-HH:MM"` (end exclusive, `24:00` allowed) or `"closed"`.
fn parse_window(text: &str) -> Result<Option<(u16, u16)>, String> {
    if text.trim() == "closed" {
        return Ok(None);
    }
    let (start, end) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not HH:MM-HH:MM or \"closed\""))?;
    let minutes = |part: &str| -> Result<u16, String> {
        let (hours, minutes) = part
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("{part:?} is not HH:MM"))?;
        let hours: u16 = hours
            .parse()
            .map_err(|_| format!("{part:?} is not HH:MM"))?;
        let minutes: u16 = minutes
            .parse()
            .map_err(|_| format!("{part:?} is not HH:MM"))?;
        if minutes > 59 || hours > 24 || (hours == 24 && minutes > 0) {
            return Err(format!("{part:?} is not a time of day"));
        }
        Ok(hours * 60 + minutes)
    };
    let (start, end) = (minutes(start)?, minutes(end)?);
    if start >= end {
        return Err(format!("{text:?}: the window ends before it starts"));
    }
    Ok(Some((start, end)))
}

impl Rule {
    fn has_hours(&self) -> bool {
        self.windows.is_some()
    }

    /// Whether the rule allows the instant in one zone, and the local time it saw.
    fn allows_in(&self, now: Timestamp, zone: &jiff::tz::TimeZone) -> (bool, String) {
        let local = now.to_zoned(zone.clone());
        let shown = local.strftime("%a %Y-%m-%d %H:%M %Z").to_string();
        let Some(windows) = &self.windows else {
            return (true, shown);
        };
        if self
            .holidays
            .iter()
            .any(|calendar| holidays::is_holiday(calendar, local.date()))
        {
            return (false, format!("{shown} (holiday)"));
        }
        let day = local.weekday().to_monday_zero_offset() as usize;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let open = windows[day].is_some_and(|(start, end)| start <= minute && minute < end);
        (open, shown)
    }

    /// The instants after `now` at which this rule's windows open, in `zone`, over the horizon.
    fn openings(&self, now: Timestamp, zone: &jiff::tz::TimeZone) -> Vec<Timestamp> {
        let Some(windows) = &self.windows else {
            return Vec::new();
        };
        let today = now.to_zoned(zone.clone()).date();
        (0..=HORIZON_DAYS)
            .filter_map(|offset| today.checked_add(jiff::Span::new().days(offset)).ok())
            .filter_map(|date| {
                let (start, _) = windows[date.weekday().to_monday_zero_offset() as usize]?;
                let time = Time::new((start / 60) as i8, (start % 60) as i8, 0, 0).ok()?;
                // A window opening in a DST gap opens at the first instant after the gap
                // ("compatible" disambiguation); in a repeated hour, at its first occurrence.
                date.to_datetime(time)
                    .to_zoned(zone.clone())
                    .ok()
                    .map(|z| z.timestamp())
            })
            .filter(|instant| *instant > now)
            .collect()
    }
}

/// One step of a decision's explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub rule: String,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_time: Option<String>,
    pub result: String,
}

/// The time and frequency verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeVerdict {
    Allow,
    /// A rule forbids it: `(code, rule id, detail)`.
    Deny(Vec<(&'static str, String, String)>),
    Defer {
        until: Timestamp,
        rules: Vec<String>,
    },
}

/// Evaluates the time, holiday and frequency rules for a message. `recent` are the instants
/// of the recipient's earlier messages of the same purpose from the same tenant.
pub fn evaluate(
    rules: &[&Rule],
    location: &Location,
    now: Timestamp,
    recent: &[Timestamp],
) -> (TimeVerdict, Vec<Step>) {
    let mut trace = Vec::new();
    let mut denials = Vec::new();
    let mut deferring = Vec::new();
    let timed: Vec<&Rule> = rules.iter().copied().filter(|r| r.has_hours()).collect();

    if !timed.is_empty() && location.zones.is_empty() {
        for rule in &timed {
            trace.push(Step {
                rule: rule.id.clone(),
                source: rule.source.clone(),
                zone: None,
                local_time: None,
                result: "no known time zone for the number: not allowed".into(),
            });
            denials.push((
                "unknown_time_zone",
                rule.id.clone(),
                "the number's time zone is unknown, so no window can be shown to hold".into(),
            ));
        }
    }
    for rule in &timed {
        for zone in &location.zones {
            let (open, local) = rule.allows_in(now, zone);
            trace.push(Step {
                rule: rule.id.clone(),
                source: rule.source.clone(),
                zone: zone.iana_name().map(str::to_owned),
                local_time: Some(local.clone()),
                result: if open {
                    "inside the window"
                } else {
                    "outside the window"
                }
                .into(),
            });
            if !open {
                match rule.outside_window {
                    OutsideWindow::Reject => denials.push((
                        "quiet_hours",
                        rule.id.clone(),
                        format!("{}: not allowed at {local}", rule.title),
                    )),
                    OutsideWindow::Defer => deferring.push(rule.id.clone()),
                }
            }
        }
    }
    for rule in rules {
        let Some(cap) = rule.cap else { continue };
        let since = now - jiff::SignedDuration::from_hours(i64::from(cap.hours));
        let count = recent
            .iter()
            // Sends stamped after `now` count too: another instance's clock may run ahead.
            .filter(|at| **at > since)
            .count();
        let over = count >= cap.count as usize;
        trace.push(Step {
            rule: rule.id.clone(),
            source: rule.source.clone(),
            zone: None,
            local_time: None,
            result: format!(
                "{count} message(s) in the last {} h; the cap is {}",
                cap.hours, cap.count
            ),
        });
        if over {
            denials.push((
                "frequency_cap",
                rule.id.clone(),
                format!(
                    "{}: {count} of {} messages in {} h already sent",
                    rule.title, cap.count, cap.hours
                ),
            ));
        }
    }
    for rule in rules.iter().filter(|r| !r.has_hours() && r.cap.is_none()) {
        trace.push(Step {
            rule: rule.id.clone(),
            source: rule.source.clone(),
            zone: None,
            local_time: None,
            result: "applies (consent only)".into(),
        });
    }

    if !denials.is_empty() {
        denials.dedup();
        return (TimeVerdict::Deny(denials), trace);
    }
    if deferring.is_empty() {
        return (TimeVerdict::Allow, trace);
    }
    deferring.dedup();
    match next_allowed(&timed, location, now) {
        Some(until) => {
            trace.push(Step {
                rule: deferring.join(","),
                source: String::new(),
                zone: None,
                local_time: None,
                result: format!(
                    "deferred to {until}, the first instant every rule allows in every zone"
                ),
            });
            (
                TimeVerdict::Defer {
                    until,
                    rules: deferring,
                },
                trace,
            )
        }
        None => (
            TimeVerdict::Deny(vec![(
                "no_allowed_window",
                deferring.join(","),
                format!(
                    "no instant in the next {HORIZON_DAYS} days is allowed by every rule in every zone"
                ),
            )]),
            trace,
        ),
    }
}

/// Whether every timed rule allows `instant` in every zone.
pub fn allowed_everywhere(rules: &[&Rule], location: &Location, instant: Timestamp) -> bool {
    !location.zones.is_empty()
        && rules.iter().all(|rule| {
            location
                .zones
                .iter()
                .all(|zone| rule.allows_in(instant, zone).0)
        })
}

/// The first instant after `now`, within the horizon, that every rule allows in every zone.
/// It is one of the rules' window openings: the intersection of windows starts where one opens.
fn next_allowed(rules: &[&Rule], location: &Location, now: Timestamp) -> Option<Timestamp> {
    let mut candidates: Vec<Timestamp> = rules
        .iter()
        .flat_map(|rule| {
            location
                .zones
                .iter()
                .flat_map(move |zone| rule.openings(now, zone))
        })
        .collect();
    candidates.sort();
    candidates.dedup();
    candidates
        .into_iter()
        .find(|instant| allowed_everywhere(rules, location, *instant))
}

/// The weekday names used in windows, for documentation and tests.
pub fn weekday_key(day: Weekday) -> &'static str {
    DAYS[day.to_monday_zero_offset() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        Jurisdictions::load(&[("bad.toml".into(), text.into())]).unwrap_err()
    }

    const HEAD: &str = "[[rules]]\nid = \"r\"\ntitle = \"t\"\nsource = \"s\"\n";

    #[test]
    fn bad_rule_files_are_refused_naming_file_line_and_field() {
        let cases = [
            (
                format!("{HEAD}country = \"US\"\npurposes = [\"marketing\"]\ncolour = \"red\"\n"),
                "unknown field `colour`",
            ),
            (
                format!(
                    "{HEAD}country = \"US\"\npurposes = [\"marketing\"]\nwindows = {{ all = \"21:00-08:00\" }}\n"
                ),
                "windows.all",
            ),
            (
                format!(
                    "{HEAD}country = \"US\"\npurposes = [\"marketing\"]\nwindows = {{ mon = \"25:00-26:00\" }}\n"
                ),
                "windows.mon",
            ),
            (
                format!(
                    "{HEAD}country = \"US\"\npurposes = [\"marketing\"]\nwindows = {{ all = \"closed\" }}\n"
                ),
                "every day is closed",
            ),
            (
                format!(
                    "{HEAD}country = \"US\"\npurposes = [\"marketing\"]\nwindows = {{ funday = \"08:00-09:00\" }}\n"
                ),
                "unknown day",
            ),
            (
                format!(
                    "{HEAD}country = \"US\"\nregions = [\"CA-ON\"]\npurposes = [\"marketing\"]\n"
                ),
                "regions",
            ),
            (
                format!("{HEAD}country = \"USA\"\npurposes = [\"marketing\"]\n"),
                "country",
            ),
            (
                format!(
                    "{HEAD}country = \"US\"\npurposes = [\"marketing\"]\nwindows = {{ all = \"08:00-20:00\" }}\nholidays = [\"mars\"]\n"
                ),
                "unknown calendar",
            ),
            (
                format!(
                    "{HEAD}country = \"US\"\npurposes = [\"marketing\"]\ncap = {{ count = 0, hours = 24 }}\n"
                ),
                "cap",
            ),
            (
                format!(
                    "{HEAD}country = \"US\"\npurposes = [\"marketing\", \"transactional\"]\ncap = {{ count = 3, hours = 24 }}\n"
                ),
                "informational messages only",
            ),
            (
                format!("{HEAD}country = \"US\"\npurposes = []\n"),
                "purposes",
            ),
            (
                format!(
                    "{HEAD}country = \"US\"\npurposes = [\"marketing\"]\n{HEAD}country = \"US\"\npurposes = [\"marketing\"]\n"
                ),
                "already used",
            ),
            (
                format!(
                    "{HEAD}country = \"FR\"\narea_codes = [\"305\"]\npurposes = [\"marketing\"]\n"
                ),
                "area_codes",
            ),
        ];
        for (text, expected) in cases {
            let error = error_of(&text);
            assert!(error.starts_with("bad.toml"), "{error}");
            assert!(error.contains("line"), "{error}");
            assert!(error.contains(expected), "{text}\ngave {error}");
        }
        // The line is the rule's: the second rule starts on line 7.
        let error = error_of(&format!(
            "{HEAD}country = \"US\"\npurposes = [\"marketing\"]\n[[rules]]\nid = \"second\"\ntitle = \"t\"\nsource = \"s\"\ncountry = \"US\"\npurposes = [\"marketing\"]\nwindows = {{ all = \"9-5\" }}\n"
        ));
        assert!(
            error.contains("line 7") && error.contains("rule second"),
            "{error}"
        );
    }
}
