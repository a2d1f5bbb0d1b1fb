//! API key rows. Plain functions on a connection: the writer runs them in its batches, and
//! `sessiond keys` runs them on a connection of its own while a server holds the data dir.

use std::path::Path;

use anyhow::{Context, bail};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{DATABASE_FILE, migrations};
use crate::domain::keys::{ApiKey, NewKey, Scope};
use crate::domain::{random_token, wall_clock_ms};
use crate::storage::{StorageError, StorageResult};

const COLUMNS: &str = "id, name, scope, hint, created_at, expires_at, revoked_at";

fn key(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let scope: String = row.get(2)?;
    Ok(ApiKey {
        id: row.get(0)?,
        name: row.get(1)?,
        scope: Scope::parse(&scope).map_err(|e| super::rows::conversion(2, e.to_string()))?,
        hint: row.get(3)?,
        created_at: row.get(4)?,
        expires_at: row.get(5)?,
        revoked_at: row.get(6)?,
    })
}

pub fn create(conn: &Connection, new: &NewKey, hash: &str, hint: &str) -> StorageResult<ApiKey> {
    let created = ApiKey {
        id: format!("key_{}", random_token()),
        name: new.name.clone(),
        scope: new.scope,
        hint: hint.to_owned(),
        created_at: wall_clock_ms(),
        expires_at: new.expires_at,
        revoked_at: None,
    };
    conn.prepare_cached(
        "INSERT INTO api_keys (id, name, scope, hash, hint, created_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .context("preparing a key insert")?
    .execute(params![
        created.id,
        created.name,
        created.scope.as_str(),
        hash,
        created.hint,
        created.created_at,
        created.expires_at,
    ])
    .context("storing a key")?;
    Ok(created)
}

pub fn list(conn: &Connection) -> StorageResult<Vec<ApiKey>> {
    let keys = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id"
        ))
        .context("preparing the key list")?
        .query_map([], key)
        .context("listing keys")?
        .collect::<Result<_, _>>()
        .context("reading keys")?;
    Ok(keys)
}

/// Every key with its secret's hash.
pub fn export(conn: &Connection) -> StorageResult<Vec<(ApiKey, String)>> {
    let keys = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, hash FROM api_keys ORDER BY created_at, id"
        ))
        .context("preparing the key export")?
        .query_map([], |row| Ok((key(row)?, row.get(7)?)))
        .context("exporting keys")?
        .collect::<Result<_, _>>()
        .context("reading keys")?;
    Ok(keys)
}

/// Stores exported keys as they are.
pub fn import(conn: &Connection, keys: &[(ApiKey, String)]) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO api_keys (id, name, scope, hash, hint, created_at, expires_at, \
             revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .context("preparing a key import")?;
    for (key, hash) in keys {
        statement
            .execute(params![
                key.id,
                key.name,
                key.scope.as_str(),
                hash,
                key.hint,
                key.created_at,
                key.expires_at,
                key.revoked_at,
            ])
            .context("importing a key")?;
    }
    Ok(())
}

pub fn find(conn: &Connection, hash: &str) -> StorageResult<Option<ApiKey>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM api_keys WHERE hash = ?1"))
        .context("preparing a key lookup")?
        .query_row([hash], key)
        .optional()
        .context("looking up a key")?)
}

/// Revokes a key (keeping the first revocation time); `NotFound` for an unknown id.
pub fn revoke(conn: &Connection, id: &str) -> StorageResult<ApiKey> {
    conn.prepare_cached("UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1")
        .context("preparing a key revocation")?
        .execute(params![id, wall_clock_ms()])
        .context("revoking a key")?;
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"))
        .context("preparing a key lookup")?
        .query_row([id], key)
        .optional()
        .context("reading the revoked key")?
        .ok_or_else(|| StorageError::NotFound {
            what: "API key",
            id: crate::domain::clip(id),
        })
}

/// A connection for managing keys while a server may be running on the data dir: no lock,
/// a busy timeout, and the schema the server created (never migrated from here).
pub fn side_connection(data_dir: &Path) -> anyhow::Result<Connection> {
    let path = data_dir.join(DATABASE_FILE);
    if !path.exists() {
        bail!(
            "no database in {} (start the server or run `sessiond seed` first)",
            data_dir.display()
        );
    }
    let conn = Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
    conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA synchronous = FULL;")
        .context("configuring the connection")?;
    let version = migrations::current_version(&conn)?;
    if version < 5 {
        bail!(
            "the database in {} predates API keys (schema {version}); start this version of \
             sessiond on it once to upgrade it",
            data_dir.display()
        );
    }
    Ok(conn)
}
