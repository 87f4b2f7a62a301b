//! Placeholder root; the journal helper replaces this file.
