-- The PostgreSQL schema: the same tables as the SQLite backend, with a tsvector column and a
-- GIN index for search, and a one-row `head` that orders writes across instances.

-- Facts about the database itself (see the SQLite migration 0004).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('database_id', substr(md5(random()::text || clock_timestamp()::text), 1, 12));
INSERT INTO meta (key, value) VALUES ('generation', '0');

-- Every write batch locks this row first (`FOR UPDATE`), so batches of all instances commit
-- one after another: event `seq` is gapless and in commit order, and timestamps and ids never
-- go backwards across instances. `owner` names the instance that wrote last.
CREATE TABLE head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    at    BIGINT NOT NULL,
    owner TEXT NOT NULL
);
INSERT INTO head (id, seq, at, owner) VALUES (1, 0, 0, '');

CREATE TABLE sessions (
    id            TEXT COLLATE "C" PRIMARY KEY,
    directory     TEXT COLLATE "C" NOT NULL,
    title         TEXT NOT NULL,
    title_fold    TEXT NOT NULL,
    parent_id     TEXT COLLATE "C",
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    archived_at   BIGINT,
    message_count BIGINT NOT NULL DEFAULT 0,
    version       BIGINT NOT NULL DEFAULT 0,
    archived      BOOLEAN GENERATED ALWAYS AS (archived_at IS NOT NULL) STORED
);
CREATE INDEX sessions_recent ON sessions (archived, updated_at, id);
CREATE INDEX sessions_directory_recent ON sessions (directory, archived, updated_at, id);
CREATE INDEX sessions_parent ON sessions (parent_id) WHERE parent_id IS NOT NULL;

-- Search folds case and accents, like SQLite's `unicode61 remove_diacritics 2`: the words of
-- the default parser, without their accents (the `unaccent` extension, trusted since
-- PostgreSQL 13, so a database owner may create it), lower-cased, with no stemming and no stop
-- words.
CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE TEXT SEARCH CONFIGURATION sessiond (COPY = pg_catalog.simple);
ALTER TEXT SEARCH CONFIGURATION sessiond
    ALTER MAPPING FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part
    WITH unaccent, simple;

CREATE TABLE messages (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT COLLATE "C" NOT NULL UNIQUE,
    session_id TEXT COLLATE "C" NOT NULL,
    role       TEXT NOT NULL,
    parts      TEXT NOT NULL,
    metadata   TEXT NOT NULL,
    text       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- The first 256 KiB of the text: a tsvector holds at most 1 MB, and a 10 MiB message of
    -- distinct words would exceed it (failing the write).
    tsv        TSVECTOR GENERATED ALWAYS AS (to_tsvector('sessiond', left(text, 262144))) STORED
);
CREATE INDEX messages_session ON messages (session_id, created_at, id);
CREATE INDEX messages_search ON messages USING GIN (tsv);

CREATE TABLE events (
    seq        BIGINT PRIMARY KEY,
    type       TEXT NOT NULL,
    session_id TEXT COLLATE "C" NOT NULL,
    directory  TEXT COLLATE "C" NOT NULL,
    at         BIGINT NOT NULL,
    data       TEXT NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    hint       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);
