-- The log's stored subtrees, kept in the order of their place in the tree rather than by level.
--
-- Keyed by (level, idx), every level of the tree had its own end in the index, and a commit
-- appending a few leaves wrote a page at the end of each level: one page per level of the tree
-- (17 at 100,000 leaves, 30 at a billion), about an eighth of the pages a send's commit wrote
-- (`bench/README.md`, "seventh look"). Keyed by the subtree's in-order position instead, the
-- subtree over leaves [idx * 2^level, (idx + 1) * 2^level) at (2 * idx + 1) * 2^level - 1 (a
-- leaf at 2 * idx, the subtree a leaf completes at level l sits 2^l - 1 places before it), what
-- a commit adds lands at the end of the table, but for a subtree of a level above the commit's
-- size, one in that many commits (`store::rows::node_position` computes it; the CHECK holds it
-- to `level` and `idx`). The same rows; `position` is the rowid, so the table is one B-tree
-- instead of a table and its index.
CREATE TABLE log_nodes_in_order (
    position INTEGER PRIMARY KEY,
    level    INTEGER NOT NULL,
    idx      INTEGER NOT NULL,
    hash     BLOB    NOT NULL,
    CHECK (position = ((2 * idx + 1) << level) - 1)
);
INSERT INTO log_nodes_in_order (position, level, idx, hash)
    SELECT ((2 * idx + 1) << level) - 1, level, idx, hash FROM log_nodes ORDER BY 1;
DROP TABLE log_nodes;
ALTER TABLE log_nodes_in_order RENAME TO log_nodes;
CREATE TRIGGER log_nodes_are_append_only_update BEFORE UPDATE ON log_nodes
BEGIN SELECT RAISE(ABORT, 'log nodes are append-only'); END;
CREATE TRIGGER log_nodes_are_append_only_delete BEFORE DELETE ON log_nodes
BEGIN SELECT RAISE(ABORT, 'log nodes are append-only'); END;
