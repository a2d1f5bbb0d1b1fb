//! The pool of read-only connections.
//!
//! In WAL mode readers never wait for the writer and the writer never waits for readers, so
//! reads scale with the pool while writes are being committed. Each read takes a connection
//! (waiting asynchronously when all are busy), runs on tokio's blocking pool, and puts the
//! connection back even if the read panics.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::storage::{StorageError, StorageResult};

pub struct ReadPool {
    connections: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
}

/// A borrowed connection; returns itself to the pool on drop (also during unwinding).
struct Lease {
    connection: Option<Connection>,
    pool: Arc<Mutex<Vec<Connection>>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            // A read that failed (or panicked) inside a transaction must not hand the next
            // read a stale snapshot, or pin the WAL: end it before the connection goes back.
            if !connection.is_autocommit()
                && let Err(error) = connection.execute_batch("ROLLBACK")
            {
                tracing::error!(%error, "could not end a read transaction; dropping the connection");
                // One connection fewer: retire its permit too, so no read waits for it.
                if let Some(permit) = self.permit.take() {
                    permit.forget();
                }
                return;
            }
            // A poisoned lock only means another read panicked; the Vec itself is fine.
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.push(connection);
        }
    }
}

impl ReadPool {
    pub fn new(connections: Vec<Connection>) -> Self {
        let permits = Arc::new(Semaphore::new(connections.len()));
        ReadPool {
            connections: Arc::new(Mutex::new(connections)),
            permits,
        }
    }

    /// Runs `read` on a pooled connection off the async workers.
    pub async fn read<T, F>(&self, read: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StorageResult<T> + Send + 'static,
    {
        let waited = Instant::now();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Unavailable("the read pool is closed"))?;
        metrics::histogram!(crate::telemetry::metrics::READ_WAIT)
            .record(waited.elapsed().as_secs_f64());
        let connection = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .context("read pool invariant broken: a permit without a connection")?;
        let lease = Lease {
            connection: Some(connection),
            pool: self.connections.clone(),
            permit: Some(permit),
        };
        tokio::task::spawn_blocking(move || {
            let lease = lease;
            match &lease.connection {
                Some(connection) => read(connection),
                None => Err(StorageError::Unavailable("lost a read connection")),
            }
        })
        .await
        .context("a read task panicked")?
    }

    /// Stops handing out connections; reads in progress finish.
    pub fn close(&self) {
        self.permits.close();
    }
}
