-- Witnesses' cosignatures of signed checkpoints (C2SP tlog-cosignature, Ed25519): one per
-- witness and tree size. `cosignature` is the signature line's bytes: key id (4), the
-- witness's time (8, big-endian) and the Ed25519 signature (64).
CREATE TABLE log_cosignatures (
    tree_size   INTEGER NOT NULL,
    witness     TEXT    NOT NULL,
    cosignature BLOB    NOT NULL,
    PRIMARY KEY (tree_size, witness)
);
CREATE INDEX log_cosignatures_by_witness ON log_cosignatures (witness, tree_size);

CREATE TRIGGER log_cosignatures_are_append_only_update BEFORE UPDATE ON log_cosignatures
BEGIN SELECT RAISE(ABORT, 'cosignatures are append-only'); END;
CREATE TRIGGER log_cosignatures_are_append_only_delete BEFORE DELETE ON log_cosignatures
BEGIN SELECT RAISE(ABORT, 'cosignatures are append-only'); END;
