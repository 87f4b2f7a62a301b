//! The Pinswitch settlement exporter. It runs apart from the switch (its own process, never on
//! the hot path), tails every shard's journal from a durable cursor, replays each record through
//! a shadow engine (the same pure `Shard::apply` the switch and its recovery use, with the
//! journaled reply required), turns each record into double-entry postings against a chart of
//! accounts and into settlement facts, and writes per-period files at a daily cut-off: merchant
//! statements, ISO 20022 pain.001 payout files with CSVs, breakage, channel sales, the
//! foreign-partner settlement, record retention tags and the trial balance; `status` shows
//! cursors, lag and the safeguarding reconciliation (card by card); `deposits` turns camt.054 deposit notices into cards sold through the
//! protocol; a per-card statement index answers usage statements (`statement`, and STATEMENT
//! frames through `serve`). See EXPORT.md for the outputs, the chart of accounts and the cursor rules.

#![forbid(unsafe_code)]

pub mod calendar;
pub mod config;
pub mod deposits;
pub mod error;
pub mod exporter;
pub mod factlog;
pub mod facts;
pub mod follower;
pub mod ledger;
pub mod merchants;
pub mod render;
pub mod serve;
pub mod statement;
pub mod xml;

pub use calendar::{Cutoff, Day, date_string, parse_date};
pub use config::ExportConfig;
pub use error::{ExportError, Result};
pub use exporter::{Exporter, Options, RunReport, Status};
