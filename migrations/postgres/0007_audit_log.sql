-- The verifiable log (src/audit.rs, README "For auditors").
-- PostgreSQL mirror of migrations/sqlite/0007_audit_log.sql: same tables, columns and indexes.
--
-- Every logged row (a message record, a consent event, a body access, an erasure) adds one
-- entry here in its own transaction, with the hash of its leaf (src/audit/leaf.rs). The
-- sequencer later gives pending entries their `leaf_index`, in `seq` order, consecutively from
-- 0: an index is given once and never changed.
CREATE TABLE log_leaves (
    seq        BIGSERIAL PRIMARY KEY,
    kind       TEXT    NOT NULL CHECK (kind IN ('message', 'consent_event', 'body_access', 'erasure')),
    ref_id     TEXT    NOT NULL,
    tenant     TEXT    NOT NULL,
    leaf_hash  BYTEA   NOT NULL,
    leaf_index BIGINT  UNIQUE
);
CREATE UNIQUE INDEX log_leaves_once ON log_leaves (kind, ref_id);
CREATE INDEX log_leaves_pending ON log_leaves (seq) WHERE leaf_index IS NULL;
CREATE INDEX log_leaves_by_tenant ON log_leaves (tenant, kind, leaf_index) WHERE leaf_index IS NOT NULL;
CREATE FUNCTION consentry_log_indexed_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.leaf_index IS NOT NULL OR NEW.kind IS DISTINCT FROM OLD.kind
        OR NEW.ref_id IS DISTINCT FROM OLD.ref_id OR NEW.leaf_hash IS DISTINCT FROM OLD.leaf_hash
        OR NEW.tenant IS DISTINCT FROM OLD.tenant THEN
        RAISE EXCEPTION 'log entries are append-only';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER log_leaves_indexed_once BEFORE UPDATE ON log_leaves
FOR EACH ROW EXECUTE FUNCTION consentry_log_indexed_once();
CREATE TRIGGER log_leaves_are_append_only_delete BEFORE DELETE ON log_leaves
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('log entries are append-only');

-- Every perfect subtree of the tree: level 0 holds the leaf hashes, level l the subtree over
-- leaves [idx * 2^l, (idx + 1) * 2^l). Proofs are built from these.
CREATE TABLE log_nodes (
    level INTEGER NOT NULL,
    idx   BIGINT  NOT NULL,
    hash  BYTEA   NOT NULL,
    PRIMARY KEY (level, idx)
);

-- Signed tree heads.
CREATE TABLE log_checkpoints (
    tree_size    BIGINT  PRIMARY KEY,
    root_hash    BYTEA   NOT NULL,
    signed_at_us BIGINT  NOT NULL,
    key_id       TEXT    NOT NULL,
    signature    BYTEA   NOT NULL
);

-- Who read which message body, and when: written (and logged) before the body is returned.
CREATE TABLE body_accesses (
    id             TEXT    PRIMARY KEY,
    tenant         TEXT    NOT NULL,
    subject        TEXT    NOT NULL,
    message_id     TEXT    NOT NULL REFERENCES messages (id),
    accessed_at_us BIGINT  NOT NULL
);

-- Erasures by crypto-shredding: the recipient's keys are deleted, this record stays.
CREATE TABLE erasures (
    id             TEXT    PRIMARY KEY,
    tenant         TEXT    NOT NULL,
    recipient_hash TEXT    NOT NULL,
    erased_at_us   BIGINT  NOT NULL,
    erased_by      TEXT    NOT NULL,
    keys_destroyed BIGINT  NOT NULL
);

-- Accesses, erasures, stored subtrees and checkpoints are evidence too: never changed, never
-- removed (the log would detect it; the triggers refuse it).
CREATE TRIGGER body_accesses_are_append_only_update BEFORE UPDATE ON body_accesses
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('body accesses are append-only');
CREATE TRIGGER body_accesses_are_append_only_delete BEFORE DELETE ON body_accesses
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('body accesses are append-only');
CREATE TRIGGER erasures_are_append_only_update BEFORE UPDATE ON erasures
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('erasures are append-only');
CREATE TRIGGER erasures_are_append_only_delete BEFORE DELETE ON erasures
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('erasures are append-only');
CREATE TRIGGER log_nodes_are_append_only_update BEFORE UPDATE ON log_nodes
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('log nodes are append-only');
CREATE TRIGGER log_nodes_are_append_only_delete BEFORE DELETE ON log_nodes
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('log nodes are append-only');
CREATE TRIGGER log_checkpoints_are_append_only_update BEFORE UPDATE ON log_checkpoints
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('checkpoints are append-only');
CREATE TRIGGER log_checkpoints_are_append_only_delete BEFORE DELETE ON log_checkpoints
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('checkpoints are append-only');

-- Data keys, wrapped (AES-256-GCM) by the key-encryption key. `uses` counts seals reserved by
-- instances; a key is retired long before 2^32 of them.
CREATE TABLE data_keys (
    id            TEXT    PRIMARY KEY,
    wrapped       BYTEA   NOT NULL,
    created_at_us BIGINT  NOT NULL,
    retired_at_us BIGINT,
    uses          BIGINT  NOT NULL DEFAULT 0
);

-- One key per recipient and tenant, wrapped by a data key, sealing what belongs to that number
-- (message bodies, replies). Erasure deletes the row: the bodies it sealed become unreadable.
CREATE TABLE recipient_keys (
    tenant         TEXT    NOT NULL,
    recipient_hash TEXT    NOT NULL,
    id             TEXT    NOT NULL UNIQUE,
    data_key_id    TEXT    NOT NULL REFERENCES data_keys (id),
    wrapped        BYTEA   NOT NULL,
    created_at_us  BIGINT  NOT NULL,
    PRIMARY KEY (tenant, recipient_hash)
);
