-- The durable event log: one row per change, written in the transaction of the change.

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    type       TEXT NOT NULL,
    session_id TEXT NOT NULL,
    directory  TEXT NOT NULL,
    at         INTEGER NOT NULL,
    -- The JSON object the event carries (the session or message after the change).
    data       TEXT NOT NULL
);
