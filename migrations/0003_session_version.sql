-- The seq of the last event that changed each session: a strictly increasing version, so an
-- ETag derived from it changes with every change (timestamps can repeat within a millisecond).
ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
