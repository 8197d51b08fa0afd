//! Consent: the events of the append-only ledger, their scopes, and the fold that derives the
//! current state for one message from a recipient's history.
//!
//! Pure: no IO, no clock. The ledger itself lives in the store; this module decides what it
//! means.
//!
//! Scopes nest: the tenant contains its brands, a brand contains its campaigns. An event covers
//! its scope and everything inside it, for the purposes it lists (none listed: every purpose).
//! For a message sent at scope `S` for purpose `P`, the events that matter are those whose scope
//! contains `S` and whose purposes cover `P`; among them:
//!
//! - the latest decides whether the recipient is opted out: an opt-out at a wider scope that is
//!   later than a narrower opt-in wins, and within one scope the later event wins;
//! - events are ordered by the time they happened, then opt-outs after opt-ins of the same
//!   instant (fail closed), then by the order they were recorded;
//! - the consent level is the highest level among the opt-ins since the last opt-out;
//! - events that happen after `now` do not count yet;
//! - with the "revoke-all" policy (47 CFR 64.1200(a)(10) as amended, due 2027-01-31), every
//!   opt-out covers the whole tenant and every purpose, whatever scope it was recorded at.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::domain::Purpose;
pub use crate::domain::Scope;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    OptIn,
    OptOut,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::OptIn => "opt_in",
            Action::OptOut => "opt_out",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "opt_in" => Some(Action::OptIn),
            "opt_out" => Some(Action::OptOut),
            _ => None,
        }
    }
}

/// How strong an opt-in is. `ExpressWritten` is TCPA prior express written consent
/// (47 CFR 64.1200(f)(9)): a signed agreement (E-SIGN counts) naming the seller and the number,
/// saying consent is not a condition of purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Express,
    ExpressWritten,
}

impl Level {
    pub fn as_str(&self) -> &'static str {
        match self {
            Level::Express => "express",
            Level::ExpressWritten => "express_written",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "express" => Some(Level::Express),
            "express_written" => Some(Level::ExpressWritten),
            _ => None,
        }
    }
}

/// The purposes an event covers; empty means every purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Purposes(pub BTreeSet<Purpose>);

impl Purposes {
    pub fn all() -> Purposes {
        Purposes(BTreeSet::new())
    }

    pub fn covers(&self, purpose: Purpose) -> bool {
        self.0.is_empty() || self.0.contains(&purpose)
    }
}

/// One event of the ledger, as the fold needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentEvent {
    pub id: String,
    /// The order in which the ledger recorded it.
    pub seq: i64,
    pub action: Action,
    /// For opt-ins; an opt-in without a level counts as `Express`.
    pub level: Option<Level>,
    pub scope: Scope,
    pub purposes: Purposes,
    pub occurred_at: Timestamp,
    /// An opt-out recorded because the number left the person who consented (a carrier's
    /// deactivation, a reassigned-numbers lookup), not because its owner asked: it ends every
    /// consent before it like any opt-out, and a denial names it `number_reassigned`.
    pub number_reassigned: bool,
}

impl ConsentEvent {
    /// An event from its stored columns (a ledger row, or a consent event's leaf); names the
    /// column that does not read.
    #[allow(clippy::too_many_arguments)]
    pub fn from_columns(
        seq: i64,
        id: String,
        action: &str,
        level: Option<&str>,
        brand: Option<String>,
        campaign: Option<String>,
        purposes: &str,
        occurred_at_us: i64,
        method: &str,
    ) -> Result<ConsentEvent, &'static str> {
        Ok(ConsentEvent {
            id,
            seq,
            action: Action::parse(action).ok_or("action")?,
            level: match level {
                None => None,
                Some(level) => Some(Level::parse(level).ok_or("level")?),
            },
            scope: Scope { brand, campaign },
            purposes: Purposes(
                purposes
                    .split_whitespace()
                    .map(|p| p.parse::<Purpose>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| "purposes")?,
            ),
            occurred_at: Timestamp::from_microsecond(occurred_at_us)
                .map_err(|_| "occurred_at_us")?,
            number_reassigned: is_number_change(method),
        })
    }
}

/// The `method` of an opt-out recorded from a carrier's deactivation file.
pub const NUMBER_DEACTIVATED: &str = "number_deactivated";
/// The `method` of an opt-out recorded from a reassigned-numbers lookup that answered yes.
pub const REASSIGNED_LOOKUP: &str = "reassigned_lookup";

/// Whether an event's `method` says the number changed hands.
pub fn is_number_change(method: &str) -> bool {
    method == NUMBER_DEACTIVATED || method == REASSIGNED_LOOKUP
}

