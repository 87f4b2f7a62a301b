//! Placeholder; the protocol helper replaces this file.
