-- Sessions and messages, with full-text search over the text parts of messages.

CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    directory     TEXT NOT NULL,
    title         TEXT NOT NULL,
    -- Lower-cased title for the case-insensitive `q` filter (Unicode-aware, done in Rust).
    title_fold    TEXT NOT NULL,
    parent_id     TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    archived_at   INTEGER,
    message_count INTEGER NOT NULL DEFAULT 0,
    archived      INTEGER NOT NULL GENERATED ALWAYS AS (archived_at IS NOT NULL) VIRTUAL
) WITHOUT ROWID;

-- Lists walk one of these in (updated_at, id) order, so a page costs its own rows, not a sort.
CREATE INDEX sessions_recent ON sessions (archived, updated_at, id);
CREATE INDEX sessions_directory_recent ON sessions (directory, archived, updated_at, id);
-- Deleting a session detaches its children without scanning.
CREATE INDEX sessions_parent ON sessions (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE messages (
    -- Never reused (AUTOINCREMENT): search cursors cap results at the newest seq they saw.
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    role       TEXT NOT NULL,
    parts      TEXT NOT NULL,
    metadata   TEXT NOT NULL,
    -- The text parts joined by newlines: the full-text document.
    text       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE INDEX messages_session ON messages (session_id, created_at, id);

-- Kept in sync by the writer (in the same transaction as each insert and delete), not by
-- triggers: a trigger makes every insert a multi-row statement that opens a statement
-- transaction, and FTS5 flushes its pending index at every one (measured: 4x slower writes).
CREATE VIRTUAL TABLE messages_fts USING fts5(
    text,
    content = 'messages',
    content_rowid = 'seq',
    tokenize = 'unicode61 remove_diacritics 2'
);