/// What a purpose needs before a message may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// No opt-in needed (an opt-out still blocks).
    None,
    /// An opt-in of at least this level, in scope, since the last opt-out.
    Express,
    ExpressWritten,
}

impl Requirement {
    fn level(&self) -> Option<Level> {
        match self {
            Requirement::None => None,
            Requirement::Express => Some(Level::Express),
            Requirement::ExpressWritten => Some(Level::ExpressWritten),
        }
    }
}

/// The consent rules in force, from `policies/consent.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentPolicy {
    pub marketing: Requirement,
    pub informational: Requirement,
    pub transactional: Requirement,
    pub revoke_all: bool,
}

impl ConsentPolicy {
    pub fn requirement(&self, purpose: Purpose) -> Requirement {
        match purpose {
            Purpose::Marketing => self.marketing,
            Purpose::Informational => self.informational,
            Purpose::Transactional => self.transactional,
        }
    }
}

/// The state of consent for one (scope, purpose), with the event that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentState<'a> {
    OptedOut(&'a ConsentEvent),
    OptedIn {
        level: Level,
        event: &'a ConsentEvent,
    },
    NoRecord,
}

/// The scope an event really covers under `policy` (revoke-all widens opt-outs).
pub fn effective_scope<'a>(
    event: &'a ConsentEvent,
    policy: &ConsentPolicy,
) -> (Scope, &'a Purposes) {
    static ALL: std::sync::OnceLock<Purposes> = std::sync::OnceLock::new();
    if policy.revoke_all && event.action == Action::OptOut {
        (Scope::tenant_wide(), ALL.get_or_init(Purposes::all))
    } else {
        (event.scope.clone(), &event.purposes)
    }
}

/// The order of events: when they happened, opt-outs after opt-ins of the same instant, then
/// the ledger's order.
pub fn order_key(event: &ConsentEvent) -> (Timestamp, u8, i64) {
    let rank = match event.action {
        Action::OptIn => 0,
        Action::OptOut => 1,
    };
    (event.occurred_at, rank, event.seq)
}

/// Derives the state for a message at `scope` for `purpose` from a recipient's events.
pub fn state<'a>(
    events: &'a [ConsentEvent],
    scope: &Scope,
    purpose: Purpose,
    policy: &ConsentPolicy,
    now: Timestamp,
) -> ConsentState<'a> {
    let mut relevant: Vec<&ConsentEvent> = events
        .iter()
        .filter(|event| event.occurred_at <= now)
        .filter(|event| {
            let (covered, purposes) = effective_scope(event, policy);
            covered.contains(scope) && purposes.covers(purpose)
        })
        .collect();
    relevant.sort_by_key(|event| order_key(event));

    let since_last_opt_out = match relevant.iter().rposition(|e| e.action == Action::OptOut) {
        Some(position) if position == relevant.len() - 1 => {
            return ConsentState::OptedOut(relevant[position]);
        }
        Some(position) => &relevant[position + 1..],
        None => &relevant[..],
    };
    // The strongest opt-in since the last opt-out; among equals, the latest.
    since_last_opt_out
        .iter()
        .map(|event| (event.level.unwrap_or(Level::Express), *event))
        .max_by_key(|(level, event)| (*level, order_key(event)))
        .map_or(ConsentState::NoRecord, |(level, event)| {
            ConsentState::OptedIn { level, event }
        })
}

/// Why consent does not allow a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentProblem<'a> {
    OptedOut(&'a ConsentEvent),
    /// No opt-in, or one too weak: what was needed, and what there is.
    NoConsent {
        needed: Level,
        strongest: Option<&'a ConsentEvent>,
    },
}

