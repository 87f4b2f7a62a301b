//! The exporter's single error type. Every variant that concerns a journal record names the shard
//! and sequence number, every variant that concerns a file names the file, so an operator can go
//! straight to the spot. Bad input files (journal, state, configuration) are errors, never panics.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// An operating-system call failed on `path`.
    #[error("cannot {action} {}: {source}", path.display())]
    Io { path: PathBuf, action: &'static str, source: std::io::Error },

    /// Reading a shard's journal failed (corruption, a missing segment, ...).
    #[error("shard {shard}: {source}")]
    Journal { shard: u16, source: pinswitch_journal::JournalError },

    /// A journal payload is not a journal entry of this version.
    #[error("shard {shard} record {seq} does not decode: {reason}")]
    Decode { shard: u16, seq: u64, reason: String },

    /// The shadow engine answered differently from the switch: the shadow started under other
    /// rules than the journal (see `Options::engine`), or the engine's code changed its answers.
    #[error("shard {shard} record {seq}: replay diverged: journaled {journaled}, shadow {shadow}")]
    Diverged { shard: u16, seq: u64, journaled: String, shadow: String },

    /// The postings derived from a record disagree with the engine's own money totals: a bug in
    /// the exporter's mapping, caught before anything is written.
    #[error("shard {shard} record {seq}: postings disagree with the engine totals: {what}")]
    Unbalanced { shard: u16, seq: u64, what: String },

    /// The exporter's state file is damaged or of another layout.
    #[error("exporter state {} is unreadable: {reason}", path.display())]
    State { path: PathBuf, reason: String },

    /// The data directory or the exporter's configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A money figure left the range of its type (never wraps).
    #[error("amount overflow: {0}")]
    Overflow(&'static str),

    /// Another exporter holds the state directory.
    #[error("another exporter is running on this state directory ({})", .0.display())]
    Locked(PathBuf),

    /// `pinswitch-exporter period` was asked for a date it knows nothing about.
    #[error("no period {0}: nothing was exported for it yet")]
    NoPeriod(String),
}

impl ExportError {
    /// A closure turning an `io::Error` into `Io` for `path` (for `map_err`).
    pub fn io(
        path: &std::path::Path,
        action: &'static str,
    ) -> impl FnOnce(std::io::Error) -> ExportError {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, action, source }
    }
}

pub type Result<T> = std::result::Result<T, ExportError>;
