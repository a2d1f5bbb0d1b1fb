-- Facts about the database itself. `database_id` is random per database and `generation`
-- moves with every bulk import, so validators (ETags) made from them change whenever the data
-- behind them could have changed without an event.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

INSERT INTO meta (key, value) VALUES ('database_id', lower(hex(randomblob(6))));
INSERT INTO meta (key, value) VALUES ('generation', '0');
