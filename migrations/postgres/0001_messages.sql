-- Message records: one row per send request that reached a decision, written (and committed)
-- before the upstream is called. No body and no full phone number is stored readable: the
-- recipient is indexed by a keyed hash, shown masked, and the body, recipient and sender are
-- sealed together in `payload` (AES-256-GCM, nonce || ciphertext || tag) under `key_id`, with
-- the row's id and tenant bound as associated data.
-- PostgreSQL mirror of migrations/sqlite/0001_messages.sql: same tables, columns and indexes.
CREATE TABLE messages (
    id               TEXT    PRIMARY KEY,
    tenant           TEXT    NOT NULL,
    created_at_us    BIGINT  NOT NULL,
    recipient_hash   TEXT    NOT NULL,
    recipient_masked TEXT    NOT NULL,
    sender_masked    TEXT    NOT NULL,
    purpose          TEXT    NOT NULL,
    decision         TEXT    NOT NULL CHECK (decision IN ('allowed', 'denied', 'deferred')),
    reasons          TEXT    NOT NULL,
    upstream         TEXT,
    key_id           TEXT    NOT NULL,
    payload          BYTEA   NOT NULL
);
CREATE INDEX messages_by_recipient ON messages (tenant, recipient_hash, created_at_us);

-- What the upstream answered, appended after the call. The latest row is the message's status.
CREATE TABLE message_outcomes (
    seq                 BIGSERIAL PRIMARY KEY,
    message_id          TEXT    NOT NULL REFERENCES messages (id),
    recorded_at_us      BIGINT  NOT NULL,
    status              TEXT    NOT NULL CHECK (status IN ('sent', 'failed', 'delivered', 'undelivered')),
    upstream_message_id TEXT,
    error_code          TEXT,
    detail              TEXT
);
CREATE INDEX message_outcomes_by_message ON message_outcomes (message_id, seq);

-- Append-only tables refuse UPDATE and DELETE; the trigger's argument is the message.
CREATE FUNCTION consentry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0];
END;
$$;

-- Both tables are append-only: history is evidence.
CREATE TRIGGER messages_are_append_only_update BEFORE UPDATE ON messages
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('messages are append-only');
CREATE TRIGGER messages_are_append_only_delete BEFORE DELETE ON messages
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('messages are append-only');
CREATE TRIGGER message_outcomes_are_append_only_update BEFORE UPDATE ON message_outcomes
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('message outcomes are append-only');
CREATE TRIGGER message_outcomes_are_append_only_delete BEFORE DELETE ON message_outcomes
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('message outcomes are append-only');
