//! Pacing: the throughput an upstream (a gateway account, a carrier campaign) and each of its
//! senders may be sent at, from `upstreams[].rate` and `upstreams[].sender_rate`, and the
//! pauses a gateway asks for (a 429 with `Retry-After`).
//!
//! Each limit is a GCRA (generic cell rate algorithm, the token bucket as one timestamp): a
//! rate of `n` a second is one message every `1/n` s, and a burst of `b` lets `b` go at once
//! after a quiet time. A message gets the earliest instant every limit of its upstream and
//! sender allows, and that instant is **reserved** for it: sent now if it is now, otherwise the
//! send flow defers it to that instant (reason `paced`; the record and its place in the queue
//! are durable like any deferral) and the scheduler releases it then, decided again, using the
//! reservation. So queued messages leave one interval apart, exactly at the rate, however many
//! wait.
//!
//! The state is in memory, per process: with several instances each paces its own sends (give
//! each its share of the rate). After a restart, queued messages are released at their times
//! and take new instants as they go.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};

use crate::config::{Config, RateConfig};
use crate::domain::MessageId;

/// How early a forward may be on its theoretical time, to make up for the few milliseconds
/// each release takes between its instant and its forward: without it every late forward
/// would push all the next ones back, and the rate would sag by a few percent. It lets at most
/// 20 ms' worth of messages more into any second.
const FORWARD_SLACK: SignedDuration = SignedDuration::from_millis(20);

/// One limit: an interval between messages, and how many may go at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub interval: SignedDuration,
    pub burst: u32,
}

impl Rate {
    pub fn from_config(config: &RateConfig) -> Rate {
        let interval = match (config.per_second, config.per_minute) {
            (Some(per_second), _) => {
                SignedDuration::from_nanos(1_000_000_000 / i64::from(per_second.max(1)))
            }
            (None, Some(per_minute)) => {
                SignedDuration::from_nanos(60_000_000_000 / i64::from(per_minute.max(1)))
            }
            (None, None) => SignedDuration::ZERO,
        };
        Rate {
            interval,
            burst: config.burst.unwrap_or(1).max(1),
        }
    }

    /// Messages a second.
    pub fn per_second(&self) -> f64 {
        if self.interval.is_zero() {
            return f64::INFINITY;
        }
        1.0 / self.interval.as_secs_f64()
    }

    /// How far ahead of its theoretical time a message may go.
    fn tolerance(&self) -> SignedDuration {
        self.interval * (self.burst as i32 - 1)
    }
}

/// An upstream's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub upstream: Option<Rate>,
    /// Each sender's own limit through this upstream.
    pub sender: Option<Rate>,
}

/// When a message may leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Now: the instant is taken.
    Now,
    /// At this instant, reserved for the message.
    At(Timestamp),
}

/// What `/metrics` shows of one paced upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct PaceView {
    pub upstream: String,
    /// Messages holding a reserved instant (waiting in the queue).
    pub waiting: usize,
    /// The configured rate, messages a second (none: only pauses apply).
    pub rate_per_second: Option<f64>,
    /// How long the gateway's last pause still lasts.
    pub paused_seconds: f64,
}

#[derive(Debug, Default)]
struct Inner {
    limits: HashMap<String, Limits>,
    /// Theoretical arrival times: by upstream, and by (upstream, sender).
    upstream_tat: HashMap<String, Timestamp>,
    sender_tat: HashMap<(String, String), Timestamp>,
    /// Until when a gateway asked not to be sent to.
    paused: HashMap<String, Timestamp>,
    /// Messages with a reserved instant, and their upstream.
    reserved: HashMap<MessageId, String>,
    /// The same limits over what is actually forwarded ([`Pacer::wait_for_turn`]).
    forward_upstream_tat: HashMap<String, Timestamp>,
    forward_sender_tat: HashMap<(String, String), Timestamp>,
}

