-- Deferred messages: a message outside a window waits here until `release_at_us`, when it is
-- decided again (consent may have changed) and sent, deferred again or cancelled.
-- `claimed_at_us` is set once by the worker that takes it, so each release happens once.
CREATE TABLE deferred_messages (
    message_id    TEXT    PRIMARY KEY REFERENCES messages (id),
    tenant        TEXT    NOT NULL,
    release_at_us INTEGER NOT NULL,
    claimed_at_us INTEGER
);
CREATE INDEX deferred_messages_due ON deferred_messages (release_at_us) WHERE claimed_at_us IS NULL;

-- Every decision taken at a release, appended: the history of a deferred message.
CREATE TABLE message_releases (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    TEXT    NOT NULL REFERENCES messages (id),
    decided_at_us INTEGER NOT NULL,
    decision      TEXT    NOT NULL CHECK (decision IN ('allowed', 'denied', 'deferred')),
    reasons       TEXT    NOT NULL
);
CREATE INDEX message_releases_by_message ON message_releases (message_id, seq);
CREATE TRIGGER message_releases_are_append_only_update BEFORE UPDATE ON message_releases
BEGIN SELECT RAISE(ABORT, 'releases are append-only'); END;
CREATE TRIGGER message_releases_are_append_only_delete BEFORE DELETE ON message_releases
BEGIN SELECT RAISE(ABORT, 'releases are append-only'); END;

-- Frequency caps count a recipient's messages of a purpose.
CREATE INDEX messages_by_recipient_purpose ON messages (tenant, recipient_hash, purpose, created_at_us);
