-- Idempotency-Key on sends (docs/integrators.md, "Idempotent sends"): the first answer to a key, kept so
-- that a retry gets it again instead of a second decision and forward. `state` is 'pending'
-- while the first request runs; its answer is sealed like a body (it may hold the numbers and
-- text, on the Twilio front), and deleted with the recipient's other data on erasure.
CREATE TABLE idempotency_keys (
    tenant         TEXT NOT NULL,
    key            TEXT NOT NULL,
    request_hash   BLOB NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('pending', 'answered')),
    created_at_us  INTEGER NOT NULL,
    expires_at_us  INTEGER NOT NULL,
    status         INTEGER,
    content_type   TEXT,
    key_id         TEXT,
    answer         BLOB,
    recipient_hash TEXT,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at_us);
CREATE INDEX idempotency_keys_by_recipient ON idempotency_keys (tenant, recipient_hash)
    WHERE recipient_hash IS NOT NULL;
