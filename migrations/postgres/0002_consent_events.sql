-- The consent ledger: append-only, one row per opt-in or opt-out with its evidence. Current
-- state is never stored; it is derived from these rows (src/consent.rs). The recipient is a
-- keyed hash and a masked form; the number itself and the evidence (disclosure text, IP, user
-- agent, ...) are sealed in `evidence` under `key_id`, with tenant and id as associated data.
-- PostgreSQL mirror of migrations/sqlite/0002_consent_events.sql.
CREATE TABLE consent_events (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    tenant           TEXT    NOT NULL,
    recipient_hash   TEXT    NOT NULL,
    recipient_masked TEXT    NOT NULL,
    action           TEXT    NOT NULL CHECK (action IN ('opt_in', 'opt_out')),
    level            TEXT    CHECK (level IS NULL OR level IN ('express', 'express_written')),
    brand            TEXT,
    campaign         TEXT,
    purposes         TEXT    NOT NULL,
    method           TEXT    NOT NULL,
    occurred_at_us   BIGINT  NOT NULL,
    recorded_at_us   BIGINT  NOT NULL,
    recorded_by      TEXT    NOT NULL,
    external_id      TEXT,
    idempotency_key  TEXT    NOT NULL,
    key_id           TEXT    NOT NULL,
    evidence         BYTEA   NOT NULL
);
-- A re-sent event (same external id, or same content) is recorded once.
CREATE UNIQUE INDEX consent_events_idempotency ON consent_events (tenant, idempotency_key);
-- Covers the send path's read (recipient_facts): the fold's columns are in the index.
CREATE INDEX consent_events_by_recipient ON consent_events
    (tenant, recipient_hash, seq, id, action, level, brand, campaign, purposes, occurred_at_us);

CREATE TRIGGER consent_events_are_append_only_update BEFORE UPDATE ON consent_events
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('the consent ledger is append-only');
CREATE TRIGGER consent_events_are_append_only_delete BEFORE DELETE ON consent_events
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('the consent ledger is append-only');

-- The scope a message was sent at.
ALTER TABLE messages ADD COLUMN brand TEXT;
ALTER TABLE messages ADD COLUMN campaign TEXT;
