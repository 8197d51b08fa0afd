-- One row per recipient: the newest leaf about it (the head its next leaf links to) and the
-- key that seals what belongs to its number, in the same row (SQLite; PostgreSQL keeps the two
-- tables, see its 0017).
--
-- Every leaf about a recipient rewrites its head; a first send to a number also made its key,
-- which took three B-trees of its own (`recipient_keys`' rows, its primary key at a place set
-- by the recipient's hash, and its unique ids). Kept in the head's row, the key is written
-- with the head the send's leaf rewrites anyway: the key's id index is the only other write
-- (`bench/README.md`, "tenth look").
--
-- `last_hash` is NULL for a recipient with a key and no leaf yet (a key made for a reply
-- before replies were leaves). Erasure clears the key's columns and keeps the head: the
-- erasure is a leaf about the number, and the chain goes on after it.
CREATE TABLE log_heads_with_keys (
    tenant            TEXT    NOT NULL,
    recipient_hash    TEXT    NOT NULL,
    last_hash         BLOB,
    key_id            TEXT,
    key_data_key_id   TEXT    REFERENCES data_keys (id),
    key_wrapped       BLOB,
    key_created_at_us INTEGER,
    PRIMARY KEY (tenant, recipient_hash),
    CHECK ((key_id IS NULL) = (key_wrapped IS NULL)
        AND (key_id IS NULL) = (key_data_key_id IS NULL)
        AND (key_id IS NULL) = (key_created_at_us IS NULL))
) WITHOUT ROWID;
INSERT INTO log_heads_with_keys (tenant, recipient_hash, last_hash, key_id, key_data_key_id,
    key_wrapped, key_created_at_us)
SELECT h.tenant, h.recipient_hash, h.last_hash, k.id, k.data_key_id, k.wrapped, k.created_at_us
FROM log_heads h
LEFT JOIN recipient_keys k ON k.tenant = h.tenant AND k.recipient_hash = h.recipient_hash
UNION ALL
SELECT k.tenant, k.recipient_hash, NULL, k.id, k.data_key_id, k.wrapped, k.created_at_us
FROM recipient_keys k
WHERE NOT EXISTS (SELECT 1 FROM log_heads h
    WHERE h.tenant = k.tenant AND h.recipient_hash = k.recipient_hash)
ORDER BY 1, 2;
DROP TABLE log_heads;
-- Its pages are overwritten as they are freed (secure_delete): the keys are in the new table.
DROP TABLE recipient_keys;
ALTER TABLE log_heads_with_keys RENAME TO log_heads;
-- A sealed row names its key by id (`messages.key_id`, `inbound_messages.key_id`).
CREATE UNIQUE INDEX log_heads_by_key_id ON log_heads (key_id) WHERE key_id IS NOT NULL;
