//! What a `submit_sm_resp` says: the one place where the send flow's answers and the request
//! errors become SMPP command statuses. Pure, and documented per code in docs/smpp.md.
//!
//! SMPP 3.4 has no status for "the recipient opted out" or "quiet hours": denials use codes of
//! the range the specification reserves for an SMSC's own errors (0x0400-0x04FF), one per
//! reason, stable across versions. Request errors use the specification's own codes where one
//! fits, and `ESME_RSUBMITFAIL` otherwise.

use crate::policy::ReasonCode;

/// `ESME_ROK`.
pub const OK: u32 = 0x0000_0000;
/// `ESME_RINVMSGLEN`: the text is empty, too long, or does not decode.
pub const INVALID_MESSAGE: u32 = 0x0000_0001;
/// `ESME_RINVBNDSTS`: the command is not allowed in this bind state.
pub const INVALID_BIND_STATE: u32 = 0x0000_0004;
/// `ESME_RALYBND`: the session is bound already.
pub const ALREADY_BOUND: u32 = 0x0000_0005;
/// `ESME_RSYSERR`: consentry could not record or seal the message; nothing was sent. Retry.
pub const SYSTEM_ERROR: u32 = 0x0000_0008;
/// `ESME_RINVSRCADR`: the source address is not a sender consentry can read.
pub const INVALID_SOURCE: u32 = 0x0000_000A;
/// `ESME_RINVDSTADR`: the destination is not a phone number.
pub const INVALID_DESTINATION: u32 = 0x0000_000B;
/// `ESME_RBINDFAIL`: unknown `system_id` or wrong password (the same answer for both).
pub const BIND_FAILED: u32 = 0x0000_000D;
/// `ESME_RINVESMCLASS`: a user data header that does not read.
pub const INVALID_ESM_CLASS: u32 = 0x0000_0043;
/// `ESME_RSUBMITFAIL`: the gateway refused or failed the message, or another request error.
pub const SUBMIT_FAILED: u32 = 0x0000_0045;
/// `ESME_RTHROTTLED`: more `submit_sm` outstanding than the session's window; retry later.
pub const THROTTLED: u32 = 0x0000_0058;
/// `ESME_RINVDCS` (SMPP 5.0's code; 3.4 has none): a data coding that is not text.
pub const INVALID_DATA_CODING: u32 = 0x0000_0104;
/// Part of a concatenated message whose other parts did not arrive in time.
pub const INCOMPLETE_MESSAGE: u32 = 0x0000_0420;
/// Too many concatenated messages waiting for their parts in one session.
pub const TOO_MANY_PARTS_WAITING: u32 = 0x0000_0421;

/// The status of a denial, by its first reason. `None` for the reasons that defer rather
/// than deny (a deferred message is accepted: `ESME_ROK`).
pub fn of_denial(reason: ReasonCode) -> Option<u32> {
    Some(match reason {
        ReasonCode::OptedOut => 0x0401,
        ReasonCode::NoConsent => 0x0402,
        ReasonCode::QuietHours => 0x0403,
        ReasonCode::FrequencyCap => 0x0404,
        ReasonCode::SenderNotAllowed => 0x0405,
        ReasonCode::PurposeNotAllowed => 0x0406,
        ReasonCode::NumberReassigned => 0x0407,
        ReasonCode::PendingReview => 0x0408,
        ReasonCode::ReplyNotAllowed => 0x0409,
        ReasonCode::UnknownTimeZone => 0x040A,
        ReasonCode::NoAllowedWindow => 0x040B,
        ReasonCode::OutsideWindow
        | ReasonCode::Scheduled
        | ReasonCode::Paced
        | ReasonCode::GatewayThrottled => return None,
    })
}

/// The status of a request error, by its stable code (the HTTP API's `code`).
pub fn of_error(code: &str) -> u32 {
    match code {
        "invalid_recipient" => INVALID_DESTINATION,
        "invalid_sender" => INVALID_SOURCE,
        "invalid_body" | "missing_body" => INVALID_MESSAGE,
        _ => SUBMIT_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_denial_has_its_own_code_in_the_vendor_range() {
        let denials = [
            ReasonCode::OptedOut,
            ReasonCode::NoConsent,
            ReasonCode::QuietHours,
            ReasonCode::FrequencyCap,
            ReasonCode::SenderNotAllowed,
            ReasonCode::PurposeNotAllowed,
            ReasonCode::NumberReassigned,
            ReasonCode::PendingReview,
            ReasonCode::ReplyNotAllowed,
            ReasonCode::UnknownTimeZone,
            ReasonCode::NoAllowedWindow,
        ];
        let codes: std::collections::BTreeSet<u32> = denials
            .iter()
            .map(|reason| of_denial(*reason).expect("a denial"))
            .collect();
        assert_eq!(codes.len(), denials.len());
        assert!(codes.iter().all(|code| (0x0400..=0x04FF).contains(code)));
        assert_eq!(of_denial(ReasonCode::Paced), None);
        assert_eq!(of_denial(ReasonCode::OutsideWindow), None, "a deferral");
    }

    #[test]
    fn request_errors_use_the_specifications_codes_where_one_fits() {
        assert_eq!(of_error("invalid_recipient"), INVALID_DESTINATION);
        assert_eq!(of_error("unknown_scope"), SUBMIT_FAILED);
    }
}
