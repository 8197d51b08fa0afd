-- (PostgreSQL counterpart of migrations/sqlite/0017_recipient_rows.sql.)
--
-- On SQLite a recipient's key moves into its `log_heads` row, so that a first send to a number
-- writes the B-tree page its leaf rewrites anyway instead of three of its own. PostgreSQL keeps
-- `recipient_keys` and `log_heads` apart: there a new row of either is a heap tuple and its
-- index entries, the head's row is locked and rewritten by `consentry_append_leaves` in the same
-- statement that inserts a group's keys (two writes of one row cannot share a statement), and
-- its `last_hash` is already nullable. Nothing changes in the schema.
SELECT 1;