/// The earliest instant at or after `from` that the limits allow, with the theoretical times
/// moved past it.
/// `slack` widens each limit's tolerance: what a forward may be early by, to make up for one
/// that was late.
fn take(
    limits: Limits,
    upstream_tat: &mut HashMap<String, Timestamp>,
    sender_tat: &mut HashMap<(String, String), Timestamp>,
    (upstream, sender): (&str, &str),
    from: Timestamp,
    slack: SignedDuration,
) -> Timestamp {
    let sender_key = (upstream.to_owned(), sender.to_owned());
    let at = earliest(limits, upstream_tat, sender_tat, &sender_key, from, slack);
    if let Some(rate) = limits.upstream {
        let tat = upstream_tat.entry(upstream.to_owned()).or_insert(at);
        *tat = (*tat).max(at) + rate.interval;
    }
    if let Some(rate) = limits.sender {
        let tat = sender_tat.entry(sender_key).or_insert(at);
        *tat = (*tat).max(at) + rate.interval;
    }
    at
}

/// The earliest instant from `from` that every limit allows, taking nothing.
fn earliest(
    limits: Limits,
    upstream_tat: &HashMap<String, Timestamp>,
    sender_tat: &HashMap<(String, String), Timestamp>,
    sender_key: &(String, String),
    from: Timestamp,
    slack: SignedDuration,
) -> Timestamp {
    let mut at = from;
    if let (Some(rate), Some(tat)) = (limits.upstream, upstream_tat.get(&sender_key.0)) {
        at = at.max(*tat - rate.tolerance() - slack);
    }
    if let (Some(rate), Some(tat)) = (limits.sender, sender_tat.get(sender_key)) {
        at = at.max(*tat - rate.tolerance() - slack);
    }
    at
}

/// The pacing state of a process.
#[derive(Debug, Default)]
pub struct Pacer {
    inner: Mutex<Inner>,
}

impl Pacer {
    /// Takes the limits of `config`'s upstreams (at start and at each reload; the state of the
    /// limits that stay is kept).
    pub fn configure(&self, config: &Config) {
        let limits = config
            .upstreams
            .iter()
            .map(|upstream| {
                (
                    upstream.name.clone(),
                    Limits {
                        upstream: upstream.rate.as_ref().map(Rate::from_config),
                        sender: upstream.sender_rate.as_ref().map(Rate::from_config),
                    },
                )
            })
            .collect();
        self.inner.lock().expect("pacer lock").limits = limits;
    }

    /// The instant `message` may leave through `upstream` from `sender`, at `now`. A message
    /// that holds a reserved instant (it was paced, and is now released) uses it, unless the
    /// gateway has asked for a pause since; any other takes the earliest instant every limit
    /// allows, now or later, and keeps it.
    pub fn slot(&self, message: &MessageId, upstream: &str, sender: &str, now: Timestamp) -> Slot {
        let mut inner = self.inner.lock().expect("pacer lock");
        let paused = inner
            .paused
            .get(upstream)
            .copied()
            .filter(|until| *until > now);
        if inner.reserved.remove(message).is_some() && paused.is_none() {
            return Slot::Now;
        }
        let limits = inner.limits.get(upstream).copied().unwrap_or_default();
        if limits.upstream.is_none() && limits.sender.is_none() && paused.is_none() {
            return Slot::Now;
        }
        let from = paused.unwrap_or(now).max(now);
        let Inner {
            upstream_tat,
            sender_tat,
            ..
        } = &mut *inner;
        let at = take(
            limits,
            upstream_tat,
            sender_tat,
            (upstream, sender),
            from,
            SignedDuration::ZERO,
        );
        if at <= now {
            Slot::Now
        } else {
            inner.reserved.insert(message.clone(), upstream.to_owned());
            Slot::At(at)
        }
    }

    /// Whether a message from `sender` through `upstream` would wait at `now` (its pace is
    /// used up, or the gateway asked for a pause), without taking an instant: the SMPP front
    /// answers `ESME_RTHROTTLED` then, when configured to (`smpp.when_paced`).
    pub fn would_wait(&self, upstream: &str, sender: &str, now: Timestamp) -> bool {
        let inner = self.inner.lock().expect("pacer lock");
        if inner.paused.get(upstream).is_some_and(|until| *until > now) {
            return true;
        }
        let limits = inner.limits.get(upstream).copied().unwrap_or_default();
        let key = (upstream.to_owned(), sender.to_owned());
        let at = earliest(
            limits,
            &inner.upstream_tat,
            &inner.sender_tat,
            &key,
            now,
            SignedDuration::ZERO,
        );
        at > now
    }

