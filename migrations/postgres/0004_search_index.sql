-- Search moves out of the database: every instance keeps a tantivy index of its own, fed from
-- the log by `seq` (see src/search/). Nothing reads the tsvector any more, so it and its GIN
-- index leave the write path.
--
-- The indexers need the newest *committed* message `seq`: the identity sequence's last value
-- may belong to a batch still in flight, and an indexer that moved past it would never index
-- that message. Every batch that inserts messages holds the `head` row lock, so a batch's
-- messages get higher `seq`s than every batch committed before it; `head.messages` is set in
-- the same transaction to the newest `seq` it can see, and so names only committed messages.
ALTER TABLE head ADD COLUMN messages BIGINT NOT NULL DEFAULT 0;
-- A statement of its own: it runs after ALTER TABLE has waited out every batch in flight
-- (and keeps new ones out until this migration commits), so it sees all their messages.
UPDATE head SET messages = coalesce((SELECT max(seq) FROM messages), 0) WHERE id = 1;
DROP INDEX IF EXISTS messages_search;
ALTER TABLE messages DROP COLUMN IF EXISTS tsv;
DROP TEXT SEARCH CONFIGURATION IF EXISTS sessiond;
