//! Why a record did not make it to the journal: the writer's error, which strict-mode
//! callers turn into a refused statement.
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a record did not make it to the journal.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuditError {
    /// The journal could not be opened or recovered.
    #[error("cannot open the audit journal {path}: {source}")]
    Open {
        /// The journal file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The record could not be written durably (strict mode): refuse the statement.
    #[error("cannot write the audit journal {path}: {source}")]
    Write {
        /// The journal file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Async mode, queue full: the record is lost; an `audit.gap` will count it.
    #[error("audit queue full: record dropped ({lost} dropped since the journal opened)")]
    Dropped {
        /// Records dropped so far.
        lost: u64,
    },
    /// The record's event is [`crate::audit::Event::Unknown`] (read side only): not written.
    #[error("invalid audit record: unknown event")]
    UnknownEvent,
    /// The journal was closed.
    #[error("the audit journal is closed")]
    Closed,
}
