-- Sessions carry a JSON object of their own, like messages (imports keep their source's fields
-- there). Existing sessions get an empty one.
ALTER TABLE sessions ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
