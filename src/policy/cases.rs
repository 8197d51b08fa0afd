//! The table of decisions: one `check(number, purpose, at, recent, expected)` per case across
//! the shipped jurisdictions, purposes, weekdays, holidays, DST edges, multi-zone numbers and
//! caps. Every case has a written opt-in on record, so what is tested is time and frequency.
//!
//! Times are UTC; the comments give the local time. November 2026: New York UTC-5, Chicago
//! UTC-6, Denver UTC-7, Los Angeles UTC-8, Paris UTC+1; 2026-11-18 is a Wednesday and
//! 2026-11-26 Thanksgiving.

use jiff::Timestamp;
use proptest::prelude::*;

use super::jurisdictions::{self, allowed_everywhere};
use super::rules::PolicySet;
use super::{Decision, Facts, SenderBounds, decide};
use crate::config::PoliciesConfig;
use crate::consent::{Action, ConsentEvent, Level, Purposes};
use crate::domain::{
    Body, CanonicalMessage, MessageId, PhoneNumber, Purpose, Region, Scope, Sender, TenantId,
    TenantRules,
};

fn policies() -> &'static PolicySet {
    static POLICIES: std::sync::OnceLock<PolicySet> = std::sync::OnceLock::new();
    POLICIES.get_or_init(|| PolicySet::load(&PoliciesConfig::default()).unwrap())
}

fn written_opt_in() -> Vec<ConsentEvent> {
    vec![ConsentEvent {
        id: "evt_written".into(),
        seq: 1,
        action: Action::OptIn,
        level: Some(Level::ExpressWritten),
        scope: Scope::tenant_wide(),
        purposes: Purposes::all(),
        occurred_at: "2020-01-01T00:00:00Z".parse().unwrap(),
        number_reassigned: false,
    }]
}

/// Decides and renders the outcome: `allow`, `deny:<code>` or `defer:<instant>`.
fn outcome(
    number: &str,
    purpose: Purpose,
    at: &str,
    recent: usize,
    consent: &[ConsentEvent],
) -> String {
    let policies = policies();
    let now: Timestamp = at.parse().unwrap();
    let to = PhoneNumber::parse(number, Region::US).unwrap();
    let location = policies.zones.locate(&to);
    let recent: Vec<Timestamp> = (0..recent)
        .map(|i| now - jiff::SignedDuration::from_mins(10 * (i as i64 + 1)))
        .collect();
    let rules = TenantRules {
        senders: vec![Sender::parse("ACME", Region::US).unwrap()],
        purposes: Purpose::ALL.into_iter().collect(),
    };
    let message = CanonicalMessage {
        id: MessageId::new(),
        tenant: TenantId::parse("t").unwrap(),
        to,
        from: Sender::parse("ACME", Region::US).unwrap(),
        body: Body::parse("hello".into()).unwrap(),
        purpose,
        scope: Scope::tenant_wide(),
        reply: None,
        status_callback: None,
        send_at: None,
        media: Vec::new(),
    };
    let facts = Facts {
        tenant: &rules,
        bounds: &SenderBounds::default(),
        policies,
        consent,
        confirmed_opt_outs: &[],
        open_reviews: &[],
        location: &location,
        recent: &recent,
        now,
        paced_until: None,
    };
    match decide(message, &facts) {
        Decision::Allow(_) => "allow".into(),
        Decision::Deny(denial) => format!("deny:{}", denial.reasons[0].code.as_str()),
        Decision::Defer(deferral) => format!("defer:{}", deferral.until),
    }
}

fn check(number: &str, purpose: Purpose, at: &str, recent: usize, expected: &str) {
    let found = outcome(number, purpose, at, recent, &written_opt_in());
    assert_eq!(
        found, expected,
        "{number} {purpose:?} at {at} with {recent} recent"
    );
}

use Purpose::{Informational as Info, Marketing as Mkt, Transactional as Txn};

