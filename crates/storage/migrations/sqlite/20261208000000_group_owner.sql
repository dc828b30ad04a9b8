-- Who created each group: counted for max_groups_owned_per_user. Groups made
-- before this column, and those loaded in bulk by tools, have none.
ALTER TABLE chat_groups ADD COLUMN owner_id TEXT;

CREATE INDEX IF NOT EXISTS chat_groups_by_owner ON chat_groups (owner_id);
