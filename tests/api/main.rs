//! End-to-end tests: the real server over real TLS, real JWTs, a real database (SQLite, or
//! PostgreSQL when `CONSENTRY_TEST_DATABASE_URL` names one: a schema per test), and a fake
//! gateway that is a real HTTP server on a local port. One binary for all, to build once.

mod audit;
mod authentication;
mod batch;
mod cli;
mod consents;
mod console;
mod docs;
mod edge;
mod fronts;
mod helpers;
mod idempotency;
mod inbound;
mod instances;
mod media;
mod pacing;
mod quiet_hours;
mod reassigned;
mod scheduling;
mod sending;
mod smpp;
mod storage;
mod transport;
mod witnesses;