const NEW_YORK: &str = "+12125550123";
const MIAMI: &str = "+13055550123";
const PENSACOLA: &str = "+18502001234"; // 850-200: Central time
const BOISE: &str = "+12083001234"; // 208-30x: Mountain or Pacific
const ANCHORAGE: &str = "+19075550123"; // Alaska or Aleutian time
const LOS_ANGELES: &str = "+13105550123";
const OKLAHOMA_CITY: &str = "+14055550123";
const LAS_VEGAS: &str = "+17025550123";
const LOUISVILLE: &str = "+15025550123";
const PROVIDENCE: &str = "+14015550123";
const BIRMINGHAM: &str = "+12055550123";
const NEW_ORLEANS: &str = "+15045550123";
const DALLAS: &str = "+12145550123";
const HARTFORD: &str = "+12035550123";
const TORONTO: &str = "+14165550123";
const PARIS: &str = "+33612345678";
const LONDON: &str = "+447400123456";
const GUERNSEY: &str = "+447911123456"; // +44 7911 is Guernsey's: no file, the default rule
const MUMBAI: &str = "+919876543210";
const SYDNEY: &str = "+61412345678"; // a mobile: every Australian zone
const BERLIN: &str = "+4915112345678"; // no German file: the default rule
const PHOENIX: &str = "+16025550123"; // Mountain or Arizona time

#[test]
fn federal_hours_in_new_york() {
    check(NEW_YORK, Mkt, "2026-11-18T18:00:00Z", 0, "allow"); // 13:00
    check(
        NEW_YORK,
        Mkt,
        "2026-11-18T12:59:00Z",
        0,
        "defer:2026-11-18T13:00:00Z",
    ); // 07:59
    check(NEW_YORK, Mkt, "2026-11-18T13:00:00Z", 0, "allow"); // 08:00
    check(NEW_YORK, Mkt, "2026-11-19T01:59:00Z", 0, "allow"); // 20:59
    check(
        NEW_YORK,
        Mkt,
        "2026-11-19T02:00:00Z",
        0,
        "defer:2026-11-19T13:00:00Z",
    ); // 21:00
    check(NEW_YORK, Txn, "2026-11-19T03:00:00Z", 0, "allow"); // 22:00, transactional
    check(NEW_YORK, Info, "2026-11-19T03:00:00Z", 0, "allow"); // 22:00, informational
    check(NEW_YORK, Mkt, "2026-11-26T18:00:00Z", 0, "allow"); // Thanksgiving: no federal holiday rule
}

#[test]
fn florida_hours_and_cap() {
    check(
        MIAMI,
        Mkt,
        "2026-11-19T01:30:00Z",
        0,
        "defer:2026-11-19T13:00:00Z",
    ); // 20:30
    check(MIAMI, Mkt, "2026-11-19T00:59:00Z", 0, "allow"); // 19:59
    check(
        MIAMI,
        Mkt,
        "2026-11-19T01:00:00Z",
        0,
        "defer:2026-11-19T13:00:00Z",
    ); // 20:00
    check(MIAMI, Mkt, "2026-11-18T18:00:00Z", 2, "allow");
    check(MIAMI, Mkt, "2026-11-18T18:00:00Z", 3, "deny:frequency_cap");
    check(MIAMI, Txn, "2026-11-18T18:00:00Z", 5, "allow");
    check(PENSACOLA, Mkt, "2026-11-19T01:30:00Z", 0, "allow"); // 19:30 Central
    check(
        PENSACOLA,
        Mkt,
        "2026-11-19T02:30:00Z",
        0,
        "defer:2026-11-19T14:00:00Z",
    ); // 20:30 Central
}

#[test]
fn numbers_in_two_zones_need_both() {
    check(
        BOISE,
        Mkt,
        "2026-11-18T15:30:00Z",
        0,
        "defer:2026-11-18T16:00:00Z",
    ); // 08:30 MST, 07:30 PST
    check(BOISE, Mkt, "2026-11-19T03:30:00Z", 0, "allow"); // 20:30 MST, 19:30 PST
    check(
        BOISE,
        Mkt,
        "2026-11-19T04:00:00Z",
        0,
        "defer:2026-11-19T16:00:00Z",
    ); // 21:00 MST
    check(
        ANCHORAGE,
        Mkt,
        "2026-11-18T17:30:00Z",
        0,
        "defer:2026-11-18T18:00:00Z",
    ); // 08:30 AKST, 07:30 HST
    check(ANCHORAGE, Mkt, "2026-11-19T05:30:00Z", 0, "allow"); // 20:30 AKST, 19:30 HST
    check(
        PHOENIX,
        Mkt,
        "2026-07-15T14:30:00Z",
        0,
        "defer:2026-07-15T15:00:00Z",
    ); // 08:30 MDT, 07:30 MST
    check(PHOENIX, Mkt, "2026-11-18T15:30:00Z", 0, "allow"); // 08:30 in both
}

