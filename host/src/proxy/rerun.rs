//! Re-running a recorded transaction through its channel as a child transaction.

use uuid::Uuid;

use crate::store::StoreError;
use crate::transaction::Transaction;

use super::Proxy;

/// Why a transaction could not be rerun.
#[derive(Debug, thiserror::Error)]
pub enum RerunError {
    /// The record says it cannot be rerun (`canRerun` false: its request body was not stored whole),
    /// or it is still in flight. The API answers 409.
    #[error("transaction {id} cannot be rerun: {reason}")]
    NotRerunnable { id: Uuid, reason: String },
    /// Its channel no longer exists or is disabled. The API answers 409.
    #[error("transaction {id} cannot be rerun: {reason}")]
    ChannelUnavailable { id: Uuid, reason: String },
    /// Reading or linking the records failed. The API answers 503.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Proxy {
    /// Sends `parent`'s stored request through its channel again (no matching, no admission) and
    /// records the result as a child transaction linked both ways (`parentID` on the child, the
    /// child's id in the parent's `childIDs`). Returns the child's record once its response is
    /// complete. An upstream failure is not an error here: it is recorded in the child, as for any
    /// transaction.
    pub async fn rerun(&self, parent: &Transaction) -> Result<Transaction, RerunError> {
        let _ = parent;
        Err(RerunError::NotRerunnable {
            id: parent.id,
            reason: "not implemented yet".into(),
        })
    }
}
