//! The decision core: `decide()` turns a canonical message, what the tenant allows, what the
//! sender's token allows and the time into a [`Decision`].
//!
//! Architecture invariant: this module does no IO, reads no clock and holds no state. It is the
//! only place that can produce a [`Permit`], the value the forwarder needs to send a message:
//! holding a permit is the proof that the message was checked. A denial is a normal value with
//! stable reason codes, not an error.

#[cfg(test)]
mod cases;
pub mod jurisdictions;
pub mod rules;

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde::Serialize;

use crate::consent::{self, ConsentEvent, ConsentProblem};
use crate::domain::{CanonicalMessage, Purpose, Reply, Sender, TenantRules};
use crate::zones::Location;
use jurisdictions::{Step, TimeVerdict};
use rules::PolicySet;

/// What the sender's token allows, within the tenant's rules. `None` means "no narrowing".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderBounds {
    pub senders: Option<Vec<Sender>>,
    pub purposes: Option<BTreeSet<Purpose>>,
}

/// Everything the decision is a function of. Later rules (consent, time windows, caps) add
/// their facts here, gathered by the IO edge before `decide()` is called.
#[derive(Debug)]
pub struct Facts<'a> {
    pub tenant: &'a TenantRules,
    pub bounds: &'a SenderBounds,
    pub policies: &'a PolicySet,
    /// The recipient's consent events in this tenant, in any order.
    pub consent: &'a [ConsentEvent],
    /// The recipient's opt-outs (event ids) that a reply has already confirmed.
    pub confirmed_opt_outs: &'a [String],
    /// Open reviews of uncertain opt-outs from the recipient (review ids).
    pub open_reviews: &'a [String],
    /// Where the recipient may be: country, regions, candidate zones.
    pub location: &'a Location,
    /// When the recipient got earlier messages of this purpose from this tenant (for caps).
    pub recent: &'a [Timestamp],
    /// The time the decision is made for; read from the clock by the caller, never here.
    pub now: Timestamp,
    /// When the upstream's pace lets this message leave, if later than `now`
    /// ([`crate::pacing`]): an allowed message is deferred to it.
    pub paced_until: Option<Timestamp>,
}

/// A stable reason code. The string forms are part of the API and never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    SenderNotAllowed,
    PurposeNotAllowed,
    OptedOut,
    /// The number changed hands after its consent (an opt-out from a deactivation file or a
    /// reassigned-numbers lookup).
    NumberReassigned,
    NoConsent,
    PendingReview,
    ReplyNotAllowed,
    QuietHours,
    FrequencyCap,
    UnknownTimeZone,
    NoAllowedWindow,
    /// Not a denial: why a message was deferred.
    OutsideWindow,
    /// Not a denial: the sender asked for a later time (`send_at`).
    Scheduled,
    /// Not a denial: the upstream's or the sender's throughput is used up until a later instant.
    Paced,
    /// Not a denial: the gateway answered 429 (too many requests); sent again after its pause.
    GatewayThrottled,
}

impl ReasonCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReasonCode::SenderNotAllowed => "sender_not_allowed",
            ReasonCode::PurposeNotAllowed => "purpose_not_allowed",
            ReasonCode::OptedOut => "opted_out",
            ReasonCode::NumberReassigned => "number_reassigned",
            ReasonCode::NoConsent => "no_consent",
            ReasonCode::PendingReview => "pending_review",
            ReasonCode::ReplyNotAllowed => "reply_not_allowed",
            ReasonCode::QuietHours => "quiet_hours",
            ReasonCode::FrequencyCap => "frequency_cap",
            ReasonCode::UnknownTimeZone => "unknown_time_zone",
            ReasonCode::NoAllowedWindow => "no_allowed_window",
            ReasonCode::OutsideWindow => "outside_window",
            ReasonCode::Scheduled => "scheduled",
            ReasonCode::Paced => "paced",
            ReasonCode::GatewayThrottled => "gateway_throttled",
        }
    }
}

/// One reason for a denial, with a sentence a person can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub code: ReasonCode,
    pub detail: String,
    /// The consent event behind the reason, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The scope the reason applies at (`tenant`, `brand:b`, `campaign:b/c`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl Reason {
    fn new(code: ReasonCode, detail: String) -> Reason {
        Reason {
            code,
            detail,
            event: None,
            scope: None,
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug)]
pub enum Decision {
    Allow(Permit),
    Deny(Denial),
    Defer(Deferral),
}

