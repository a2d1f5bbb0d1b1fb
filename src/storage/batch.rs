//! What the group-committing writers of every backend share: how a write's result decides the
//! fate of its batch, and the answer its caller gets once that fate is known.

use super::{StorageError, StorageResult};

/// How a write in a batch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    Done,
    /// Refused before it wrote anything (not found, rejected input): the batch is unaffected.
    Refused,
    /// Failed after it may have written: the batch must be rolled back.
    Poisoned,
}

impl JobStatus {
    pub fn of<T>(result: &StorageResult<T>) -> JobStatus {
        match result {
            Ok(_) => JobStatus::Done,
            Err(
                StorageError::NotFound { .. }
                | StorageError::Unavailable(_)
                | StorageError::Rejected(_)
                | StorageError::Conflict(_)
                | StorageError::Overloaded { .. },
            ) => JobStatus::Refused,
            Err(StorageError::Internal(_)) => JobStatus::Poisoned,
        }
    }
}

/// A write's answer once its batch committed (`Ok`) or was rolled back (`Err` with why): its
/// own error stands; a success that was rolled back becomes an error.
pub fn settle<T>(result: StorageResult<T>, commit: Result<(), &str>) -> StorageResult<T> {
    match commit {
        Ok(()) => result,
        Err(_) if result.is_err() => result,
        Err(why) => Err(StorageError::Internal(anyhow::anyhow!(
            "the write batch was not committed: {why}"
        ))),
    }
}

/// The answer when the writer dropped a write unanswered.
pub fn dropped() -> StorageError {
    StorageError::Internal(anyhow::anyhow!(
        "the writer dropped the write without committing it (see the writer's log)"
    ))
}
