-- Complete bundles (docs/auditors.md, "Chains"): every leaf about a recipient names the hash of
-- the previous leaf about the same recipient (leaf format version 3), so that a number's leaves
-- from its first on show that none is missing. Delivery outcomes, releases of deferred messages,
-- inbound replies and review resolutions become leaves too.
--
-- `log_leaves` is rebuilt, with its indexes and triggers: its CHECK of the kinds is part of the
-- table in SQLite (PostgreSQL alters the constraint). Two columns: `chained` (1 for a leaf of
-- version 3, written with a link; 0 for one logged before) and `prev_hash`, its link: the
-- hash of the previous leaf about the same recipient (NULL for the first), which the leaf's
-- bytes hold and its rebuild needs. Kept on the entry itself, so that a leaf whose predecessor
-- was deleted still rebuilds, and its bundle shows the break.
CREATE TABLE log_leaves_chained (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL CHECK (kind IN ('message', 'consent_event', 'body_access',
                   'erasure', 'outcome', 'release', 'inbound', 'review_resolution')),
    ref_id     TEXT    NOT NULL,
    tenant     TEXT    NOT NULL,
    leaf_hash  BLOB    NOT NULL,
    leaf_index INTEGER UNIQUE
);
INSERT INTO log_leaves_chained (seq, kind, ref_id, tenant, leaf_hash, leaf_index)
    SELECT seq, kind, ref_id, tenant, leaf_hash, leaf_index FROM log_leaves;
DROP TABLE log_leaves;
ALTER TABLE log_leaves_chained RENAME TO log_leaves;
ALTER TABLE log_leaves ADD COLUMN chained INTEGER NOT NULL DEFAULT 0;
ALTER TABLE log_leaves ADD COLUMN prev_hash BLOB;
CREATE UNIQUE INDEX log_leaves_once ON log_leaves (kind, ref_id);
CREATE INDEX log_leaves_pending ON log_leaves (seq) WHERE leaf_index IS NULL;
CREATE INDEX log_leaves_by_tenant ON log_leaves (tenant, kind, leaf_index) WHERE leaf_index IS NOT NULL;
CREATE TRIGGER log_leaves_indexed_once BEFORE UPDATE ON log_leaves
WHEN OLD.leaf_index IS NOT NULL OR NEW.kind IS NOT OLD.kind OR NEW.ref_id IS NOT OLD.ref_id
    OR NEW.leaf_hash IS NOT OLD.leaf_hash OR NEW.tenant IS NOT OLD.tenant
    OR NEW.chained IS NOT OLD.chained OR NEW.prev_hash IS NOT OLD.prev_hash
BEGIN SELECT RAISE(ABORT, 'log entries are append-only'); END;
CREATE TRIGGER log_leaves_are_append_only_delete BEFORE DELETE ON log_leaves
BEGIN SELECT RAISE(ABORT, 'log entries are append-only'); END;

-- The newest leaf about each recipient: where the next one links to. Rewritten with every leaf
-- about the recipient, in the leaf's transaction. Seeded here with the newest leaf logged
-- before chains, in the log's order (by leaf index; a leaf not yet given one comes after every
-- indexed leaf, and such leaves in `seq` order, as the sequencer will index them), so that the
-- first chained leaf of a number links to it.
CREATE TABLE log_heads (
    tenant         TEXT    NOT NULL,
    recipient_hash TEXT    NOT NULL,
    last_hash      BLOB    NOT NULL,
    PRIMARY KEY (tenant, recipient_hash)
) WITHOUT ROWID;
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
ALTER TABLE inbound_messages ADD COLUMN logged INTEGER NOT NULL DEFAULT 0;
ALTER TABLE review_resolutions ADD COLUMN logged INTEGER NOT NULL DEFAULT 0;
