-- Groups and history for the embedded mode. TEXT compares with the BINARY
-- collation (memcmp of UTF-8), which is code-point order and case-sensitive,
-- as the contract's "sorted" requires.
CREATE TABLE IF NOT EXISTS chat_groups (
    group_id TEXT NOT NULL PRIMARY KEY
) WITHOUT ROWID;

-- A message id is `<millis>-<seq>`; the two parts are kept as integers so the
-- primary key orders them numerically. The key is also what makes appends
-- idempotent (INSERT OR IGNORE).
CREATE TABLE IF NOT EXISTS messages (
    group_id     TEXT    NOT NULL,
    id_millis    INTEGER NOT NULL,
    id_seq       INTEGER NOT NULL,
    author_id    TEXT    NOT NULL,
    send_time_ms INTEGER NOT NULL,
    text         TEXT    NOT NULL,
    PRIMARY KEY (group_id, id_millis, id_seq)
) WITHOUT ROWID;

-- Finds the latest id of all groups at start-up, the floor below which the
-- in-process messaging never hands out an id again.
CREATE INDEX IF NOT EXISTS messages_by_id ON messages (id_millis, id_seq);
