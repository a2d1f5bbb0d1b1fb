//! The pool of read-only connections.
//!
//! In WAL mode readers never wait for the writer and the writer never waits for readers, so
//! reads scale with the pool while writes are being committed. Each read takes a connection
//! (waiting asynchronously when all are busy), runs on tokio's blocking pool, and puts the
//! connection back even if the read panics.
//!
//! Connections are opened when a read finds none free, up to the pool's size, and then stay:
//! each holds its own copy of the schema, a first slab of page cache and its statement cache
//! (~150 KB idle), and a server that never runs twenty searches at once need not hold twenty.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::storage::{StorageError, StorageResult};

/// Opens one more connection for the pool.
pub type Opener = Arc<dyn Fn() -> anyhow::Result<Connection> + Send + Sync>;

pub struct ReadPool {
    connections: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
    open: Opener,
}

/// A borrowed connection; returns itself to the pool on drop (also during unwinding).
struct Lease {
    connection: Option<Connection>,
    pool: Arc<Mutex<Vec<Connection>>>,
    /// Given back after `drop` has put the connection back (fields drop after it).
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            // A read that failed (or panicked) inside a transaction must not hand the next
            // read a stale snapshot, or pin the WAL: end it before the connection goes back.
            if !connection.is_autocommit()
                && let Err(error) = connection.execute_batch("ROLLBACK")
            {
                // The permit goes back with the lease: the next read opens a fresh connection.
                tracing::error!(%error, "could not end a read transaction; dropping the connection");
                return;
            }
            // A poisoned lock only means another read panicked; the Vec itself is fine.
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.push(connection);
        }
    }
}

impl ReadPool {
    /// A pool of up to `size` connections made by `open`. The first is opened here, so a
    /// database that cannot be opened for reading fails at once.
    pub fn open(size: usize, open: Opener) -> anyhow::Result<Self> {
        Ok(ReadPool {
            connections: Arc::new(Mutex::new(vec![open()?])),
            permits: Arc::new(Semaphore::new(size.max(1))),
            open,
        })
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
        // None free: a permit with no connection behind it, so this read opens one. A failed
        // open (no file descriptors left, say) answers this read as unavailable, to be retried,
        // and gives the permit back with the lease.
        let connection = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let mut lease = Lease {
            connection,
            pool: self.connections.clone(),
            _permit: permit,
        };
        let open = self.open.clone();
        tokio::task::spawn_blocking(move || {
            let connection = match lease.connection.take() {
                Some(connection) => connection,
                None => open().map_err(|error| {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "cannot open a read connection"
                    );
                    StorageError::Unavailable("no read connection could be opened")
                })?,
            };
            read(lease.connection.insert(connection))
        })
        .await
        .context("a read task panicked")?
    }

    /// Stops handing out connections; reads in progress finish.
    pub fn close(&self) {
        self.permits.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, mpsc};
    use std::time::Duration;

    use super::*;

    /// A pool of `size` in-memory connections whose opener counts its calls and fails the
    /// calls `failing` names.
    fn pool(size: usize, failing: &'static [usize]) -> (ReadPool, Arc<AtomicUsize>) {
        let opened = Arc::new(AtomicUsize::new(0));
        let counter = opened.clone();
        let open: Opener = Arc::new(move || {
            let call = counter.fetch_add(1, Ordering::SeqCst) + 1;
            if failing.contains(&call) {
                anyhow::bail!("opening connection {call} failed");
            }
            Ok(Connection::open_in_memory()?)
        });
        (ReadPool::open(size, open).unwrap(), opened)
    }

    /// `n` reads at once, each holding its connection until all of them hold one; whether they
    /// all did (each gives up after a while rather than wait for ever).
    async fn together(pool: &ReadPool, n: usize) -> bool {
        let arrived = Arc::new((Mutex::new(0), Condvar::new()));
        let reads = (0..n).map(|_| {
            let arrived = arrived.clone();
            pool.read(move |_| {
                let (count, all) = &*arrived;
                let mut count = count.lock().unwrap();
                *count += 1;
                all.notify_all();
                let (count, _) = all
                    .wait_timeout_while(count, Duration::from_secs(30), |c| *c < n)
                    .unwrap();
                Ok(*count == n)
            })
        });
        futures_util::future::join_all(reads)
            .await
            .into_iter()
            .all(|read| read.unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_open_as_reads_need_them_and_are_reused() {
        let (pool, opened) = pool(3, &[]);
        pool.read(|_| Ok(())).await.unwrap();
        pool.read(|_| Ok(())).await.unwrap();
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        assert!(together(&pool, 3).await);
        assert_eq!(opened.load(Ordering::SeqCst), 3);
        assert!(together(&pool, 3).await);
        assert_eq!(opened.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_cannot_be_opened_fails_one_read_and_keeps_its_place() {
        // The second connection's first opening fails.
        let (pool, opened) = pool(2, &[2]);
        let pool = Arc::new(pool);
        let (hold, held) = mpsc::channel::<()>();
        let (started, start) = tokio::sync::oneshot::channel();
        let holder = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.read(move |_| {
                    let _ = started.send(());
                    let _ = held.recv();
                    Ok(())
                })
                .await
            }
        });
        start.await.unwrap();
        let failed = pool.read(|_| Ok(())).await;
        assert!(
            matches!(failed, Err(StorageError::Unavailable(_))),
            "expected the opening to fail: {failed:?}"
        );
        // Its place is free again; the holder's is taken.
        assert_eq!(pool.permits.available_permits(), 1);
        hold.send(()).unwrap();
        holder.await.unwrap().unwrap();
        assert_eq!(pool.permits.available_permits(), 2);
        assert!(together(&pool, 2).await);
        assert_eq!(opened.load(Ordering::SeqCst), 3);
    }
}
