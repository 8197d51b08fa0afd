-- Deferred messages: a message outside a window waits here until `release_at_us`, when it is
-- decided again (consent may have changed) and sent, deferred again or cancelled.
-- A worker claims a due message (`claimed_at_us`) and marks it `done` once the decision at
-- release is recorded, before anything is sent: each release happens once. A claim that is not
-- done within the lease (the worker died) is taken again. Claims take the rows with
-- `FOR UPDATE SKIP LOCKED`, so instances sharing the database never claim one message twice.
-- PostgreSQL mirror of migrations/sqlite/0004_deferred.sql (`done` is a BOOLEAN here).
CREATE TABLE deferred_messages (
    message_id    TEXT    PRIMARY KEY REFERENCES messages (id),
    tenant        TEXT    NOT NULL,
    release_at_us BIGINT  NOT NULL,
    claimed_at_us BIGINT,
    done          BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX deferred_messages_due ON deferred_messages (release_at_us) WHERE NOT done;

-- Every decision taken at a release, appended: the history of a deferred message.
CREATE TABLE message_releases (
    seq           BIGSERIAL PRIMARY KEY,
    message_id    TEXT    NOT NULL REFERENCES messages (id),
    decided_at_us BIGINT  NOT NULL,
    decision      TEXT    NOT NULL CHECK (decision IN ('allowed', 'denied', 'deferred')),
    reasons       TEXT    NOT NULL
);
CREATE INDEX message_releases_by_message ON message_releases (message_id, seq);
CREATE TRIGGER message_releases_are_append_only_update BEFORE UPDATE ON message_releases
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('releases are append-only');
CREATE TRIGGER message_releases_are_append_only_delete BEFORE DELETE ON message_releases
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('releases are append-only');

-- Frequency caps count a recipient's messages of a purpose.
CREATE INDEX messages_by_recipient_purpose ON messages (tenant, recipient_hash, purpose, created_at_us);