#[test]
fn pacific_and_mountain_states() {
    check(
        LOS_ANGELES,
        Mkt,
        "2026-11-18T15:59:00Z",
        0,
        "defer:2026-11-18T16:00:00Z",
    );
    check(LOS_ANGELES, Mkt, "2026-11-19T04:59:00Z", 0, "allow");
    check(
        LOS_ANGELES,
        Mkt,
        "2026-11-19T05:00:00Z",
        0,
        "defer:2026-11-19T16:00:00Z",
    );
    check(
        LAS_VEGAS,
        Mkt,
        "2026-11-18T16:30:00Z",
        0,
        "defer:2026-11-18T17:00:00Z",
    ); // 08:30
    check(LAS_VEGAS, Mkt, "2026-11-19T03:59:00Z", 0, "allow"); // 19:59
    check(
        LAS_VEGAS,
        Mkt,
        "2026-11-19T04:00:00Z",
        0,
        "defer:2026-11-19T17:00:00Z",
    ); // 20:00
}

#[test]
fn central_and_eastern_states() {
    check(OKLAHOMA_CITY, Mkt, "2026-11-19T01:30:00Z", 0, "allow"); // 19:30
    check(
        OKLAHOMA_CITY,
        Mkt,
        "2026-11-19T02:00:00Z",
        0,
        "defer:2026-11-19T14:00:00Z",
    ); // 20:00
    check(
        OKLAHOMA_CITY,
        Mkt,
        "2026-11-18T18:00:00Z",
        3,
        "deny:frequency_cap",
    );
    check(
        LOUISVILLE,
        Mkt,
        "2026-11-18T14:30:00Z",
        0,
        "defer:2026-11-18T15:00:00Z",
    ); // 09:30
    check(LOUISVILLE, Mkt, "2026-11-18T15:00:00Z", 0, "allow"); // 10:00
    check(
        HARTFORD,
        Mkt,
        "2026-11-19T01:00:00Z",
        0,
        "defer:2026-11-19T14:00:00Z",
    ); // 20:00
    check(HARTFORD, Mkt, "2026-11-18T14:00:00Z", 0, "allow"); // 09:00
}

#[test]
fn rhode_island_weekdays_only() {
    check(PROVIDENCE, Mkt, "2026-11-18T22:59:00Z", 0, "allow"); // Wed 17:59
    check(
        PROVIDENCE,
        Mkt,
        "2026-11-18T23:00:00Z",
        0,
        "defer:2026-11-19T14:00:00Z",
    ); // Wed 18:00
    check(
        PROVIDENCE,
        Mkt,
        "2026-11-21T15:00:00Z",
        0,
        "defer:2026-11-23T14:00:00Z",
    ); // Sat
    check(
        PROVIDENCE,
        Mkt,
        "2026-11-26T15:00:00Z",
        0,
        "defer:2026-11-27T14:00:00Z",
    ); // Thanksgiving
    check(
        PROVIDENCE,
        Mkt,
        "2026-11-20T13:30:00Z",
        0,
        "defer:2026-11-20T14:00:00Z",
    ); // Fri 08:30
    check(PROVIDENCE, Txn, "2026-11-21T15:00:00Z", 0, "allow");
}

