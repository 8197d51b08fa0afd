-- What a release that allowed its held message rested on (the same JSON as `messages.basis`),
-- in its leaf (format version 4) so that `audit verify` replays a deferred, scheduled, paced
-- or throttled message's consent at the time it was finally sent. NULL for releases written
-- before, and for releases that denied, deferred again or cancelled.
ALTER TABLE message_releases ADD COLUMN basis TEXT;
