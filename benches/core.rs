//! Micro-benchmarks of the pure core: the reply classifier, `decide()`, and reading a number.
//!
//! `cargo bench --bench core`. Targets (from the issues): classify under 2 µs per message,
//! decide under 5 µs per decision with the shipped policies loaded (all jurisdictions, the
//! recipient's candidate zones, the consent fold).

use std::hint::black_box;

use consentry::config::PoliciesConfig;
use consentry::consent::{Action, ConsentEvent, Level, Purposes};
use consentry::domain::{
    Body, CanonicalMessage, MessageId, PhoneNumber, Purpose, Region, Scope, Sender, TenantId,
    TenantRules,
};
use consentry::policy::rules::PolicySet;
use consentry::policy::{Facts, SenderBounds, decide};
use criterion::{Criterion, criterion_group, criterion_main};
use jiff::Timestamp;

fn classify(c: &mut Criterion) {
    let policies = PolicySet::load(&PoliciesConfig::default()).unwrap();
    let keywords = &policies.keywords;
    let texts = [
        "STOP",
        "Stop please",
        "please stop texting me",
        "Can you stop by tomorrow?",
        "Thanks, see you Tuesday at 5",
        "ＳＴＯＰ",
    ];
    c.bench_function("classify: a mix of six typical replies (per reply)", |b| {
        let mut index = 0;
        b.iter(|| {
            index = (index + 1) % texts.len();
            black_box(keywords.classify(black_box(texts[index])))
        })
    });
}

fn decision(c: &mut Criterion) {
    let policies = PolicySet::load(&PoliciesConfig::default()).unwrap();
    let tenant = TenantRules {
        senders: vec![Sender::parse("+12025550100", Region::US).unwrap()],
        purposes: Purpose::ALL.into_iter().collect(),
    };
    let bounds = SenderBounds::default();
    let now: Timestamp = "2026-11-28T15:00:00Z".parse().unwrap();
    let scope = Scope {
        brand: Some("shoes".into()),
        campaign: Some("spring".into()),
    };
    // A typical history: written opt-in, an opt-out of a campaign, a re-opt-in.
    let consent = vec![
        event(
            1,
            Action::OptIn,
            Some(Level::ExpressWritten),
            Scope::tenant_wide(),
            "2026-01-01T00:00:00Z",
        ),
        event(
            2,
            Action::OptOut,
            None,
            scope.clone(),
            "2026-03-01T00:00:00Z",
        ),
        event(
            3,
            Action::OptIn,
            Some(Level::ExpressWritten),
            scope.clone(),
            "2026-04-01T00:00:00Z",
        ),
    ];
    let message = CanonicalMessage {
        id: MessageId::new(),
        tenant: TenantId::parse("demo").unwrap(),
        to: PhoneNumber::parse("+14155550123", Region::US).unwrap(),
        from: Sender::parse("+12025550100", Region::US).unwrap(),
        body: Body::parse("Spring sale: 20% off".into()).unwrap(),
        purpose: Purpose::Marketing,
        scope,
        reply: None,
        status_callback: None,
        send_at: None,
        media: Vec::new(),
    };
    let location = policies.zones.locate(&message.to);
    c.bench_function("locate: a number's zones and regions", |b| {
        b.iter(|| black_box(policies.zones.locate(black_box(&message.to))))
    });
    c.bench_function("decide: marketing with consent history", |b| {
        b.iter(|| {
            let facts = Facts {
                tenant: &tenant,
                bounds: &bounds,
                policies: &policies,
                consent: &consent,
                confirmed_opt_outs: &[],
                open_reviews: &[],
                location: &location,
                recent: &[],
                now,
                paced_until: None,
            };
            black_box(decide(black_box(message.clone()), &facts))
        })
    });
}

fn event(seq: i64, action: Action, level: Option<Level>, scope: Scope, at: &str) -> ConsentEvent {
    ConsentEvent {
        id: format!("evt_{seq}"),
        seq,
        action,
        level,
        scope,
        purposes: Purposes::all(),
        occurred_at: at.parse().unwrap(),
        number_reassigned: false,
    }
}

/// Reading a written number (`numbering::parse`, which every message pays for its recipient and
/// its sender), beside the validation the `phonenumber` crate would do on its own (its regex
/// cache), for the same numbers: the difference is what `numbering`'s compiled plans save.
fn parse_numbers(c: &mut Criterion) {
    use consentry::numbering;
    let numbers = [
        "+14155550123",
        "+16282123456",
        "+13065550100",
        "+447911123456",
        "+33142685300",
        "+5511912345678",
    ];
    numbering::parse(numbers[0], phonenumber::country::Id::US).unwrap();
    c.bench_function("parse: six numbers of five countries (per number)", |b| {
        let mut index = 0;
        b.iter(|| {
            index = (index + 1) % numbers.len();
            black_box(numbering::parse(
                black_box(numbers[index]),
                phonenumber::country::Id::US,
            ))
        })
    });
    c.bench_function("parse: a North American number in E.164", |b| {
        b.iter(|| {
            black_box(numbering::parse(
                black_box("+14155550123"),
                phonenumber::country::Id::US,
            ))
        })
    });
    let database = numbering::database();
    c.bench_function(
        "parse: the same, validated and typed by the crate (per number)",
        |b| {
            let mut index = 0;
            b.iter(|| {
                index = (index + 1) % numbers.len();
                let number =
                    phonenumber::parse_with(database, None, black_box(numbers[index])).unwrap();
                black_box((
                    number.is_valid_with(database),
                    number.number_type(database),
                    number
                        .metadata(database)
                        .map(|metadata| metadata.id().len()),
                ))
            })
        },
    );
}

criterion_group!(benches, classify, decision, parse_numbers);
criterion_main!(benches);
