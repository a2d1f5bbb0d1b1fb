//! A bounded pool for expensive work (summaries, full-text searches).
//!
//! At most `workers` jobs run at once (CPU-heavy ones on tokio's blocking threads, so the async
//! workers that serve every other request are never occupied by them); at most `max_waiting`
//! more wait for a turn, and past that callers are refused at once (the HTTP layer answers 503
//! with `Retry-After`) instead of queueing without bound. Cheap requests never wait behind
//! expensive ones: the expensive ones wait here, holding no database connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct WorkPool {
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
}

/// The pool is at capacity: `workers` running and `max_waiting` waiting.
#[derive(Debug, thiserror::Error)]
#[error("all {workers} workers are busy and {waiting} jobs are already waiting")]
pub struct PoolFull {
    pub workers: usize,
    pub waiting: usize,
}

/// A turn on a worker: held until dropped (or until the job given to [`Turn::run`] is done).
pub struct Turn(#[allow(dead_code)] OwnedSemaphorePermit);

/// Decrements the waiting count however the wait ends (turn granted, or caller gone).
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WorkPool {
    pub fn new(workers: usize, max_waiting: usize) -> Self {
        WorkPool {
            permits: Arc::new(Semaphore::new(workers.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting,
        }
    }

    /// Waits for a turn, or refuses at once when too many already wait.
    pub async fn turn(&self) -> Result<Turn, PoolFull> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(Turn(permit));
        }
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let guard = Waiting(self.waiting.clone());
        if waiting >= self.max_waiting {
            return Err(PoolFull {
                workers: self.permits.available_permits(),
                waiting,
            });
        }
        let permit = self.permits.clone().acquire_owned().await;
        drop(guard);
        permit.map(Turn).map_err(|_| PoolFull {
            workers: 0,
            waiting: 0,
        })
    }
}

impl Turn {
    /// Runs `job` on a blocking thread, holding this turn until it finishes.
    pub async fn run<T, F>(self, job: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit = self.0;
        tokio::task::spawn_blocking(move || {
            let result = job();
            drop(permit);
            result
        })
        .await
        .map_err(|e| anyhow::anyhow!("a blocking job failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_past_the_waiting_bound_and_recovers() {
        let pool = Arc::new(WorkPool::new(1, 1));
        let running = pool.turn().await.unwrap();
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.turn().await.map(|_| ()) })
        };
        // Let the waiter register.
        while pool.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            pool.turn().await.is_err(),
            "a second waiter must be refused"
        );
        drop(running);
        waiter.await.unwrap().unwrap();
        assert_eq!(pool.waiting.load(Ordering::Acquire), 0);
        let value = pool.turn().await.unwrap().run(|| 42).await.unwrap();
        assert_eq!(value, 42);
    }
}
