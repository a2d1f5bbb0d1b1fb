//! Versioned schema migrations, embedded in the binary.
//!
//! The schema version lives in `PRAGMA user_version`; each migration runs in its own transaction
//! together with the version bump, so a crash mid-way leaves the previous version intact. A
//! database whose version is newer than this binary knows is refused rather than guessed at, and
//! a file that belongs to another application (its `application_id` is not ours) is never
//! touched.

use anyhow::{Context, bail};
use rusqlite::Connection;

/// `PRAGMA application_id` of sessiond databases ("SSND").
pub const APPLICATION_ID: i64 = 0x5353_4e44;

/// The migrations in order; migration `i` brings the schema to version `i + 1`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "sessions_messages",
        include_str!("../../../migrations/0001_sessions_messages.sql"),
    ),
    (
        "events",
        include_str!("../../../migrations/0002_events.sql"),
    ),
    (
        "session_version",
        include_str!("../../../migrations/0003_session_version.sql"),
    ),
    ("meta", include_str!("../../../migrations/0004_meta.sql")),
    (
        "api_keys",
        include_str!("../../../migrations/0005_api_keys.sql"),
    ),
    (
        "session_metadata",
        include_str!("../../../migrations/0006_session_metadata.sql"),
    ),
    (
        "import_map",
        include_str!("../../../migrations/0007_import_map.sql"),
    ),
    (
        "drop_fts",
        include_str!("../../../migrations/0008_drop_fts.sql"),
    ),
    (
        "webhooks",
        include_str!("../../../migrations/0009_webhooks.sql"),
    ),
];

/// The schema version this binary writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// The schema version of an open database.
pub fn current_version(conn: &Connection) -> anyhow::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
        .context("reading the schema version")
}

/// Brings the database to [`latest_version`], or refuses when it cannot.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    migrate_to(conn, latest_version())
}

/// Brings the database to `target` (tests use this to build an older schema).
pub fn migrate_to(conn: &mut Connection, target: i64) -> anyhow::Result<()> {
    let application_id: i64 = conn
        .query_row("PRAGMA application_id", [], |row| row.get(0))
        .context("reading the application id")?;
    let version = current_version(conn)?;
    if application_id != 0 && application_id != APPLICATION_ID {
        bail!(
            "this file is not a sessiond database (application_id {application_id:#x}); refusing to touch it"
        );
    }
    if version > latest_version() {
        bail!(
            "the database schema is version {version}, newer than this sessiond binary supports \
             (version {}); run a newer sessiond, or restore a backup made for this version",
            latest_version()
        );
    }
    if application_id == 0 && version == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
            .context("inspecting the database")?;
        if tables > 0 {
            bail!("this file holds tables but is not a sessiond database; refusing to touch it");
        }
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate() {
        let to = index as i64 + 1;
        if to <= version || to > target {
            continue;
        }
        let tx = conn.transaction().context("starting a migration")?;
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {to} ({name})"))?;
        tx.execute_batch(&format!(
            "PRAGMA user_version = {to}; PRAGMA application_id = {APPLICATION_ID};"
        ))
        .context("recording the schema version")?;
        tx.commit()
            .with_context(|| format!("committing migration {to} ({name})"))?;
        tracing::info!(version = to, name, "applied database migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_fresh_database_and_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(current_version(&conn).unwrap(), latest_version());
        migrate(&mut conn).unwrap();
        assert_eq!(current_version(&conn).unwrap(), latest_version());
    }

    #[test]
    fn refuses_newer_and_foreign_databases() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute_batch("PRAGMA user_version = 999").unwrap();
        let error = migrate(&mut conn).unwrap_err().to_string();
        assert!(error.contains("newer than this sessiond binary"), "{error}");

        let mut foreign = Connection::open_in_memory().unwrap();
        foreign.execute_batch("CREATE TABLE t (x)").unwrap();
        let error = migrate(&mut foreign).unwrap_err().to_string();
        assert!(error.contains("not a sessiond database"), "{error}");
    }
}
