-- Deferred messages: a message outside a window waits here until `release_at_us`, when it is
-- decided again (consent may have changed) and sent, deferred again or cancelled.
-- A worker claims a due message (`claimed_at_us`) and marks it `done` once the decision at
-- release is recorded, before anything is sent: each release happens once. A claim that is not
-- done within the lease (the worker died) is taken again.
CREATE TABLE deferred_messages (
    message_id    TEXT    PRIMARY KEY REFERENCES messages (id),
    tenant        TEXT    NOT NULL,
    release_at_us INTEGER NOT NULL,
    claimed_at_us INTEGER,
    done          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX deferred_messages_due ON deferred_messages (release_at_us) WHERE done = 0;

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
