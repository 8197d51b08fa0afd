//! The SMPP 3.4 front (`[smpp]`): applications that submit over SMPP (their own ESMEs, or
//! Kannel and Jasmin routing to consentry as their SMSC) bind with a `system_id` and password
//! of `[[smpp.accounts]]`, and each `submit_sm` goes through the one send flow, as an API
//! request does: decided, recorded, forwarded to the tenant's upstream, answered with a
//! `submit_sm_resp` whose status says why when it is refused (docs/smpp.md).
//!
//! - [`text`]: data codings, user data headers and the reassembly of concatenated messages
//!   (pure);
//! - [`pdu`]: framing, what a `submit_sm` asks, the answers (pure);
//! - [`status`]: the command status of each answer of the flow (pure);
//! - [`accounts`]: who may bind, with hashed passwords;
//! - [`deliver`]: replies and receipts to the sessions bound to receive;
//! - [`session`]: the listener and its sessions (the IO edge);
//! - [`client`]: consentry as an ESME, the SMPP upstream (`kind = "smpp"`);
//! - [`wire`]: reading PDUs off a stream, for both.

pub mod accounts;
pub mod client;
pub mod deliver;
pub mod pdu;
pub mod session;
pub mod status;
pub mod text;
pub mod wire;
