-- The log's stored subtrees, kept in the order of their place in the tree rather than by level
-- (PostgreSQL mirror of migrations/sqlite/0016_log_nodes_in_order.sql, which says why).
--
-- Keyed by (level, idx), every level of the tree had its own end in the primary key's index,
-- and each transaction appending leaves wrote a page at the end of each level. Keyed by the
-- subtree's in-order position, (2 * idx + 1) * 2^level - 1, what a transaction adds lands at
-- the index's end. The same rows; the table is rebuilt because its triggers refuse UPDATE.
CREATE TABLE log_nodes_in_order (
    position BIGINT  PRIMARY KEY,
    level    INTEGER NOT NULL,
    idx      BIGINT  NOT NULL,
    hash     BYTEA   NOT NULL,
    CHECK (position = ((2 * idx + 1) << level) - 1)
);
INSERT INTO log_nodes_in_order (position, level, idx, hash)
    SELECT ((2 * idx + 1) << level) - 1, level, idx, hash FROM log_nodes ORDER BY 1;
DROP TABLE log_nodes;
ALTER TABLE log_nodes_in_order RENAME TO log_nodes;
CREATE TRIGGER log_nodes_are_append_only_update BEFORE UPDATE ON log_nodes
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('log nodes are append-only');
CREATE TRIGGER log_nodes_are_append_only_delete BEFORE DELETE ON log_nodes
FOR EACH ROW EXECUTE FUNCTION consentry_append_only('log nodes are append-only');