impl Decision {
    /// The message decided on, whatever the outcome.
    pub fn message(&self) -> &CanonicalMessage {
        match self {
            Decision::Allow(permit) => &permit.message,
            Decision::Deny(denial) => &denial.message,
            Decision::Defer(deferral) => &deferral.message,
        }
    }

    /// What its record and leaf keep of its grounds (JSON): an allowed message's [`Basis`]
    /// (none for answers to replies, which consent does not gate); for a denial or a deferral,
    /// `{"policies": version}`, the policy set it was decided under (its reasons are kept
    /// beside).
    pub fn basis_json(&self) -> Option<String> {
        match self {
            Decision::Allow(permit) => permit.basis_json(),
            Decision::Deny(Denial { policies, .. })
            | Decision::Defer(Deferral { policies, .. }) => {
                Some(serde_json::json!({ "policies": policies }).to_string())
            }
        }
    }

    /// How the decision was reached: each rule that applied, in each zone, with local times.
    pub fn trace(&self) -> &[Step] {
        match self {
            Decision::Allow(permit) => &permit.trace,
            Decision::Deny(denial) => &denial.trace,
            Decision::Defer(deferral) => &deferral.trace,
        }
    }
}

/// A refused message and why. `reasons` is never empty: the first is the headline code.
#[derive(Debug)]
pub struct Denial {
    pub message: CanonicalMessage,
    pub reasons: Vec<Reason>,
    pub trace: Vec<Step>,
    /// The version of the policy set it was decided under (`PolicySet::version`).
    pub policies: String,
}

/// A message to send later, at `until`, when every rule allows it in every candidate zone. It
/// is decided again then: consent may have changed.
#[derive(Debug)]
pub struct Deferral {
    pub message: CanonicalMessage,
    pub until: Timestamp,
    pub reasons: Vec<Reason>,
    pub trace: Vec<Step>,
    /// The version of the policy set it was decided under (`PolicySet::version`).
    pub policies: String,
}

/// Permission to forward exactly one message. It can only be made by [`decide`], it is not
/// `Clone`, and it carries the message it was decided for, so the forwarder sends what was
/// checked and nothing else.
#[derive(Debug)]
pub struct Permit {
    message: CanonicalMessage,
    decided_at: Timestamp,
    trace: Vec<Step>,
    basis: Option<Basis>,
}

/// What an allowed message's consent rested on, recorded in its leaf so that `audit verify`
/// can replay the decision against the consent events before it in the log: the opt-in that
/// allowed it (none when the purpose needs none and there is none), and the consent rules
/// applied (the requirement for its purpose after the jurisdiction's rules, and whether an
/// opt-out revokes everything).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Basis {
    pub consent_event: Option<String>,
    pub requirement: consent::Requirement,
    pub revoke_all: bool,
    /// The policy set's version (`PolicySet::version`).
    #[serde(default)]
    pub policies: String,
}

impl Basis {
    /// The consent rules it names, for replaying a message of `purpose`.
    pub fn policy(&self) -> consent::ConsentPolicy {
        consent::ConsentPolicy {
            marketing: self.requirement,
            informational: self.requirement,
            transactional: self.requirement,
            revoke_all: self.revoke_all,
        }
    }
}

impl Permit {
    /// What its consent rested on; `None` for answers to replies, which consent does not gate.
    pub fn basis(&self) -> Option<&Basis> {
        self.basis.as_ref()
    }

    /// Its basis as its record and leaf keep it (JSON).
    pub fn basis_json(&self) -> Option<String> {
        self.basis
            .as_ref()
            .and_then(|basis| serde_json::to_string(basis).ok())
    }

    pub fn message(&self) -> &CanonicalMessage {
        &self.message
    }

    pub fn trace(&self) -> &[Step] {
        &self.trace
    }

    pub fn decided_at(&self) -> Timestamp {
        self.decided_at
    }
}

