//! Versioned schema migrations for PostgreSQL, embedded in the binary.
//!
//! The same rules as SQLite's (see [`crate::storage::sqlite::migrations`]): each migration runs
//! in one transaction with its version bump, a database newer than this binary is refused, and
//! a database that holds other tables but no sessiond version is never touched. Instances that
//! start together take an advisory lock, so exactly one of them migrates.

use anyhow::{Context, bail};

/// The migrations in order; migration `i` brings the schema to version `i + 1`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "schema",
        include_str!("../../../migrations/postgres/0001_schema.sql"),
    ),
    (
        "session_metadata",
        include_str!("../../../migrations/postgres/0002_session_metadata.sql"),
    ),
    (
        "import_map",
        include_str!("../../../migrations/postgres/0003_import_map.sql"),
    ),
    (
        "search_index",
        include_str!("../../../migrations/postgres/0004_search_index.sql"),
    ),
    (
        "webhooks",
        include_str!("../../../migrations/postgres/0005_webhooks.sql"),
    ),
];

/// Key of the advisory lock held while migrating ("SSND").
const MIGRATION_LOCK: i64 = 0x5353_4e44;

pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the database to [`latest_version`], or refuses when it cannot.
pub async fn migrate(client: &mut tokio_postgres::Client) -> anyhow::Result<()> {
    let tx = client
        .transaction()
        .await
        .context("starting the migration")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    let has_version: bool = tx
        .query_one("SELECT to_regclass('sessiond_schema') IS NOT NULL", &[])
        .await
        .context("looking for the schema version")?
        .get(0);
    let version: i64 = if has_version {
        tx.query_one("SELECT version FROM sessiond_schema", &[])
            .await
            .context("reading the schema version")?
            .get(0)
    } else {
        let foreign: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name IN \
                 ('sessions', 'messages', 'events', 'meta', 'head', 'api_keys'))",
                &[],
            )
            .await
            .context("checking the database is ours")?
            .get(0);
        if foreign {
            bail!(
                "the database has tables named like sessiond's but no sessiond schema version; \
                 refusing to touch it"
            );
        }
        tx.batch_execute(
            "CREATE TABLE sessiond_schema (version BIGINT NOT NULL); \
                          INSERT INTO sessiond_schema (version) VALUES (0);",
        )
        .await
        .context("creating the schema version table")?;
        0
    };
    let latest = latest_version();
    if version > latest {
        bail!(
            "the database schema is version {version}, newer than this sessiond knows \
             ({latest}); upgrade sessiond"
        );
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("applying migration {} ({name})", index + 1))?;
        tx.execute(
            "UPDATE sessiond_schema SET version = $1",
            &[&(index as i64 + 1)],
        )
        .await
        .context("recording the schema version")?;
    }
    tx.commit().await.context("committing the migration")?;
    Ok(())
}