#[test]
fn no_sundays_or_legal_holidays_in_the_south() {
    check(
        BIRMINGHAM,
        Mkt,
        "2026-11-22T18:00:00Z",
        0,
        "defer:2026-11-23T14:00:00Z",
    ); // Sunday
    check(BIRMINGHAM, Mkt, "2026-11-18T18:00:00Z", 0, "allow");
    check(
        BIRMINGHAM,
        Mkt,
        "2026-11-26T18:00:00Z",
        0,
        "defer:2026-11-27T14:00:00Z",
    ); // Thanksgiving
    check(
        BIRMINGHAM,
        Mkt,
        "2026-04-27T15:00:00Z",
        0,
        "defer:2026-04-28T13:00:00Z",
    ); // Confederate Memorial Day
    check(
        NEW_ORLEANS,
        Mkt,
        "2026-02-17T18:00:00Z",
        0,
        "defer:2026-02-18T14:00:00Z",
    ); // Mardi Gras
    check(NEW_ORLEANS, Mkt, "2026-11-21T18:00:00Z", 0, "allow"); // Saturday
    check(NEW_ORLEANS, Txn, "2026-11-22T18:00:00Z", 0, "allow"); // Sunday, transactional
}

#[test]
fn texas_sundays_start_at_noon() {
    check(
        DALLAS,
        Mkt,
        "2026-11-22T17:00:00Z",
        0,
        "defer:2026-11-22T18:00:00Z",
    ); // Sun 11:00
    check(DALLAS, Mkt, "2026-11-22T18:30:00Z", 0, "allow"); // Sun 12:30
    check(
        DALLAS,
        Mkt,
        "2026-11-23T14:30:00Z",
        0,
        "defer:2026-11-23T15:00:00Z",
    ); // Mon 08:30
}

#[test]
fn canada_weekdays_and_weekends() {
    check(TORONTO, Mkt, "2026-11-19T02:15:00Z", 0, "allow"); // Wed 21:15
    check(
        TORONTO,
        Mkt,
        "2026-11-19T02:30:00Z",
        0,
        "defer:2026-11-19T14:00:00Z",
    ); // Wed 21:30
    check(
        TORONTO,
        Mkt,
        "2026-11-21T14:30:00Z",
        0,
        "defer:2026-11-21T15:00:00Z",
    ); // Sat 09:30
    check(
        TORONTO,
        Mkt,
        "2026-11-21T23:00:00Z",
        0,
        "defer:2026-11-22T15:00:00Z",
    ); // Sat 18:00
    // CASL: express consent is not enough for marketing in Canada.
    let express = vec![ConsentEvent {
        level: Some(Level::Express),
        ..written_opt_in()[0].clone()
    }];
    assert_eq!(
        outcome(TORONTO, Mkt, "2026-11-18T18:00:00Z", 0, &express),
        "deny:no_consent"
    );
}

#[test]
fn france_no_sundays_or_public_holidays() {
    check(PARIS, Mkt, "2026-11-18T10:00:00Z", 0, "allow");
    check(
        PARIS,
        Mkt,
        "2026-11-22T10:00:00Z",
        0,
        "defer:2026-11-23T07:00:00Z",
    ); // Sunday
    check(
        PARIS,
        Mkt,
        "2026-11-11T10:00:00Z",
        0,
        "defer:2026-11-12T07:00:00Z",
    ); // Armistice
    check(
        PARIS,
        Mkt,
        "2026-05-14T10:00:00Z",
        0,
        "defer:2026-05-15T06:00:00Z",
    ); // Ascension (CEST)
    check(
        PARIS,
        Mkt,
        "2026-11-18T19:00:00Z",
        0,
        "defer:2026-11-19T07:00:00Z",
    ); // 20:00
    check(PARIS, Mkt, "2026-11-21T18:30:00Z", 0, "allow"); // Saturday 19:30
    check(PARIS, Txn, "2026-11-22T10:00:00Z", 0, "allow");
}

