//! Shared helpers for the end-to-end tests: start the real binary on a fresh data directory, wait for it, kill it.
