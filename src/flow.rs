//! The flows: what happens to a message or a consent event between the edge that parsed it
//! and the answer. Each is a function of the shared [`AppState`](crate::state::AppState) and of
//! parsed values; none knows HTTP, so the native API, the gateway fronts, the scheduler and the
//! outbox call the same code.
//!
//! - [`send`]: gather a recipient's facts, decide, record the decision (sealed, durable), then
//!   forward an allowed message with its permit and append the outcome.
//! - [`receive`]: a verified reply is classified and recorded with what it causes, in the
//!   recipient's turn, then answered through `send`; a gateway's delivery status is appended
//!   and passed on; a review is resolved.
//! - [`consent`]: a validated consent event sealed into its ledger record and written in the
//!   recipient's turn.
//!
//! Each names the part of the store it uses through `AppState`'s accessors (`state.ledger()`,
//! `state.messages()`, ...): `send` the ledger, messages and, for a body, the audit log;
//! `receive` inbound messages and reviews, messages and the outbox; `consent` the ledger.
//!
//! A denial is not an error: it is a normal value (`send::Processed::Denied`). A [`FlowError`]
//! is a malfunction, and nothing was forwarded; `http::error` is the one place that turns it
//! into a response.

pub mod combine;
pub mod consent;
pub mod receive;
pub mod request;
pub mod send;

use crate::dialect::WebhookError;
use crate::store::StoreError;

/// Why a flow stopped. Each variant says who failed; `http::error` maps each to its status and
/// stable code (503 `store_unavailable`, 503 `encryption_unavailable`, the reply's own 400).
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The store could not be read or written: nothing was sent.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What was to be recorded could not be sealed, so it was not recorded (nor sent). The text
    /// says what and what did not happen.
    #[error("{0}")]
    Encryption(&'static str),
    /// A stored record or payload cannot be read back or opened. The text says which.
    #[error("{0}")]
    Unreadable(String),
    /// The reply is not one consentry can read (its sender is not a phone number, ...).
    #[error(transparent)]
    Reply(#[from] WebhookError),
    /// The reassigned-numbers lookup a send needed did not answer: nothing was sent.
    #[error(transparent)]
    Lookup(#[from] crate::reassigned::LookupError),
}
