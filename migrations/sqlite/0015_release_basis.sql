-- The grounds of a decision taken when a held message came due (the same JSON as
-- `messages.basis`): for a release that allowed it, what its consent rested on, replayed by
-- `audit verify` at the time the deferred, scheduled, paced or throttled message was finally
-- sent; for one that denied it or deferred it again, the policy set's version. In the release's
-- leaf (format version 4). NULL for releases written before, and for cancellations and
-- requeues, which no policy decided.
ALTER TABLE message_releases ADD COLUMN basis TEXT;