    /// How long a message about to be forwarded waits so that forwards themselves keep the
    /// rate: queued messages released late (the process was busy) leave one interval apart,
    /// not in a bunch. Zero when nothing is behind.
    pub fn wait_for_turn(&self, upstream: &str, sender: &str, now: Timestamp) -> SignedDuration {
        let mut inner = self.inner.lock().expect("pacer lock");
        let limits = inner.limits.get(upstream).copied().unwrap_or_default();
        if limits.upstream.is_none() && limits.sender.is_none() {
            return SignedDuration::ZERO;
        }
        let Inner {
            forward_upstream_tat,
            forward_sender_tat,
            ..
        } = &mut *inner;
        let at = take(
            limits,
            forward_upstream_tat,
            forward_sender_tat,
            (upstream, sender),
            now,
            FORWARD_SLACK,
        );
        at.duration_since(now).max(SignedDuration::ZERO)
    }

    /// Whether `message` holds an instant reserved when it was paced (by this process).
    pub fn holds(&self, message: &MessageId) -> bool {
        self.inner
            .lock()
            .expect("pacer lock")
            .reserved
            .contains_key(message)
    }

    /// Gives back a forward's turn taken with [`Pacer::wait_for_turn`] by a message whose
    /// instance stopped while it waited. (Only then: with other turns taken since, the instant
    /// given back is one another message already holds, and two would leave at once; a
    /// stopping instance forwards nothing more.)
    pub fn give_back_turn(&self, upstream: &str, sender: &str) {
        let mut inner = self.inner.lock().expect("pacer lock");
        let limits = inner.limits.get(upstream).copied().unwrap_or_default();
        if let (Some(rate), Some(tat)) = (
            limits.upstream,
            inner.forward_upstream_tat.get_mut(upstream),
        ) {
            *tat -= rate.interval;
        }
        let sender_key = (upstream.to_owned(), sender.to_owned());
        if let (Some(rate), Some(tat)) =
            (limits.sender, inner.forward_sender_tat.get_mut(&sender_key))
        {
            *tat -= rate.interval;
        }
    }

    /// Gives back an instant taken for a message that is not sent after all (denied, or
    /// deferred by another rule): the next message may have it.
    pub fn give_back(&self, message: &MessageId, upstream: &str, sender: &str) {
        let mut inner = self.inner.lock().expect("pacer lock");
        inner.reserved.remove(message);
        let limits = inner.limits.get(upstream).copied().unwrap_or_default();
        if let (Some(rate), Some(tat)) = (limits.upstream, inner.upstream_tat.get_mut(upstream)) {
            *tat -= rate.interval;
        }
        let sender_key = (upstream.to_owned(), sender.to_owned());
        if let (Some(rate), Some(tat)) = (limits.sender, inner.sender_tat.get_mut(&sender_key)) {
            *tat -= rate.interval;
        }
    }

    /// Forgets the instant reserved for a message that will not be released (its sender called
    /// it off): it no longer counts as waiting.
    pub fn forget(&self, message: &MessageId) {
        self.inner
            .lock()
            .expect("pacer lock")
            .reserved
            .remove(message);
    }

    /// The gateway asked not to be sent to until `until` (a 429): no instant before it.
    pub fn pause(&self, upstream: &str, until: Timestamp) {
        let mut inner = self.inner.lock().expect("pacer lock");
        let paused = inner.paused.entry(upstream.to_owned()).or_insert(until);
        *paused = (*paused).max(until);
    }

