-- What imports made of records from elsewhere: (source, original id) -> sessiond id, written in
-- the transaction of the session it belongs to, so a second run imports only what is new.
CREATE TABLE import_map (
    source      TEXT NOT NULL,
    original_id TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    PRIMARY KEY (source, original_id)
) WITHOUT ROWID;