/// Decides whether `message` may be sent now. Pure: the same inputs give the same answer.
///
/// Every failing rule adds a reason, so the caller sees all that is wrong at once.
pub fn decide(message: CanonicalMessage, facts: &Facts<'_>) -> Decision {
    let mut reasons = Vec::new();

    let tenant_allows_sender = facts.tenant.senders.contains(&message.from);
    let token_allows_sender = facts
        .bounds
        .senders
        .as_ref()
        .is_none_or(|senders| senders.contains(&message.from));
    if !tenant_allows_sender {
        reasons.push(Reason::new(
            ReasonCode::SenderNotAllowed,
            format!(
                "sender {} is not one of tenant {}'s senders",
                message.from.masked(),
                message.tenant
            ),
        ));
    } else if !token_allows_sender {
        reasons.push(Reason::new(
            ReasonCode::SenderNotAllowed,
            format!(
                "sender {} is outside the senders this token allows",
                message.from.masked()
            ),
        ));
    }

    let purpose = message.purpose;
    if !facts.tenant.purposes.contains(&purpose) {
        reasons.push(Reason::new(
            ReasonCode::PurposeNotAllowed,
            format!(
                "purpose {} is not allowed for tenant {}",
                purpose.as_str(),
                message.tenant
            ),
        ));
    } else if let Some(allowed) = &facts.bounds.purposes
        && !allowed.contains(&purpose)
    {
        reasons.push(Reason::new(
            ReasonCode::PurposeNotAllowed,
            format!(
                "purpose {} is outside the purposes this token allows",
                purpose.as_str()
            ),
        ));
    }

    let rules = facts
        .policies
        .jurisdictions
        .applicable(facts.location, purpose);
    let mut trace = Vec::new();
    let mut deferral = None;
    let mut basis = None;
    match &message.reply {
        Some(Reply::OptOutConfirmation { opt_out_event }) => {
            if let Some(problem) = opt_out_confirmation_problem(opt_out_event, purpose, facts) {
                reasons.push(Reason::new(ReasonCode::ReplyNotAllowed, problem));
            }
        }
        // HELP is answered whether or not the number is subscribed (CTIA).
        Some(Reply::Help) if purpose == Purpose::Transactional => {}
        Some(Reply::Help) => reasons.push(Reason::new(
            ReasonCode::ReplyNotAllowed,
            "a HELP answer is transactional".into(),
        )),
        Some(Reply::OptInConfirmation) => {
            basis = check_consent(&message, facts, &rules, &mut reasons);
        }
        None => {
            basis = check_consent(&message, facts, &rules, &mut reasons);
            // A message held for a later time: its windows, caps and zone are the release's
            // to judge, when `decide` runs again at that time. Consent and the sender are
            // checked now as well, so that what can never be sent is refused at once.
            if let Some(send_at) = message.send_at.filter(|at| *at > facts.now) {
                deferral = Some((
                    send_at,
                    vec![Reason::new(
                        ReasonCode::Scheduled,
                        format!("scheduled by the sender for {send_at}"),
                    )],
                ));
            } else {
                let (verdict, steps) =
                    jurisdictions::evaluate(&rules, facts.location, facts.now, facts.recent);
                trace = steps;
                time_rules(verdict, &mut reasons, &mut deferral);
            }
        }
    }

    if !reasons.is_empty() {
        return Decision::Deny(Denial {
            message,
            reasons,
            trace,
            policies: facts.policies.version.clone(),
        });
    }
    // Allowed, but the upstream's throughput is used up until then: it waits its turn.
    let deferral = deferral.or_else(|| {
        facts.paced_until.map(|until| {
            (
                until,
                vec![Reason::new(
                    ReasonCode::Paced,
                    format!("the gateway's throughput is used up; it leaves at {until}"),
                )],
            )
        })
    });
    if let Some((until, reasons)) = deferral {
        return Decision::Defer(Deferral {
            message,
            until,
            reasons,
            trace,
            policies: facts.policies.version.clone(),
        });
    }
    Decision::Allow(Permit {
        message,
        decided_at: facts.now,
        trace,
        basis,
    })
}

