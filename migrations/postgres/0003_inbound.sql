-- Replies from recipients, reviews of uncertain opt-outs, and the outbox of deliveries to
-- tenants' webhooks. PostgreSQL mirror of migrations/sqlite/0003_inbound.sql.

-- Answers to replies: which kind, and for an opt-out confirmation, the opt-out it confirms.
-- The unique index makes "at most one confirmation per opt-out" a property of the database.
ALTER TABLE messages ADD COLUMN reply_kind TEXT;
ALTER TABLE messages ADD COLUMN confirms_event TEXT;
CREATE UNIQUE INDEX messages_one_confirmation_per_opt_out
    ON messages (confirms_event) WHERE confirms_event IS NOT NULL;
CREATE INDEX messages_confirmations_by_recipient
    ON messages (tenant, recipient_hash) WHERE confirms_event IS NOT NULL;

-- Every verified inbound message, once per gateway message id and tenant ('' when no tenant
-- owns the number written to). The text and both numbers are sealed in `payload`.
CREATE TABLE inbound_messages (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    upstream         TEXT    NOT NULL,
    gateway_id       TEXT    NOT NULL,
    tenant           TEXT    NOT NULL,
    recipient_hash   TEXT    NOT NULL,
    recipient_masked TEXT    NOT NULL,
    to_masked        TEXT    NOT NULL,
    class            TEXT    NOT NULL,
    certain          BOOLEAN NOT NULL,
    consent_event    TEXT,
    received_at_us   BIGINT  NOT NULL,
    key_id           TEXT    NOT NULL,
    payload          BYTEA   NOT NULL
);
CREATE UNIQUE INDEX inbound_messages_once ON inbound_messages (upstream, gateway_id, tenant);
CREATE TRIGGER inbound_messages_are_append_only_update BEFORE UPDATE ON inbound_messages
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('inbound messages are append-only');
CREATE TRIGGER inbound_messages_are_append_only_delete BEFORE DELETE ON inbound_messages
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('inbound messages are append-only');

-- Replies that may be an opt-out: open until resolved; while open they block sends when the
-- keyword policy says so.
CREATE TABLE consent_reviews (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    tenant           TEXT    NOT NULL,
    recipient_hash   TEXT    NOT NULL,
    recipient_masked TEXT    NOT NULL,
    inbound_id       TEXT    NOT NULL REFERENCES inbound_messages (id),
    created_at_us    BIGINT  NOT NULL
);
CREATE INDEX consent_reviews_by_recipient ON consent_reviews (tenant, recipient_hash);
CREATE TABLE review_resolutions (
    review_id      TEXT    PRIMARY KEY REFERENCES consent_reviews (id),
    outcome        TEXT    NOT NULL CHECK (outcome IN ('opt_out', 'not_opt_out')),
    resolved_by    TEXT    NOT NULL,
    resolved_at_us BIGINT  NOT NULL,
    consent_event  TEXT
);
CREATE TRIGGER consent_reviews_are_append_only_update BEFORE UPDATE ON consent_reviews
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('reviews are append-only');
CREATE TRIGGER consent_reviews_are_append_only_delete BEFORE DELETE ON consent_reviews
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('reviews are append-only');
CREATE TRIGGER review_resolutions_are_append_only_update BEFORE UPDATE ON review_resolutions
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('resolutions are append-only');
CREATE TRIGGER review_resolutions_are_append_only_delete BEFORE DELETE ON review_resolutions
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('resolutions are append-only');

-- Deliveries to tenants' webhooks, retried with backoff until the tenant answers 2xx. The
-- payload (the inbound message as the tenant receives it) is sealed. Operational state, so
-- attempts and delivery are updated in place.
CREATE TABLE webhook_outbox (
    seq                BIGSERIAL PRIMARY KEY,
    id                 TEXT    NOT NULL UNIQUE,
    tenant             TEXT    NOT NULL,
    created_at_us      BIGINT  NOT NULL,
    key_id             TEXT    NOT NULL,
    payload            BYTEA   NOT NULL,
    attempts           BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at_us BIGINT  NOT NULL,
    delivered_at_us    BIGINT,
    last_error         TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at_us) WHERE delivered_at_us IS NULL;
