//! The policy loaders on any TOML text (first byte picks which):
//! - 0: `policy::jurisdictions::Jurisdictions::load` on one rule file, then `applicable` and
//!   `evaluate` for a few numbers (located by the shipped `zones::ZoneTable`) and instants
//!   (daylight saving changes, holidays);
//! - 1: `Jurisdictions::load_with_overrides`: the shipped files of `policies/jurisdictions/`
//!   and the text as the configuration's `policies.rules`;
//! - 2: `keywords::KeywordFile` then `keywords::Keywords::new` and `classify`;
//! - 3: `policy::rules::ConsentRules` and `policy::rules::Replies` (then `render`);
//! - 4: `zones::ZoneTable::load` on three data files (fields split at 0xFF), then `locate`.
//!
//! Properties: no panic; an allowed message is inside every window in every zone; a deferral
//! names a later instant that every rule allows.
#![no_main]

use std::sync::LazyLock;

use consentry::domain::{PhoneNumber, Purpose, Region};
use consentry::keywords::{KeywordFile, Keywords};
use consentry::policy::jurisdictions::{allowed_everywhere, evaluate, Jurisdictions, TimeVerdict};
use consentry::policy::rules::{ConsentRules, ReplyFields, ReplyTemplate, Replies};
use consentry::zones::{DataFile, Location, ZoneTable};
use fuzz_common::Fields;
use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;

const NUMBERS: [&str; 8] = [
    "+12125550123",  // New York
    "+13055550123",  // Miami
    "+19075550123",  // Anchorage
    "+14165550123",  // Toronto
    "+33142685300",  // Paris
    "+61412345678",  // an Australian mobile: every Australian zone
    "+18005550199",  // toll-free
    "+442079460000", // London
];

const INSTANTS: [&str; 6] = [
    "2026-03-08T07:30:00Z", // the US spring-forward gap
    "2026-11-01T06:30:00Z", // the US repeated hour
    "2026-12-25T15:00:00Z", // a holiday
    "2026-07-04T02:00:00Z",
    "2026-03-29T00:30:00Z", // the EU spring-forward
    "2026-01-07T18:00:00Z",
];

struct Setup {
    locations: Vec<Location>,
    instants: Vec<Timestamp>,
    shipped: Vec<(String, String)>,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let zones = ZoneTable::embedded().expect("the shipped zones load");
    let locations = NUMBERS
        .iter()
        .map(|n| zones.locate(&PhoneNumber::parse(n, Region::US).expect("a fixed number")))
        .collect();
    let instants = INSTANTS.iter().map(|t| t.parse().unwrap()).collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/jurisdictions");
    let mut shipped: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("policies/jurisdictions")
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.display().to_string(), std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    shipped.sort();
    Setup {
        locations,
        instants,
        shipped,
    }
});

fn exercise(jurisdictions: &Jurisdictions, setup: &Setup) {
    let _ = jurisdictions.longest_cap_hours();
    for location in &setup.locations {
        for purpose in Purpose::ALL {
            let rules = jurisdictions.applicable(location, purpose);
            let timed: Vec<_> = rules.iter().copied().filter(|r| r.cap.is_none()).collect();
            for &now in &setup.instants {
                let recent = [now - jiff::SignedDuration::from_hours(1)];
                let (verdict, _trace) = evaluate(&rules, location, now, &recent);
                match verdict {
                    TimeVerdict::Allow => assert!(
                        allowed_everywhere(&timed, location, now) || timed.is_empty(),
                        "allowed at {now} outside a window"
                    ),
                    TimeVerdict::Defer { until, .. } => {
                        assert!(until > now, "deferred from {now} to {until}");
                        assert!(
                            allowed_everywhere(&timed, location, until),
                            "deferred from {now} to {until}, which is not allowed"
                        );
                    }
                    TimeVerdict::Deny(reasons) => assert!(!reasons.is_empty()),
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let setup = &*SETUP;
    let mut fields = Fields::new(data);
    let mode = fields.byte() % 5;
    if mode == 4 {
        let map = fields.text();
        let regions = fields.text();
        let overrides = fields.text();
        let file = |origin, text| DataFile { origin, text };
        if let Ok(table) = ZoneTable::load(
            file("map", &map),
            file("regions", &regions),
            file("overrides", &overrides),
        ) {
            for number in NUMBERS {
                let location = table.locate(&PhoneNumber::parse(number, Region::US).unwrap());
                let _ = location.zone_names();
            }
            let _ = table.area_codes().count();
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(fields.rest()) else {
        return;
    };
    match mode {
        0 => {
            if let Ok(jurisdictions) = Jurisdictions::load(&[("fuzz.toml".into(), text.into())]) {
                exercise(&jurisdictions, setup);
            }
        }
        1 => {
            if let Ok(jurisdictions) = Jurisdictions::load_with_overrides(
                &setup.shipped,
                Some(("the configuration's policies.rules", text)),
            ) {
                exercise(&jurisdictions, setup);
            }
        }
        2 => {
            if let Ok(file) = toml::from_str::<KeywordFile>(text) {
                if let Ok(keywords) = Keywords::new(&file) {
                    for reply in ["STOP", "stop please", "don't stop texting me", "🛑", "HELP", ""] {
                        let _ = keywords.classify(reply);
                    }
                }
            }
        }
        _ => {
            if let Ok(rules) = toml::from_str::<ConsentRules>(text) {
                for &now in &setup.instants {
                    let _ = rules.at(now);
                }
            }
            if let Ok(replies) = toml::from_str::<Replies>(text) {
                let _ = replies.language_of("arret");
                if replies.templates.contains_key("en") {
                    let fields = ReplyFields {
                        program: "Acme",
                        help_contact: "help@example.com",
                        frequency: "4 msgs/month",
                    };
                    for template in [ReplyTemplate::OptOut, ReplyTemplate::OptIn, ReplyTemplate::Help] {
                        for language in ["en", "fr", "xx"] {
                            let _ = replies.render(template, language, &fields);
                        }
                    }
                }
            }
        }
    }
});
