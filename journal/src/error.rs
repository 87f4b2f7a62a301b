//! The journal's single error type. Every variant that concerns a file names it, and corruption
//! also names the byte offset, so an operator can look at the exact spot with a hex dump.

use std::path::PathBuf;

/// Everything that can go wrong while recovering, appending, committing, snapshotting or reading.
///
/// The server treats every error from [`crate::Journal::commit`] as fatal: after a failed
/// `msync`/`fdatasync` the kernel may already have dropped the dirty pages, so retrying could
/// report success for data that never reached the disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// An operating-system call failed on `path`.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// What the journal was doing, phrased to follow "cannot" (for example "msync segment").
        action: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// Damage that is not a torn tail: the journal refuses to guess and stops.
    #[error("journal corrupt: {} at byte offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged segment or snapshot file (or the journal directory when files are missing).
        path: PathBuf,
        /// Byte offset inside `path` where the damage starts.
        offset: u64,
        /// What is wrong, in words.
        reason: String,
    },

    /// The `apply` callback of a replay (or the visitor of a reader) returned this error.
    #[error("apply failed during replay: {0}")]
    Apply(String),

    /// A payload larger than one record may be.
    #[error("record of {bytes} payload bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// The payload's length in bytes.
        bytes: usize,
        /// The largest payload this journal accepts, in bytes.
        max: usize,
    },

    /// [`crate::JournalOptions`] that cannot work (for example segments too small for a header).
    #[error("invalid journal options: {reason}")]
    InvalidOptions {
        /// Which rule the options break.
        reason: String,
    },

    /// Another `Journal` (in this or another process) holds the directory's lock file.
    #[error("journal directory is locked by another writer: {}", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// [`crate::Journal::write_snapshot`] was asked for a sequence number not appended yet.
    #[error("snapshot at seq {seq} is ahead of the last appended record {last_seq}")]
    SnapshotAhead {
        /// The requested snapshot sequence number.
        seq: u64,
        /// The journal's last appended sequence number.
        last_seq: u64,
    },

    /// An earlier commit or roll failed; the journal must be reopened through recovery.
    #[error("journal failed earlier ({first_error}); reopen it through recovery")]
    Poisoned {
        /// The display text of the first failure.
        first_error: String,
    },
}

impl JournalError {
    /// Builds an [`JournalError::Io`] from a path and an action; used with `map_err`.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| JournalError::Io { path, action, source }
    }

    /// Builds an [`JournalError::Corrupt`].
    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        JournalError::Corrupt { path: path.into(), offset, reason: reason.into() }
    }
}
