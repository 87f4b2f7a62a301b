//! Placeholder; the engine helper replaces this file.
pub struct Shard;