#[test]
fn other_countries() {
    check(
        LONDON,
        Mkt,
        "2026-11-18T21:30:00Z",
        0,
        "defer:2026-11-19T08:00:00Z",
    );
    check(LONDON, Mkt, "2026-11-18T12:00:00Z", 0, "allow");
    check(
        GUERNSEY,
        Mkt,
        "2026-11-18T21:30:00Z",
        0,
        "defer:2026-11-19T09:00:00Z",
    );
    check(
        MUMBAI,
        Mkt,
        "2026-11-18T04:00:00Z",
        0,
        "defer:2026-11-18T04:30:00Z",
    ); // 09:30 IST
    check(MUMBAI, Mkt, "2026-11-18T15:29:00Z", 0, "allow"); // 20:59 IST
    check(MUMBAI, Txn, "2026-11-18T20:00:00Z", 0, "allow"); // 01:30 IST, transactional
    check(SYDNEY, Mkt, "2026-11-18T05:00:00Z", 0, "allow"); // afternoon in every Australian zone
    check(
        SYDNEY,
        Mkt,
        "2026-11-18T10:00:00Z",
        0,
        "defer:2026-11-19T02:30:00Z",
    ); // 21:00 Sydney
    check(
        BERLIN,
        Mkt,
        "2026-11-18T07:30:00Z",
        0,
        "defer:2026-11-18T08:00:00Z",
    ); // default rule
    check(BERLIN, Mkt, "2026-11-18T12:00:00Z", 0, "allow");
}

#[test]
fn daylight_saving_changes() {
    // 2026-03-08: New York springs forward at 02:00; 08:00 EDT is 12:00 UTC.
    check(
        NEW_YORK,
        Mkt,
        "2026-03-08T06:30:00Z",
        0,
        "defer:2026-03-08T12:00:00Z",
    );
    // 2026-11-01: 01:30 happens twice (EDT, then EST); 08:00 EST is 13:00 UTC.
    check(
        NEW_YORK,
        Mkt,
        "2026-11-01T05:30:00Z",
        0,
        "defer:2026-11-01T13:00:00Z",
    );
    check(
        NEW_YORK,
        Mkt,
        "2026-11-01T06:30:00Z",
        0,
        "defer:2026-11-01T13:00:00Z",
    );
    check(LOS_ANGELES, Mkt, "2026-03-08T15:30:00Z", 0, "allow"); // 08:30 PDT
}

#[test]
fn windows_that_open_in_a_gap_or_a_repeated_hour() {
    let rules = jurisdictions::Jurisdictions::load(&[(
        "night.toml".into(),
        "[[rules]]\nid = \"night\"\ntitle = \"t\"\nsource = \"s\"\ncountry = \"US\"\npurposes = [\"marketing\"]\nwindows = { all = \"02:30-05:00\" }\n[[rules]]\nid = \"late\"\ntitle = \"t\"\nsource = \"s\"\ncountry = \"CA\"\npurposes = [\"marketing\"]\nwindows = { all = \"01:30-03:00\" }\n".into(),
    )])
    .unwrap();
    let number = PhoneNumber::parse(NEW_YORK, Region::US).unwrap();
    let location = policies().zones.locate(&number);
    let us: Vec<_> = rules.applicable(&location, Purpose::Marketing);
    // 2025-03-09 02:30 does not exist in New York: the window opens at 03:30 EDT.
    let (verdict, _) =
        jurisdictions::evaluate(&us, &location, "2025-03-09T06:00:00Z".parse().unwrap(), &[]);
    assert_eq!(
        verdict,
        jurisdictions::TimeVerdict::Defer {
            until: "2025-03-09T07:30:00Z".parse().unwrap(),
            rules: vec!["night".into()]
        }
    );
    // 2025-11-02 01:30 happens twice in Toronto: the window opens at the first.
    let toronto = policies()
        .zones
        .locate(&PhoneNumber::parse(TORONTO, Region::US).unwrap());
    let ca: Vec<_> = rules.applicable(&toronto, Purpose::Marketing);
    let (verdict, _) =
        jurisdictions::evaluate(&ca, &toronto, "2025-11-02T04:00:00Z".parse().unwrap(), &[]);
    assert_eq!(
        verdict,
        jurisdictions::TimeVerdict::Defer {
            until: "2025-11-02T05:30:00Z".parse().unwrap(),
            rules: vec!["late".into()]
        }
    );
    // Inside the repeated hour, both occurrences are inside the window.
    for at in ["2025-11-02T05:45:00Z", "2025-11-02T06:45:00Z"] {
        let (verdict, _) = jurisdictions::evaluate(&ca, &toronto, at.parse().unwrap(), &[]);
        assert_eq!(verdict, jurisdictions::TimeVerdict::Allow, "{at}");
    }
}

