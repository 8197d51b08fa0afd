-- Facts every instance must agree on, fixed by the first one to start: the ids of the key that
-- hashes phone numbers and of the payload key. An instance with other keys refuses to start (its
-- hashes would not find the opt-outs recorded by the others).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
