-- What imports made of records from elsewhere (see the SQLite migration 0007).
CREATE TABLE import_map (
    source      TEXT COLLATE "C" NOT NULL,
    original_id TEXT COLLATE "C" NOT NULL,
    target_id   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (source, original_id)
);
