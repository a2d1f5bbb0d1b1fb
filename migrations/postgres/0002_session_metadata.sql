-- Sessions carry a JSON object of their own (see the SQLite migration 0006).
ALTER TABLE sessions ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
