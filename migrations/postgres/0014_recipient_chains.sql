-- Complete bundles (docs/auditors.md, "Chains"): every leaf about a recipient names the hash of
-- the previous leaf about the same recipient (leaf format version 3), so that a number's leaves
-- from its first on show that none is missing. Delivery outcomes, releases of deferred messages,
-- inbound replies and review resolutions become leaves too.
--
-- Two columns of `log_leaves`: `chained` (true for a leaf of version 3, written with a link;
-- false for one logged before) and `prev_hash`, its link: the hash of the previous leaf about
-- the same recipient (NULL for the first), which the leaf's bytes hold and its rebuild needs.
-- Kept on the entry itself, so that a leaf whose predecessor was deleted still rebuilds, and
-- its bundle shows the break.
ALTER TABLE log_leaves DROP CONSTRAINT log_leaves_kind_check;
ALTER TABLE log_leaves ADD CONSTRAINT log_leaves_kind_check CHECK (kind IN ('message',
    'consent_event', 'body_access', 'erasure', 'outcome', 'release', 'inbound',
    'review_resolution'));
ALTER TABLE log_leaves ADD COLUMN chained BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE log_leaves ADD COLUMN prev_hash BYTEA;
CREATE OR REPLACE FUNCTION consentry_log_indexed_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.leaf_index IS NOT NULL OR NEW.kind IS DISTINCT FROM OLD.kind
        OR NEW.ref_id IS DISTINCT FROM OLD.ref_id OR NEW.leaf_hash IS DISTINCT FROM OLD.leaf_hash
        OR NEW.tenant IS DISTINCT FROM OLD.tenant OR NEW.chained IS DISTINCT FROM OLD.chained
        OR NEW.prev_hash IS DISTINCT FROM OLD.prev_hash THEN
        RAISE EXCEPTION 'log entries are append-only';
    END IF;
    RETURN NEW;
END;
$$;

-- The newest leaf about each recipient: where the next one links to. Locked and rewritten with
-- every leaf about the recipient, in the leaf's transaction, so that two instances writing about
-- one number link one after the other (a row without a leaf yet is a placeholder, made first so
-- that there is a row to lock). Seeded here with the newest leaf logged before chains, in the
-- log's order (by leaf index; a leaf not yet given one comes after every indexed leaf, and such
-- leaves in `seq` order, as the sequencer will index them): on PostgreSQL a leaf's `seq` and its
-- index need not be in the same order.
CREATE TABLE log_heads (
    tenant         TEXT    NOT NULL,
    recipient_hash TEXT    NOT NULL,
    last_hash      BYTEA,
    PRIMARY KEY (tenant, recipient_hash)
);
INSERT INTO log_heads (tenant, recipient_hash, last_hash)
SELECT tenant, recipient_hash, leaf_hash FROM (
    SELECT about.tenant, about.recipient_hash, l.leaf_hash,
        row_number() OVER (PARTITION BY about.tenant, about.recipient_hash
            ORDER BY CASE WHEN l.leaf_index IS NULL THEN 1 ELSE 0 END DESC,
                COALESCE(l.leaf_index, l.seq) DESC) AS newest
    FROM (
        SELECT m.tenant, m.recipient_hash, l.seq FROM log_leaves l
        JOIN messages m ON l.kind = 'message' AND m.id = l.ref_id
        UNION ALL
        SELECT c.tenant, c.recipient_hash, l.seq FROM log_leaves l
        JOIN consent_events c ON l.kind = 'consent_event' AND c.id = l.ref_id
        UNION ALL
        SELECT e.tenant, e.recipient_hash, l.seq FROM log_leaves l
        JOIN erasures e ON l.kind = 'erasure' AND e.id = l.ref_id
    ) AS about JOIN log_leaves l ON l.seq = about.seq
) AS ranked WHERE newest = 1;

-- Rows that are leaves from now on. Outcomes and releases get ids (their leaves' ref_id); an
-- inbound message or a resolution written from now on is marked `logged`. Rows from before
-- have neither and are not in the log.
ALTER TABLE message_outcomes ADD COLUMN id TEXT;
CREATE UNIQUE INDEX message_outcomes_id ON message_outcomes (id) WHERE id IS NOT NULL;
ALTER TABLE message_releases ADD COLUMN id TEXT;
CREATE UNIQUE INDEX message_releases_id ON message_releases (id) WHERE id IS NOT NULL;
ALTER TABLE inbound_messages ADD COLUMN logged BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE review_resolutions ADD COLUMN logged BOOLEAN NOT NULL DEFAULT false;

-- Adds log entries, pending their indexes, in one round trip whatever their number. Each leaf
-- about a recipient comes built as the first of its chain (its bytes end with 0x00, the absent
-- link: src/audit/leaf.rs); here it is linked to the newest leaf about its recipient (the link
-- field 0x01, length 32, that leaf's hash), under the lock of the recipient's head row, and
-- becomes the newest. The leaf's hash is RFC 6962's, SHA-256(0x00 || leaf). `audit verify`
-- rebuilds every leaf in Rust from its row and the entry it links to, so a difference between
-- the two encodings cannot pass unseen.
CREATE FUNCTION consentry_append_leaves(kinds TEXT[], ref_ids TEXT[], tenants TEXT[],
    recipients TEXT[], leaves BYTEA[]) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    i INTEGER;
    previous BYTEA;
    bytes BYTEA;
    hash BYTEA;
BEGIN
    FOR i IN 1 .. coalesce(array_length(kinds, 1), 0) LOOP
        IF recipients[i] IS NULL THEN
            INSERT INTO log_leaves (kind, ref_id, tenant, leaf_hash)
            VALUES (kinds[i], ref_ids[i], tenants[i], sha256(decode('00', 'hex') || leaves[i]));
            CONTINUE;
        END IF;
        INSERT INTO log_heads (tenant, recipient_hash) VALUES (tenants[i], recipients[i])
        ON CONFLICT DO NOTHING;
        SELECT last_hash INTO previous FROM log_heads
        WHERE tenant = tenants[i] AND recipient_hash = recipients[i] FOR UPDATE;
        bytes := leaves[i];
        IF previous IS NOT NULL THEN
            bytes := substring(bytes FROM 1 FOR length(bytes) - 1) || decode('0100000020', 'hex')
                || previous;
        END IF;
        hash := sha256(decode('00', 'hex') || bytes);
        INSERT INTO log_leaves (kind, ref_id, tenant, leaf_hash, chained, prev_hash)
        VALUES (kinds[i], ref_ids[i], tenants[i], hash, true, previous);
        UPDATE log_heads SET last_hash = hash
        WHERE tenant = tenants[i] AND recipient_hash = recipients[i];
    END LOOP;
END;
$$;
