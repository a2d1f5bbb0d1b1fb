-- Search moved to the index in the data dir (search/), fed from the log by seq and rebuilt from
-- `messages` when missing: FTS5 leaves the write path, where its segment writes and merges
-- were most of each commit.
DROP TABLE IF EXISTS messages_fts;