    /// Each upstream with a rate, a pause or messages waiting, for `/metrics`.
    pub fn views(&self, now: Timestamp) -> Vec<PaceView> {
        let inner = self.inner.lock().expect("pacer lock");
        let mut names: Vec<&String> = inner
            .limits
            .iter()
            .filter(|(_, limits)| limits.upstream.is_some() || limits.sender.is_some())
            .map(|(name, _)| name)
            .chain(inner.paused.keys())
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| PaceView {
                upstream: name.clone(),
                waiting: inner.reserved.values().filter(|u| *u == name).count(),
                rate_per_second: inner
                    .limits
                    .get(name)
                    .and_then(|limits| limits.upstream)
                    .map(|rate| rate.per_second()),
                paused_seconds: inner.paused.get(name).map_or(0.0, |until| {
                    until.duration_since(now).as_secs_f64().max(0.0)
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(upstream: Option<Rate>, sender: Option<Rate>) -> Pacer {
        let pacer = Pacer::default();
        pacer
            .inner
            .lock()
            .unwrap()
            .limits
            .insert("gw".into(), Limits { upstream, sender });
        pacer
    }

    fn rate(per_second: i64, burst: u32) -> Rate {
        Rate {
            interval: SignedDuration::from_nanos(1_000_000_000 / per_second),
            burst,
        }
    }

    fn at(seconds: f64) -> Timestamp {
        Timestamp::UNIX_EPOCH + SignedDuration::from_secs_f64(seconds)
    }

    #[test]
    fn queued_messages_leave_one_interval_apart_after_the_burst() {
        let pacer = pacer(Some(rate(10, 3)), None);
        let slots: Vec<Slot> = (0..6)
            .map(|_| pacer.slot(&MessageId::new(), "gw", "+12025550100", at(100.0)))
            .collect();
        assert_eq!(
            slots,
            vec![
                Slot::Now,
                Slot::Now,
                Slot::Now,
                Slot::At(at(100.1)),
                Slot::At(at(100.2)),
                Slot::At(at(100.3)),
            ]
        );
        // After a quiet second, the burst is back.
        assert_eq!(
            pacer.slot(&MessageId::new(), "gw", "+12025550100", at(102.0)),
            Slot::Now
        );
    }

    #[test]
    fn a_released_message_uses_its_instant_unless_the_gateway_paused() {
        let pacer = pacer(Some(rate(1, 1)), None);
        let (first, second, third) = (MessageId::new(), MessageId::new(), MessageId::new());
        assert_eq!(pacer.slot(&first, "gw", "s", at(10.0)), Slot::Now);
        assert_eq!(pacer.slot(&second, "gw", "s", at(10.0)), Slot::At(at(11.0)));
        assert_eq!(pacer.slot(&third, "gw", "s", at(10.0)), Slot::At(at(12.0)));
        assert_eq!(pacer.views(at(10.0))[0].waiting, 2);
        let called_off = MessageId::new();
        assert_eq!(
            pacer.slot(&called_off, "gw", "s", at(10.0)),
            Slot::At(at(13.0))
        );
        pacer.forget(&called_off);
        assert_eq!(
            pacer.views(at(10.0))[0].waiting,
            2,
            "a cancelled one no longer waits"
        );
        // Released at its instant: it goes, without taking another.
        assert_eq!(pacer.slot(&second, "gw", "s", at(11.0)), Slot::Now);
        // A 429 asked for a pause until 20: the third waits past it.
        pacer.pause("gw", at(20.0));
        assert_eq!(pacer.slot(&third, "gw", "s", at(12.0)), Slot::At(at(20.0)));
        assert_eq!(pacer.views(at(12.0))[0].paused_seconds, 8.0);
    }

    #[test]
    fn each_sender_has_its_own_limit_within_the_upstreams() {
        let pacer = pacer(Some(rate(100, 1)), Some(rate(1, 1)));
        let a = |t| pacer.slot(&MessageId::new(), "gw", "a", at(t));
        assert_eq!(a(5.0), Slot::Now);
        assert_eq!(a(5.0), Slot::At(at(6.0)));
        // Another sender is held by the upstream's limit only.
        assert_eq!(
            pacer.slot(&MessageId::new(), "gw", "b", at(5.0)),
            Slot::At(at(6.01))
        );
    }

    #[test]
    fn messages_released_late_are_forwarded_one_interval_apart() {
        let pacer = pacer(Some(rate(10, 1)), None);
        let waits: Vec<i128> = (0..4)
            .map(|_| pacer.wait_for_turn("gw", "s", at(50.0)).as_millis())
            .collect();
        // 20 ms of slack: each one that follows may be that much early.
        assert_eq!(waits, vec![0, 80, 180, 280]);
        assert_eq!(
            pacer.wait_for_turn("gw", "s", at(60.0)),
            SignedDuration::ZERO
        );
    }

    #[test]
    fn an_instant_given_back_goes_to_the_next_message() {
        let pacer = pacer(Some(rate(1, 1)), None);
        let first = MessageId::new();
        assert_eq!(pacer.slot(&first, "gw", "s", at(0.0)), Slot::Now);
        pacer.give_back(&first, "gw", "s");
        assert_eq!(pacer.slot(&MessageId::new(), "gw", "s", at(0.0)), Slot::Now);
        // An upstream without limits is never paced.
        assert_eq!(
            pacer.slot(&MessageId::new(), "other", "s", at(0.0)),
            Slot::Now
        );
    }
}