/// What the windows, caps and zones said: denials become reasons; a deferral, the release
/// time with a reason per rule that deferred.
fn time_rules(
    verdict: TimeVerdict,
    reasons: &mut Vec<Reason>,
    deferral: &mut Option<(Timestamp, Vec<Reason>)>,
) {
    match verdict {
        TimeVerdict::Allow => {}
        TimeVerdict::Deny(denials) => {
            for (code, rule, detail) in denials {
                let code = match code {
                    "frequency_cap" => ReasonCode::FrequencyCap,
                    "unknown_time_zone" => ReasonCode::UnknownTimeZone,
                    "no_allowed_window" => ReasonCode::NoAllowedWindow,
                    _ => ReasonCode::QuietHours,
                };
                reasons.push(Reason {
                    code,
                    detail,
                    event: None,
                    scope: Some(format!("rule:{rule}")),
                });
            }
        }
        TimeVerdict::Defer { until, rules } => {
            let why = rules
                .into_iter()
                .map(|rule| Reason {
                    code: ReasonCode::OutsideWindow,
                    detail: format!("outside the window of rule {rule}; deferred to {until}"),
                    event: None,
                    scope: Some(format!("rule:{rule}")),
                })
                .collect();
            *deferral = Some((until, why));
        }
    }
}

/// How long after an opt-out its confirmation may be sent: 47 CFR 64.1200(a)(12) presumes one
/// sent within 5 minutes lawful.
pub const CONFIRMATION_WINDOW_SECONDS: i64 = 5 * 60;

/// Why an opt-out confirmation may not be sent, if it may not. One confirmation per opt-out,
/// transactional, within the window: the only message an opt-out does not block.
fn opt_out_confirmation_problem(
    event_id: &str,
    purpose: Purpose,
    facts: &Facts<'_>,
) -> Option<String> {
    let event = facts
        .consent
        .iter()
        .find(|event| event.id == event_id && event.action == consent::Action::OptOut);
    let Some(event) = event else {
        return Some(format!("{event_id} is not an opt-out of this recipient"));
    };
    if purpose != Purpose::Transactional {
        return Some("an opt-out confirmation is transactional, never marketing".into());
    }
    if facts.confirmed_opt_outs.iter().any(|id| id == event_id) {
        return Some(format!("opt-out {event_id} is already confirmed"));
    }
    let age = facts.now.as_second() - event.occurred_at.as_second();
    if !(0..=CONFIRMATION_WINDOW_SECONDS).contains(&age) {
        return Some(format!(
            "opt-out {event_id} is {age} s old; a confirmation goes within {CONFIRMATION_WINDOW_SECONDS} s"
        ));
    }
    None
}

