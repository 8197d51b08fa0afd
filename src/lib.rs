//! consentry: a compliance and consent-aware TLS proxy for application-to-person SMS.
//!
//! The map of the code (ARCHITECTURE.md has the longer version, and the direction of imports),
//! roughly from the pure core outwards. No module imports one that imports it back
//! (`.ci/module-cycles` checks it in CI):
//!
//! | module      | owns                                                                  | IO? |
//! |-------------|-----------------------------------------------------------------------|-----|
//! | `domain`    | parsed types: `PhoneNumber` (E.164), `Sender`, `Purpose`, `Scope`, ...  | no  |
//! | `policy`    | `decide()`: the only maker of a `Permit`; jurisdiction rules, the trace | no  |
//! | `consent`   | consent events, scopes, the fold from a recipient's ledger to a state  | no  |
//! | `numbering` | libphonenumber's metadata as shipped; reading a written number         | no  |
//! | `zones`     | number -> country, regions, candidate time zones (libphonenumber data) | no  |
//! | `holidays`  | holiday calendars computed for any year                                | no  |
//! | `keywords`  | the reply classifier (STOP, START, HELP, review)                       | no  |
//! | `dialect`   | each gateway's webhooks, send requests, answers and error codes        | no  |
//! | `import`    | push parsers for streamed CSV and NDJSON imports                       | no  |
//! | `rfc3339`   | RFC 3339 instants read strictly (offsets within ±23:59)                | no  |
//! | `crypto`    | AES-256-GCM key ring, keyed hashes of numbers (ring)                   | no  |
//! | `auth`      | JWT verification -> `Principal`; development tokens                    | no  |
//! | `config`    | TOML -> checked configuration; secrets by reference, redacted          | reads files |
//! | `datadir`   | the data folder: certificate and keys made once, reused                | yes |
//! | `store`     | the store's traits by concern; its SQLite and PostgreSQL backends      | yes |
//! | `keyring`   | data keys (wrapped, rotated), recipient keys (erased): what seals what | yes |
//! | `audit`     | the verifiable log: leaves, Merkle proofs, checkpoints, the sequencer, | yes |
//! |             | notes and cosignatures (C2SP), gathering witnesses' cosignatures       |     |
//! | `upstream`  | gateways: sandbox, http-json, twilio, telnyx, vonage; need a `Permit`  | yes |
//! | `reassigned`| the reassigned-numbers lookup (yes / no / no data), cached             | yes |
//! | `pacing`    | each upstream's and sender's rate and a gateway's pauses: when to send | no  |
//! | `state`     | `AppState`: what handlers, flows and workers share; clock, turns       | yes |
//! | `flow`      | the send, reply and consent flows: gather, decide, record, forward     | yes |
//! | `scheduler` | releases deferred messages, deciding each again                        | yes |
//! | `outbox`    | delivers replies and statuses to tenants' webhooks and callbacks       | yes |
//! | `http`      | routes, request parsing, the fronts, the one error-to-response mapping | yes |
//! | `server`    | TLS accept loop, HTTP/1.1 + h2, graceful shutdown                      | yes |
//! | `witness`   | `consentry witness`: a C2SP tlog-witness for another operator to run  | yes |
//! | `app`       | wiring: config -> `AppState` -> listeners and workers                  | yes |
//!
//! Invariants (each has a test): fail closed; log before forward; the decision is pure; no
//! body and no full phone number in plaintext in the database or the logs; the upstream request
//! is built from scratch; one cryptography backend, ring.

#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod consent;
pub mod crypto;
pub mod datadir;
pub mod dialect;
pub mod domain;
pub mod flow;
pub mod holidays;
pub mod http;
pub mod import;
pub mod keyring;
pub mod keywords;
pub mod metrics;
pub mod numbering;
pub mod outbox;
pub mod pacing;
pub mod policy;
pub mod reassigned;
pub mod rfc3339;
pub mod scheduler;
pub mod server;
pub mod smpp;
pub mod state;
pub mod store;
pub mod upstream;
pub mod witness;
pub mod zones;

pub use app::{App, Listeners};
pub use config::Config;