#[test]
fn a_denial_beats_a_deferral_and_an_unknown_zone_is_never_allowed() {
    let opted_out = vec![
        written_opt_in()[0].clone(),
        ConsentEvent {
            id: "evt_out".into(),
            seq: 2,
            action: Action::OptOut,
            level: None,
            occurred_at: "2021-01-01T00:00:00Z".parse().unwrap(),
            number_reassigned: false,
            ..written_opt_in()[0].clone()
        },
    ];
    assert_eq!(
        outcome(MIAMI, Mkt, "2026-11-19T03:00:00Z", 0, &opted_out),
        "deny:opted_out"
    );
    let number = PhoneNumber::parse(NEW_YORK, Region::US).unwrap();
    let mut nowhere = policies().zones.locate(&number);
    nowhere.zones.clear();
    let rules = policies()
        .jurisdictions
        .applicable(&nowhere, Purpose::Marketing);
    let (verdict, _) = jurisdictions::evaluate(
        &rules,
        &nowhere,
        "2026-11-18T18:00:00Z".parse().unwrap(),
        &[],
    );
    assert!(
        matches!(verdict, jurisdictions::TimeVerdict::Deny(ref d) if d[0].0 == "unknown_time_zone")
    );
}

#[test]
fn there_are_at_least_sixty_cases() {
    let source = include_str!("cases.rs");
    let cases = source.matches("\n    check(").count();
    assert!(cases >= 60, "{cases} cases");
}

const NUMBERS: [&str; 12] = [
    NEW_YORK, MIAMI, PENSACOLA, BOISE, ANCHORAGE, PROVIDENCE, BIRMINGHAM, DALLAS, TORONTO, PARIS,
    SYDNEY, PHOENIX,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// An allow is inside every window in every zone; a deferral names a later instant that
    /// is itself allowed.
    #[test]
    fn allows_are_inside_and_deferrals_land_inside(
        index in 0usize..NUMBERS.len(),
        seconds in 1_767_225_600i64..1_798_761_600, // the years 2026 and 2027
    ) {
        let now = Timestamp::from_second(seconds).unwrap();
        let number = PhoneNumber::parse(NUMBERS[index], Region::US).unwrap();
        let location = policies().zones.locate(&number);
        let rules = policies().jurisdictions.applicable(&location, Purpose::Marketing);
        let timed: Vec<_> = rules.iter().copied().filter(|r| r.cap.is_none()).collect();
        match outcome(NUMBERS[index], Purpose::Marketing, &now.to_string(), 0, &written_opt_in()).as_str() {
            "allow" => prop_assert!(allowed_everywhere(&timed, &location, now)),
            other if other.starts_with("defer:") => {
                let until: Timestamp = other["defer:".len()..].parse().unwrap();
                prop_assert!(until > now);
                prop_assert!(allowed_everywhere(&timed, &location, until));
            }
            other => prop_assert!(false, "unexpected {other}"),
        }
    }
}

