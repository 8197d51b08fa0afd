-- Nothing changes on SQLite: this number is PostgreSQL's `consentry_append_leaves` written as a
-- set (four statements a call instead of four a leaf). On SQLite the group writer links each
-- leaf to its recipient's head itself (`store/sqlite/writer.rs`). The file keeps the two
-- migration folders numbered alike.
SELECT 1;