/// The consent rules: the ledger, then uncertain opt-outs awaiting review. A jurisdiction rule
/// may raise what the purpose needs; the strictest wins. Returns what consent rested on, when
/// the ledger allows the message.
fn check_consent(
    message: &CanonicalMessage,
    facts: &Facts<'_>,
    rules: &[&jurisdictions::Rule],
    reasons: &mut Vec<Reason>,
) -> Option<Basis> {
    let purpose = message.purpose;
    let mut consent_policy = facts.policies.consent.at(facts.now);
    for rule in rules {
        if let Some(needed) = rule.consent {
            let current = match purpose {
                Purpose::Marketing => &mut consent_policy.marketing,
                Purpose::Informational => &mut consent_policy.informational,
                Purpose::Transactional => &mut consent_policy.transactional,
            };
            *current = (*current).max(needed);
        }
    }
    let mut basis = None;
    match consent::check(
        facts.consent,
        &message.scope,
        purpose,
        &consent_policy,
        facts.now,
    ) {
        Ok(state) => {
            basis = Some(Basis {
                consent_event: match state {
                    consent::ConsentState::OptedIn { event, .. } => Some(event.id.clone()),
                    _ => None,
                },
                requirement: consent_policy.requirement(purpose),
                revoke_all: consent_policy.revoke_all,
                policies: facts.policies.version.clone(),
            });
        }
        Err(ConsentProblem::OptedOut(event)) if event.number_reassigned => reasons.push(Reason {
            code: ReasonCode::NumberReassigned,
            detail: format!(
                "the number changed hands on {}: consent given before then is not the current owner's",
                event.occurred_at
            ),
            event: Some(event.id.clone()),
            scope: Some(event.scope.label()),
        }),
        Err(ConsentProblem::OptedOut(event)) => reasons.push(Reason {
            code: ReasonCode::OptedOut,
            detail: format!(
                "the recipient opted out at scope {} on {}",
                event.scope.label(),
                event.occurred_at
            ),
            event: Some(event.id.clone()),
            scope: Some(event.scope.label()),
        }),
        Err(ConsentProblem::NoConsent { needed, strongest }) => reasons.push(Reason {
            code: ReasonCode::NoConsent,
            detail: match strongest {
                Some(event) => format!(
                    "{} messages need {} consent at scope {}; the strongest opt-in since the last opt-out is {}",
                    purpose.as_str(),
                    needed.as_str(),
                    message.scope.label(),
                    event.level.unwrap_or(consent::Level::Express).as_str()
                ),
                None => format!(
                    "{} messages need {} consent at scope {}, and there is none",
                    purpose.as_str(),
                    needed.as_str(),
                    message.scope.label()
                ),
            },
            event: strongest.map(|event| event.id.clone()),
            scope: Some(message.scope.label()),
        }),
    }
    if facts.policies.keywords.review_blocks_sends
        && let Some(review) = facts.open_reviews.first()
    {
        reasons.push(Reason {
            code: ReasonCode::PendingReview,
            detail: "a reply from the recipient may be an opt-out and awaits review".into(),
            event: Some(review.clone()),
            scope: Some("tenant".into()),
        });
    }
    basis
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoliciesConfig;
    use crate::consent::{Action, Level, Purposes};
    use crate::domain::{Body, MessageId, PhoneNumber, Region, Scope, TenantId};

    fn message(from: &str, purpose: Purpose) -> CanonicalMessage {
        CanonicalMessage {
            id: MessageId::new(),
            tenant: TenantId::parse("demo").unwrap(),
            to: PhoneNumber::parse("+14155550123", Region::US).unwrap(),
            from: Sender::parse(from, Region::US).unwrap(),
            body: Body::parse("hello".into()).unwrap(),
            purpose,
            scope: Scope::tenant_wide(),
            reply: None,
            status_callback: None,
            send_at: None,
            media: Vec::new(),
        }
    }

    fn rules() -> TenantRules {
        TenantRules {
            senders: vec![Sender::parse("+12025550100", Region::US).unwrap()],
            purposes: [
                Purpose::Transactional,
                Purpose::Informational,
                Purpose::Marketing,
            ]
            .into(),
        }
    }

    /// Runs `decide` and returns the reason codes, empty for an allow.
    fn check(from: &str, purpose: Purpose, bounds: SenderBounds) -> Vec<&'static str> {
        check_with(from, purpose, bounds, &[])
    }

    fn check_with(
        from: &str,
        purpose: Purpose,
        bounds: SenderBounds,
        consent: &[ConsentEvent],
    ) -> Vec<&'static str> {
        let rules = rules();
        let policies = PolicySet::load(&PoliciesConfig::default()).unwrap();
        let facts = Facts {
            tenant: &rules,
            bounds: &bounds,
            policies: &policies,
            consent,
            confirmed_opt_outs: &[],
            open_reviews: &[],
            location: &policies
                .zones
                .locate(&PhoneNumber::parse("+14155550123", Region::US).unwrap()),
            recent: &[],
            now: Timestamp::UNIX_EPOCH,
            paced_until: None,
        };
        match decide(message(from, purpose), &facts) {
            Decision::Allow(permit) => {
                assert_eq!(permit.decided_at(), Timestamp::UNIX_EPOCH);
                vec![]
            }
            Decision::Deny(denial) => denial.reasons.iter().map(|r| r.code.as_str()).collect(),
            Decision::Defer(deferral) => vec![deferral.reasons[0].code.as_str()],
        }
    }

    #[test]
    fn a_later_send_at_defers_to_it_and_leaves_the_time_rules_to_the_release() {
        let rules = rules();
        let policies = PolicySet::load(&PoliciesConfig::default()).unwrap();
        let bounds = SenderBounds::default();
        let now: Timestamp = "2026-11-19T08:00:00Z".parse().unwrap(); // 00:00 in San Francisco
        let facts = Facts {
            tenant: &rules,
            bounds: &bounds,
            policies: &policies,
            consent: &[],
            confirmed_opt_outs: &[],
            open_reviews: &[],
            location: &policies
                .zones
                .locate(&PhoneNumber::parse("+14155550123", Region::US).unwrap()),
            recent: &[],
            now,
            paced_until: None,
        };
        let later: Timestamp = "2026-11-19T20:00:00Z".parse().unwrap();
        let held = |purpose, send_at| {
            let mut message = message("+12025550100", purpose);
            message.send_at = Some(send_at);
            decide(message, &facts)
        };
        match held(Purpose::Transactional, later) {
            Decision::Defer(deferral) => {
                assert_eq!(deferral.until, later);
                assert_eq!(deferral.reasons[0].code, ReasonCode::Scheduled);
                assert!(deferral.trace.is_empty(), "no window was evaluated now");
            }
            other => panic!("deferred to send_at, not {other:?}"),
        }
        // Due (at its release): decided as any message of now.
        assert!(matches!(
            held(Purpose::Transactional, now),
            Decision::Allow(_)
        ));
        // What consent forbids is denied at once, not held.
        match held(Purpose::Marketing, later) {
            Decision::Deny(denial) => assert_eq!(denial.reasons[0].code, ReasonCode::NoConsent),
            other => panic!("denied now, not {other:?}"),
        }
    }

    #[test]
    fn decisions_follow_tenant_and_token_rules() {
        let none = SenderBounds::default;
        let cases: Vec<(&str, Purpose, SenderBounds, Vec<&str>)> = vec![
            ("+12025550100", Purpose::Transactional, none(), vec![]),
            ("(202) 555-0100", Purpose::Transactional, none(), vec![]),
            (
                "+12025550100",
                Purpose::Informational,
                none(),
                vec!["no_consent"],
            ),
            (
                "+12025550199",
                Purpose::Transactional,
                none(),
                vec!["sender_not_allowed"],
            ),
            (
                "+12025550100",
                Purpose::Marketing,
                SenderBounds {
                    senders: None,
                    purposes: Some([Purpose::Transactional].into()),
                },
                vec!["purpose_not_allowed", "no_consent"],
            ),
            (
                "ACME",
                Purpose::Transactional,
                none(),
                vec!["sender_not_allowed"],
            ),
            (
                "+12025550100",
                Purpose::Informational,
                SenderBounds {
                    senders: None,
                    purposes: Some([Purpose::Transactional].into()),
                },
                vec!["purpose_not_allowed", "no_consent"],
            ),
            (
                "+12025550100",
                Purpose::Transactional,
                SenderBounds {
                    senders: Some(vec![Sender::parse("12345", Region::US).unwrap()]),
                    purposes: None,
                },
                vec!["sender_not_allowed"],
            ),
        ];
        for (from, purpose, bounds, expected) in cases {
            assert_eq!(check(from, purpose, bounds), expected, "{from} {purpose:?}");
        }
    }

    fn event(action: Action, level: Option<Level>, second: i64) -> ConsentEvent {
        ConsentEvent {
            id: format!("evt_{second}"),
            seq: second,
            action,
            level,
            scope: Scope::tenant_wide(),
            purposes: Purposes::all(),
            occurred_at: Timestamp::from_second(second).unwrap(),
            number_reassigned: false,
        }
    }

    #[test]
    fn consent_decides_per_purpose() {
        let none = SenderBounds::default;
        let sender = "+12025550100";
        let written = [event(Action::OptIn, Some(Level::ExpressWritten), -10)];
        let express = [event(Action::OptIn, Some(Level::Express), -10)];
        let stopped = [
            event(Action::OptIn, Some(Level::ExpressWritten), -10),
            event(Action::OptOut, None, -5),
        ];
        let cases: Vec<(Purpose, &[ConsentEvent], Vec<&str>)> = vec![
            (Purpose::Marketing, &written, vec![]),
            (Purpose::Marketing, &express, vec!["no_consent"]),
            (Purpose::Marketing, &[], vec!["no_consent"]),
            (Purpose::Informational, &express, vec![]),
            (Purpose::Informational, &[], vec!["no_consent"]),
            (Purpose::Transactional, &[], vec![]),
            (Purpose::Transactional, &stopped, vec!["opted_out"]),
            (Purpose::Marketing, &stopped, vec!["opted_out"]),
        ];
        for (purpose, consent, expected) in cases {
            assert_eq!(
                check_with(sender, purpose, none(), consent),
                expected,
                "{purpose:?} {consent:?}"
            );
        }
    }
}