/// Every NANP area code of the shipped data (libphonenumber's map, 441 codes): a valid number
/// in it is located in at least one zone, with its state or province when it is in the US or
/// Canada; marketing at 23:30 in any candidate zone is deferred to an instant inside the day in
/// that zone, and at 13:00 on a Wednesday it is allowed wherever every candidate zone is in
/// its working day.
#[test]
fn every_nanp_area_code_is_allowed_by_day_and_deferred_at_night() {
    use jiff::civil::date;
    let zones = &policies().zones;
    let area_codes: std::collections::BTreeSet<&str> = zones
        .prefixes()
        .filter(|prefix| prefix.len() >= 4 && prefix.starts_with('1'))
        .map(|prefix| &prefix[..4])
        .collect();
    assert!(area_codes.len() > 400, "{} area codes", area_codes.len());
    let (mut allowed, mut deferred) = (0, 0);
    for code in area_codes {
        let number = (200..1000)
            .find_map(|exchange| {
                PhoneNumber::parse(&format!("+{code}{exchange}0123"), Region::US).ok()
            })
            .unwrap_or_else(|| panic!("no valid number in area code {}", &code[1..]));
        let location = zones.locate(&number);
        assert!(!location.zones.is_empty(), "{code}: no zone");
        if matches!(number.country(), Some("US" | "CA")) {
            assert!(!location.regions.is_empty(), "{code}: no region");
        }
        let local_hours = |instant: Timestamp| {
            location
                .zones
                .iter()
                .map(|zone| instant.to_zoned(zone.clone()).hour())
                .collect::<Vec<_>>()
        };
        for zone in &location.zones {
            let name = zone.iana_name().unwrap_or("?");
            let night = date(2026, 6, 17)
                .at(23, 30, 0, 0)
                .to_zoned(zone.clone())
                .unwrap();
            let found = outcome(
                number.e164(),
                Mkt,
                &night.timestamp().to_string(),
                0,
                &written_opt_in(),
            );
            let until: Timestamp = found
                .strip_prefix("defer:")
                .unwrap_or_else(|| panic!("{code} at 23:30 in {name}: {found}"))
                .parse()
                .unwrap();
            let opens = until.to_zoned(zone.clone()).hour();
            assert!(
                (8..21).contains(&opens),
                "{code}: deferred to {opens}:xx in {name}"
            );
            deferred += 1;

            let day = date(2026, 6, 17)
                .at(13, 0, 0, 0)
                .to_zoned(zone.clone())
                .unwrap();
            if local_hours(day.timestamp())
                .iter()
                .all(|hour| (10..18).contains(hour))
            {
                let found = outcome(
                    number.e164(),
                    Mkt,
                    &day.timestamp().to_string(),
                    0,
                    &written_opt_in(),
                );
                assert_eq!(found, "allow", "{code} at 13:00 in {name}");
                allowed += 1;
            }
        }
    }
    assert!(
        allowed > 400 && deferred > 400,
        "{allowed} allowed, {deferred} deferred"
    );
}

/// Saskatchewan and Arizona keep standard time all year; their neighbours do not.
#[test]
fn zones_without_daylight_saving_time() {
    const REGINA: &str = "+13065550100";
    const SASKATCHEWAN_OVERLAY: &str = "+14742123456";
    for number in [REGINA, SASKATCHEWAN_OVERLAY] {
        // Canada opens at 09:00 on weekdays: 09:00 CST is 15:00 UTC in July and in January.
        check(
            number,
            Mkt,
            "2026-07-15T14:30:00Z",
            0,
            "defer:2026-07-15T15:00:00Z",
        );
        check(
            number,
            Mkt,
            "2026-01-14T14:30:00Z",
            0,
            "defer:2026-01-14T15:00:00Z",
        );
        check(number, Mkt, "2026-07-15T15:00:00Z", 0, "allow");
        // 21:30 CST is 03:30 UTC the next day, all year: Winnipeg's summer time would close
        // an hour early and open an hour early.
        check(number, Mkt, "2026-07-16T03:20:00Z", 0, "allow");
        check(
            number,
            Mkt,
            "2026-07-16T03:35:00Z",
            0,
            "defer:2026-07-16T15:00:00Z",
        );
    }
    // Phoenix: 08:00 MST is 15:00 UTC in July (Denver's 08:00 MDT would be 14:00).
    let phoenix = "+16022812345";
    check(
        phoenix,
        Mkt,
        "2026-07-15T14:30:00Z",
        0,
        "defer:2026-07-15T15:00:00Z",
    );
    check(
        phoenix,
        Mkt,
        "2026-01-14T14:30:00Z",
        0,
        "defer:2026-01-14T15:00:00Z",
    );
    // 2026-03-08: the US springs forward; Phoenix does not, so 07:30 MST stays 14:30 UTC.
    check(
        phoenix,
        Mkt,
        "2026-03-08T14:30:00Z",
        0,
        "defer:2026-03-08T15:00:00Z",
    );
}
