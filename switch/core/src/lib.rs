//! The pure shard state machine. A `Shard` owns the cards that route to it and answers
//! `apply(now_ms, &Command) -> Applied` deterministically: no I/O, no clock, no randomness, no
//! async. Time and ids come in as arguments, so the server, recovery (journal replay), the
//! simulator, the model tests and the benches all drive the very same code and get the very same
//! replies. Commands and shard images derive rkyv so the server can journal and snapshot them
//! without this crate knowing about files. `keys` holds the keyed functions that turn a PIN into
//! the card's name (and a password into its MAC), pure as well, so the switch and the settlement
//! exporter name a card the same way.

#![forbid(unsafe_code)]

pub mod calendar;
pub mod config;
pub mod config_record;
mod dense_map;
mod hasher;
pub mod journal_entry;
pub mod keys;
pub mod routing;
pub mod shard;
pub mod types;

pub use config::{
    EngineConfig, ForeignProduct, Product, SESSION_SECONDS_MAX, TARIFF_BANDS_MAX, Tariff,
    TariffBand,
};
pub use config_record::{ConfigRecord, ConfigRecordAdded, ConfigRecordExtended};
pub use journal_entry::{JournalEntry, decode_entry, encode_entry, encode_entry_into};
pub use keys::{CardNames, KeyFile, Keys, PIN_KEYS_MAX, PinKeys};
pub use routing::{shard_of_card, shard_of_op};
pub use shard::{
    ENGINE_FORMAT_CURRENT, ENGINE_FORMAT_FIRST, SNAPSHOT_IMAGE_FORMAT, Shard, msg_type_of,
};
pub use types::*;