/// Checks a message at `scope` for `purpose` against the events and the policy.
pub fn check<'a>(
    events: &'a [ConsentEvent],
    scope: &Scope,
    purpose: Purpose,
    policy: &ConsentPolicy,
    now: Timestamp,
) -> Result<ConsentState<'a>, ConsentProblem<'a>> {
    let found = state(events, scope, purpose, policy, now);
    let needed = policy.requirement(purpose).level();
    match (found, needed) {
        (ConsentState::OptedOut(event), _) => Err(ConsentProblem::OptedOut(event)),
        (found, None) => Ok(found),
        (ConsentState::OptedIn { level, .. }, Some(needed)) if level >= needed => Ok(found),
        (ConsentState::OptedIn { event, .. }, Some(needed)) => Err(ConsentProblem::NoConsent {
            needed,
            strongest: Some(event),
        }),
        (ConsentState::NoRecord, Some(needed)) => Err(ConsentProblem::NoConsent {
            needed,
            strongest: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn policy(revoke_all: bool) -> ConsentPolicy {
        ConsentPolicy {
            marketing: Requirement::ExpressWritten,
            informational: Requirement::Express,
            transactional: Requirement::None,
            revoke_all,
        }
    }

    fn scope(brand: Option<&str>, campaign: Option<&str>) -> Scope {
        Scope {
            brand: brand.map(str::to_owned),
            campaign: campaign.map(str::to_owned),
        }
    }

    /// The scope tree the tests use: the tenant, brands b1 and b2, campaigns b1/c1, b1/c2, b2/c3.
    fn all_scopes() -> Vec<Scope> {
        vec![
            scope(None, None),
            scope(Some("b1"), None),
            scope(Some("b2"), None),
            scope(Some("b1"), Some("c1")),
            scope(Some("b1"), Some("c2")),
            scope(Some("b2"), Some("c3")),
        ]
    }

    fn event(seq: i64, action: Action, level: Option<Level>, at: i64, on: Scope) -> ConsentEvent {
        ConsentEvent {
            id: format!("e{seq}"),
            seq,
            action,
            level,
            scope: on,
            purposes: Purposes::all(),
            occurred_at: Timestamp::from_second(at).unwrap(),
            number_reassigned: false,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap()
    }

    #[test]
    fn scopes_nest() {
        let tenant = scope(None, None);
        let brand = scope(Some("b1"), None);
        let campaign = scope(Some("b1"), Some("c1"));
        assert!(tenant.contains(&campaign) && tenant.contains(&brand));
        assert!(brand.contains(&campaign) && brand.contains(&brand));
        assert!(!campaign.contains(&brand) && !brand.contains(&tenant));
        assert!(!scope(Some("b2"), None).contains(&campaign));
        assert!(!scope(Some("b1"), Some("c2")).contains(&campaign));
    }

    #[test]
    fn the_rules_of_the_issue_hold() {
        let tenant = scope(None, None);
        let campaign = scope(Some("b1"), Some("c1"));
        let p = policy(false);
        let written = Some(Level::ExpressWritten);

        // A wider opt-out later than a narrower opt-in wins.
        let events = vec![
            event(1, Action::OptIn, written, 10, campaign.clone()),
            event(2, Action::OptOut, None, 20, tenant.clone()),
        ];
        assert!(matches!(
            check(&events, &campaign, Purpose::Marketing, &p, now()),
            Err(ConsentProblem::OptedOut(e)) if e.id == "e2"
        ));
        // A narrower opt-in later than the wider opt-out applies inside its scope only.
        let mut events = events;
        events.push(event(3, Action::OptIn, written, 30, campaign.clone()));
        assert!(check(&events, &campaign, Purpose::Marketing, &p, now()).is_ok());
        assert!(
            check(
                &events,
                &scope(Some("b1"), None),
                Purpose::Transactional,
                &p,
                now()
            )
            .is_err()
        );
        // Within one scope, the later event wins, whatever order they were recorded in.
        let events = vec![
            event(1, Action::OptOut, None, 20, tenant.clone()),
            event(2, Action::OptIn, written, 10, tenant.clone()),
        ];
        assert!(check(&events, &tenant, Purpose::Transactional, &p, now()).is_err());
        // At the same instant, the opt-out wins.
        let events = vec![
            event(1, Action::OptOut, None, 10, tenant.clone()),
            event(2, Action::OptIn, written, 10, tenant.clone()),
        ];
        assert!(check(&events, &tenant, Purpose::Transactional, &p, now()).is_err());
    }

    #[test]
    fn each_purpose_needs_its_level() {
        let tenant = scope(None, None);
        let p = policy(false);
        let express = vec![event(
            1,
            Action::OptIn,
            Some(Level::Express),
            10,
            tenant.clone(),
        )];
        assert!(check(&express, &tenant, Purpose::Informational, &p, now()).is_ok());
        assert!(matches!(
            check(&express, &tenant, Purpose::Marketing, &p, now()),
            Err(ConsentProblem::NoConsent {
                needed: Level::ExpressWritten,
                strongest: Some(_)
            })
        ));
        assert!(matches!(
            check(&[], &tenant, Purpose::Informational, &p, now()),
            Err(ConsentProblem::NoConsent {
                strongest: None,
                ..
            })
        ));
        assert!(check(&[], &tenant, Purpose::Transactional, &p, now()).is_ok());
        // A marketing-only opt-out leaves transactional messages alone.
        let mut marketing_out = event(2, Action::OptOut, None, 20, tenant.clone());
        marketing_out.purposes = Purposes([Purpose::Marketing].into());
        let events = [express[0].clone(), marketing_out];
        assert!(check(&events, &tenant, Purpose::Transactional, &p, now()).is_ok());
        assert!(check(&events, &tenant, Purpose::Informational, &p, now()).is_ok());
        assert!(check(&events, &tenant, Purpose::Marketing, &p, now()).is_err());
    }

    #[test]
    fn revoke_all_widens_every_opt_out() {
        let campaign = scope(Some("b1"), Some("c1"));
        let other = scope(Some("b2"), Some("c3"));
        let mut narrow_out = event(2, Action::OptOut, None, 20, campaign);
        narrow_out.purposes = Purposes([Purpose::Marketing].into());
        let events = vec![
            event(
                1,
                Action::OptIn,
                Some(Level::ExpressWritten),
                10,
                scope(None, None),
            ),
            narrow_out,
        ];
        assert!(
            check(
                &events,
                &other,
                Purpose::Informational,
                &policy(false),
                now()
            )
            .is_ok()
        );
        assert!(
            check(
                &events,
                &other,
                Purpose::Informational,
                &policy(true),
                now()
            )
            .is_err()
        );
    }

    #[test]
    fn future_events_do_not_count_yet() {
        let tenant = scope(None, None);
        let events = vec![event(
            1,
            Action::OptIn,
            Some(Level::Express),
            2_000_000,
            tenant.clone(),
        )];
        assert!(
            check(
                &events,
                &tenant,
                Purpose::Informational,
                &policy(false),
                now()
            )
            .is_err()
        );
    }

    /// The reference model: replay the events in order over every (scope, purpose) of the tree,
    /// each event overwriting the state of every scope inside its own. A different formulation
    /// of the same rules: it materialises the state forward instead of querying backward.
    fn replay(
        events: &[ConsentEvent],
        policy: &ConsentPolicy,
        now: Timestamp,
    ) -> BTreeMap<(Scope, Purpose), Option<(Action, Level)>> {
        let mut states = BTreeMap::new();
        for s in all_scopes() {
            for p in Purpose::ALL {
                states.insert((s.clone(), p), None);
            }
        }
        let mut ordered: Vec<&ConsentEvent> =
            events.iter().filter(|e| e.occurred_at <= now).collect();
        ordered.sort_by_key(|e| order_key(e));
        for e in ordered {
            let (covered, purposes) = effective_scope(e, policy);
            for ((s, p), state) in states.iter_mut() {
                if !covered.contains(s) || !purposes.covers(*p) {
                    continue;
                }
                let level = e.level.unwrap_or(Level::Express);
                *state = match (e.action, *state) {
                    (Action::OptOut, _) => Some((Action::OptOut, Level::Express)),
                    (Action::OptIn, Some((Action::OptIn, before))) => {
                        Some((Action::OptIn, before.max(level)))
                    }
                    (Action::OptIn, _) => Some((Action::OptIn, level)),
                };
            }
        }
        states
    }

    fn arbitrary_event() -> impl Strategy<Value = (bool, u8, usize, u8, i64)> {
        (any::<bool>(), 0u8..3, 0usize..6, 0u8..8, 0i64..12)
    }

    proptest! {
        #[test]
        fn the_fold_matches_the_replayed_reference(
            raw in proptest::collection::vec(arbitrary_event(), 0..24),
            revoke_all in any::<bool>(),
            now_second in 0i64..14,
        ) {
            let scopes = all_scopes();
            let events: Vec<ConsentEvent> = raw
                .iter()
                .enumerate()
                .map(|(index, (opt_in, level, scope_index, purpose_bits, at))| ConsentEvent {
                    id: format!("e{index}"),
                    seq: index as i64,
                    action: if *opt_in { Action::OptIn } else { Action::OptOut },
                    level: match level { 0 => None, 1 => Some(Level::Express), _ => Some(Level::ExpressWritten) },
                    scope: scopes[*scope_index].clone(),
                    purposes: Purposes(
                        Purpose::ALL
                            .iter()
                            .enumerate()
                            .filter(|(bit, _)| purpose_bits & (1 << bit) != 0)
                            .map(|(_, p)| *p)
                            .collect(),
                    ),
                    occurred_at: Timestamp::from_second(*at).unwrap(),
                    number_reassigned: false,
                })
                .collect();
            let policy = policy(revoke_all);
            let now = Timestamp::from_second(now_second).unwrap();
            let reference = replay(&events, &policy, now);
            for ((s, p), expected) in reference {
                let derived = match state(&events, &s, p, &policy, now) {
                    ConsentState::OptedOut(_) => Some((Action::OptOut, Level::Express)),
                    ConsentState::OptedIn { level, .. } => Some((Action::OptIn, level)),
                    ConsentState::NoRecord => None,
                };
                prop_assert_eq!(derived, expected, "scope {:?} purpose {:?}", s, p);
            }
        }
    }
}
