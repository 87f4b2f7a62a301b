//! The server's configuration: every limit has a name and a value here, with production defaults,
//! and an optional TOML file (`--config FILE`) overrides any of them. `ops/config/` holds presets
//! that mirror these defaults. The engine's rules (`[engine]`) become a journaled `Configure`
//! command, so replay always uses the rules each command first ran under.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use pinswitch_core::EngineConfig;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    pub server: ServerSection,
    pub limits: Limits,
    pub journal: JournalSection,
    /// `[engine]`: the engine's rules, read straight into `EngineConfig` (see its field docs).
    pub engine: EngineConfig,
    pub sessions: SessionsSection,
    /// `[tls]`: the switch's certificate, and the authority of client certificates.
    pub tls: TlsSection,
    /// `[access]`: who may do what (roles, identities, plain TCP).
    pub access: AccessSection,
    /// `[iso8583]`: the ISO 8583 front end (protocol/ISO8583.md).
    pub iso8583: Iso8583Section,
    /// `[diameter]`: the Diameter credit-control front end (protocol/DIAMETER.md).
    pub diameter: DiameterSection,
    /// The file this was read from (SIGHUP re-reads it); not a key of the file.
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ServerSection {
    /// Where journals, snapshots and the key file live. Created when absent, recovered when not.
    pub data_dir: PathBuf,
    /// The key file (the PIN key and the password key; empty, the default: `keys.bin` in
    /// `data_dir`). Keep it off the data directory's backups: with both, every PIN falls to a
    /// sweep of the PIN space tested against all cards at once (ops/README.md, Keys).
    pub keys_file: PathBuf,
    /// TCP listen address (loopback by default: the switch sits behind gateways, not on the web).
    pub listen: String,
    /// Shards (one thread each, one journal each); 0 = one per core.
    pub shards: u16,
    /// What runs each shard thread's network I/O: "glommio" (io_uring, the default) or "tokio"
    /// (epoll, one current-thread runtime per shard: for kernels without io_uring or a
    /// locked-memory limit under 512 KiB). Both serve the same shard-per-core layout.
    pub runtime: String,
    /// How connections reach the shard threads: "handoff" (the default: shard 0 accepts and
    /// gives each connection to the shard with the fewest) or "reuseport" (every shard listens
    /// with SO_REUSEPORT and the kernel spreads connections by address hash).
    pub accept: String,
    /// QUIC listen address (UDP; empty, the default: no QUIC). QUIC is always TLS 1.3, so it
    /// needs `[tls]`; every bidirectional stream carries native frames as a TCP connection does.
    pub quic_listen: String,
    /// The operators' HTTP address: `/metrics`, `/health/live`, `/health/ready` (empty, the
    /// default: none; keep it on a management network, it tells card counts and liability).
    pub http_listen: String,
    /// The most a wall-clock reading may be ahead of the monotonic clock's projection of the
    /// last one for a shard to take it; further ahead, it is quarantined (`clock.rs`).
    pub clock_step_max_ms: u64,
    /// A quarantined forward step that holds this long is taken.
    pub clock_step_confirm_ms: u64,
}

/// `[iso8583]`: the ISO 8583 listener for acquirers and gateways (protocol/ISO8583.md).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Iso8583Section {
    /// TCP listen address (empty, the default: no ISO 8583 listener). TLS as `[tls]` says,
    /// identities and roles as `[access]` says, exactly as the native listener.
    pub listen: String,
    /// "ascii" (the default: hex bitmaps, pyiso8583's `default_ascii`) or "binary" (8-byte
    /// bitmaps and binary PIN blocks, pyiso8583's `default`).
    pub encoding: String,
    /// How DE 52 is protected: "zpk" (the default: triple DES under the zone PIN key in
    /// `zone_pin_key_file`) or "clear" (an unencrypted format-0 block: test links only).
    pub pin_block: String,
    /// The zone PIN key shared with the acquirer: 32 or 48 hex digits, mode 0600, kept apart
    /// from the data directory's backups like the key file.
    pub zone_pin_key_file: PathBuf,
    /// The service category of every payment made through this listener.
    pub category: String,
    /// The hold time of an 0100 authorization (0: the engine's `hold_ttl_default_s`).
    pub hold_ttl_s: u32,
    /// The longest message (bytes inside the length prefix); at most 5,631.
    pub message_bytes_max: u32,
    /// Card acceptor ids (DE 42) that are not our merchant id in digits.
    pub merchants: Vec<Iso8583Merchant>,
}

/// One `[[iso8583.merchants]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Iso8583Merchant {
    pub card_acceptor_id: String,
    pub merchant_id: u64,
}

impl Default for Iso8583Section {
    fn default() -> Self {
        Iso8583Section {
            listen: String::new(),
            encoding: "ascii".into(),
            pin_block: "zpk".into(),
            zone_pin_key_file: PathBuf::new(),
            category: "internet_payment".into(),
            hold_ttl_s: 0,
            message_bytes_max: 4096,
            merchants: Vec::new(),
        }
    }
}

/// `[diameter]`: the Diameter credit-control listener for call platforms (protocol/DIAMETER.md).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DiameterSection {
    /// TCP listen address (empty, the default: no Diameter listener). TLS and identities as on
    /// the native listener; a call-switch identity's `owner_id` owns its sessions.
    pub listen: String,
    /// This switch's Origin-Host and Origin-Realm.
    pub origin_host: String,
    pub origin_realm: String,
    /// The Subscription-Id-Type whose Subscription-Id-Data is the card's PIN (4:
    /// END_USER_PRIVATE; platforms differ).
    pub subscription_id_type: u32,
    /// The AVP (vendor 0, a UTF8String of digits) holding the called number (30:
    /// Called-Station-Id).
    pub destination_avp: u32,
    /// The AVP (vendor 0, a UTF8String) holding the card's password where the platform collects
    /// one (0, the default: none).
    pub password_avp: u32,
    /// The service category of every session (call) through this listener.
    pub category: String,
    /// The service category of every EVENT request (the per-event services, e.g. a phone
    /// information number).
    pub event_category: String,
    /// The owner id of sessions from identities bound to none (plain TCP, admin).
    pub owner_id: u32,
    /// The longest message.
    pub message_bytes_max: u32,
    /// Live credit-control sessions the listener tracks at once; past it INITIAL is answered
    /// 3004 DIAMETER_TOO_BUSY.
    pub sessions_max: u32,
}

impl Default for DiameterSection {
    fn default() -> Self {
        DiameterSection {
            listen: String::new(),
            origin_host: "pinswitch.local".into(),
            origin_realm: "local".into(),
            subscription_id_type: 4,
            destination_avp: 30,
            password_avp: 0,
            category: "telephone_call".into(),
            event_category: "phone_information".into(),
            owner_id: 0,
            message_bytes_max: 65_536,
            sessions_max: 1_000_000,
        }
    }
}

/// Limits of the front end and the shard queues. Hitting one gives a result code, never an
/// unbounded queue.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Limits {
    /// Largest frame body accepted; larger frames get FRAME_TOO_LARGE and the connection closes.
    pub frame_bytes_max: u32,
    /// Most events in one frame; more get BATCH_TOO_LARGE.
    pub batch_events_max: u32,
    /// Open connections; one more is answered RETRY_LATER and closed.
    pub connections_max: u32,
    /// Frames a connection may have in flight; one more is answered RETRY_LATER.
    pub in_flight_per_connection_max: u32,
    /// Batches waiting in one shard's queue; when full, events for that shard get RETRY_LATER.
    pub shard_queue_max: u32,
    /// Most events one shard applies before one durable commit (the group-commit size).
    pub commit_events_max: u32,
    /// Open connections from one peer address; one more is answered RETRY_LATER and closed (so
    /// one host cannot take every connection).
    pub connections_per_address_max: u32,
    /// A connection with nothing in flight that sends no byte for this long is closed.
    pub idle_timeout_ms: u64,
    /// A frame whose first byte has arrived must be whole within this long, or the connection
    /// closes (slow-drip clients).
    pub frame_read_timeout_ms: u64,
    /// A connection whose client takes none of its pending answers for this long is closed.
    pub write_timeout_ms: u64,
    /// Events a connection may have in flight over all its frames; a frame that would pass it
    /// is answered RETRY_LATER (bounds the answers a connection can make the switch hold).
    pub in_flight_events_per_connection_max: u32,
    /// Unread answer bytes one connection may hold; past it the switch stops reading that
    /// connection until its client reads.
    pub connection_output_bytes_max: u32,
    /// Bytes all connections' receive buffers may hold together (partial frames included); a
    /// frame that does not fit is answered RETRY_LATER and its bytes are skipped.
    pub read_buffer_bytes_total_max: u64,
    /// Bidirectional streams one QUIC connection may have open at once (each is served as a
    /// connection and holds a place of `connections_max`); the client's next open waits on
    /// QUIC's own stream credit until one closes.
    pub quic_streams_per_connection_max: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct JournalSection {
    pub segment_bytes: u64,
    /// Most bytes one group commit writes; bounds what recovery may treat as a torn tail.
    pub commit_bytes_max: u64,
    /// A shard writes a snapshot after this many journal records.
    pub snapshot_every_records: u64,
    /// After a snapshot failed (a full disk, say: never fatal, the journal holds everything),
    /// the shard tries the next one no sooner than this.
    pub snapshot_retry_ms: u64,
    /// A shard whose next segment's space could not be taken (a full disk) tries again at most
    /// this often; meanwhile it writes into the segment it has and, once that is full, answers
    /// STORAGE_FULL to every event that would write a record.
    pub storage_retry_ms: u64,
    /// What becomes of segments the exporter has passed and the older kept snapshot covers:
    /// "keep" (the default), "delete", or "archive" (copied into `archive_dir`, then deleted).
    pub retention: String,
    /// Where "archive" copies retired segments (`shard-NNN/` below it).
    pub archive_dir: PathBuf,
    /// The exporter's cursors file (empty: `<data_dir>/export/cursors.txt`, the exporter's
    /// default state directory).
    pub exporter_cursors: PathBuf,
    /// How a glommio shard runs a commit's `fdatasync`: "thread" (on the shard's sync thread,
    /// the default, as tokio shards always do) or "ring" (an io_uring op on the shard's own
    /// ring). Measured interleaved at 50 connections x 1 in flight over 1,000,000 cards: thread
    /// 30.6-36.2 k/s, ring 25.6-27.2 k/s (ops/benchmarking.md).
    pub sync: String,
}

/// `[tls]`: TLS 1.3 on the listen address (empty paths: no TLS). Connections are TLS or plain by
/// their first byte; plain TCP is then what `[access] plain` allows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TlsSection {
    /// The switch's certificate chain, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// The authority whose client certificates are accepted, PEM. Set: mutual TLS, every TLS
    /// client must present a certificate it signed; the certificate's first DNS name is the
    /// identity looked up in `[[access.identities]]`.
    pub client_ca_pem: String,
}

/// `[access]`: the roles of each identity and of plain TCP (PROTOCOL.md §2, "Roles").
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AccessSection {
    /// Plain TCP: "loopback" (the default: only from this host, so the embedded default's
    /// tools work), "any" (from anywhere: an explicit choice for a closed network) or "off".
    pub plain: String,
    /// The roles of a plain TCP connection, bound to no business id.
    pub plain_roles: Vec<crate::access::Role>,
    /// Unknown-card and wrong-password answers one plain TCP connection may get in a minute
    /// (0: not metered: plain TCP serves this host's own tools by default).
    pub plain_guesses_per_minute_max: u32,
    /// The roles of a TLS client without a certificate (TLS without `client_ca_pem`).
    pub anonymous_roles: Vec<crate::access::Role>,
    /// The identities of client certificates. A verified certificate whose name is not here
    /// gets no role: everything but HELLO and PING is NOT_PERMITTED.
    pub identities: Vec<crate::access::IdentityConfig>,
}

impl Default for AccessSection {
    fn default() -> Self {
        AccessSection {
            plain: "loopback".into(),
            plain_roles: vec![crate::access::Role::Admin],
            plain_guesses_per_minute_max: 0,
            anonymous_roles: Vec::new(),
            identities: Vec::new(),
        }
    }
}

/// `[sessions]`: what the front end tells call switches with every grant, and the audit's
/// limits. (The money rules of sessions are in `[engine]`: they are journaled.)
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SessionsSection {
    /// Report when this many granted seconds are left (RFC 8506 Time-Quota-Threshold).
    pub quota_threshold_s: u32,
    /// What a call switch does when the switch does not answer in time: "terminate",
    /// "continue" or "retry_and_terminate" (RFC 8506 CC-Failure-Handling).
    pub failure_handling: String,
    /// The final-unit action when a card runs low: "terminate", or "redirect" to
    /// `redirect_number` (the recharge service, 1 to 15 digits).
    pub final_unit_action: String,
    pub redirect_number: String,
    /// SESSION_AUDIT spares sessions that reported within this many seconds (a call started
    /// while the audit was on its way).
    pub audit_grace_s: u32,
    /// Most session ids one SESSION_AUDIT list may carry (more: BATCH_TOO_LARGE).
    pub audit_sessions_max: u32,
    /// SESSION_NOTICE pushes are sent only to connections that reported a session; a
    /// connection whose queue is full misses them (they are advisory).
    pub notices: bool,
}

impl Default for SessionsSection {
    fn default() -> Self {
        SessionsSection {
            quota_threshold_s: 10,
            failure_handling: "terminate".into(),
            final_unit_action: "terminate".into(),
            redirect_number: String::new(),
            audit_grace_s: 60,
            audit_sessions_max: 1_000_000,
            notices: true,
        }
    }
}

impl SessionsSection {
    /// The wire value of `failure_handling`.
    pub(crate) fn failure_handling_code(&self) -> Option<u8> {
        match self.failure_handling.as_str() {
            "terminate" => Some(pinswitch_protocol::FAILURE_HANDLING_TERMINATE),
            "continue" => Some(pinswitch_protocol::FAILURE_HANDLING_CONTINUE),
            "retry_and_terminate" => Some(pinswitch_protocol::FAILURE_HANDLING_RETRY_AND_TERMINATE),
            _ => None,
        }
    }

    /// The redirect number when the final-unit action is "redirect" (`None`: terminate).
    pub(crate) fn redirect(&self) -> Option<Vec<u8>> {
        (self.final_unit_action == "redirect").then(|| self.redirect_number.as_bytes().to_vec())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: 8 << 20,
            batch_events_max: 8_192,
            connections_max: 1_024,
            in_flight_per_connection_max: 256,
            shard_queue_max: 4_096,
            commit_events_max: 16_384,
            connections_per_address_max: 256,
            idle_timeout_ms: 300_000,
            frame_read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            in_flight_events_per_connection_max: 65_536,
            connection_output_bytes_max: 4 << 20,
            read_buffer_bytes_total_max: 1 << 30,
            quic_streams_per_connection_max: 16,
        }
    }
}

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection {
            segment_bytes: 64 << 20,
            commit_bytes_max: 16 << 20,
            snapshot_every_records: 2_000_000,
            snapshot_retry_ms: 10_000,
            storage_retry_ms: 1_000,
            retention: "keep".into(),
            archive_dir: PathBuf::new(),
            exporter_cursors: PathBuf::new(),
            sync: "thread".into(),
        }
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            data_dir: PathBuf::from("data"),
            keys_file: PathBuf::new(),
            listen: "127.0.0.1:7420".into(),
            shards: 0,
            runtime: "glommio".into(),
            accept: "handoff".into(),
            quic_listen: String::new(),
            http_listen: String::new(),
            clock_step_max_ms: 60_000,
            clock_step_confirm_ms: 300_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerSection::default(),
            limits: Limits::default(),
            journal: JournalSection::default(),
            engine: EngineConfig::production(),
            sessions: SessionsSection::default(),
            tls: TlsSection::default(),
            access: AccessSection::default(),
            iso8583: Iso8583Section::default(),
            diameter: DiameterSection::default(),
            source: None,
        }
    }
}

impl Config {
    /// The journal retention policy, with the exporter's cursors file resolved.
    pub(crate) fn retention(&self) -> crate::retention::Retention {
        use crate::retention::Retention;
        let cursors = if self.journal.exporter_cursors.as_os_str().is_empty() {
            self.server.data_dir.join("export").join("cursors.txt")
        } else {
            self.journal.exporter_cursors.clone()
        };
        match self.journal.retention.as_str() {
            "delete" => Retention::Delete { cursors },
            "archive" => {
                Retention::Archive { cursors, archive_dir: self.journal.archive_dir.clone() }
            }
            _ => Retention::Keep,
        }
    }
}

impl Config {
    /// Defaults, overridden by the TOML file when one is given.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                refuse_retired_engine_keys(&text)
                    .with_context(|| format!("parsing config {}", path.display()))?;
                let mut config: Config = toml::from_str(&text)
                    .with_context(|| format!("parsing config {}", path.display()))?;
                config.source = Some(path.to_path_buf());
                config
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// The engine's rules (`[engine]`, read straight into `EngineConfig`).
    pub(crate) fn engine(&self) -> EngineConfig {
        self.engine.clone()
    }

    /// The shard count in force: configured, or one per core.
    pub(crate) fn shard_count(&self) -> u16 {
        if self.server.shards > 0 {
            return self.server.shards;
        }
        std::thread::available_parallelism()
            .map(|cores| u16::try_from(cores.get()).unwrap_or(u16::MAX))
            .unwrap_or(1)
    }

    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if let Err(why) = self.engine().validate() {
            bail!("invalid [engine] section: {why}");
        }
        // Two products of one face value: CARD_ISSUE and every rule would find the first alone.
        // Only a file is refused: journaled rules from before products were tables may hold
        // such a pair, and the engine must replay them as it first did.
        let products = &self.engine.products;
        for (at, product) in products.iter().enumerate() {
            if products[..at].iter().any(|other| other.face_value_won == product.face_value_won) {
                bail!(
                    "invalid [engine] section: two products of face value {}",
                    product.face_value_won
                );
            }
        }
        let limits = &self.limits;
        for (name, value) in [
            ("frame_bytes_max", limits.frame_bytes_max),
            ("batch_events_max", limits.batch_events_max),
            ("connections_max", limits.connections_max),
            ("in_flight_per_connection_max", limits.in_flight_per_connection_max),
            ("shard_queue_max", limits.shard_queue_max),
            ("commit_events_max", limits.commit_events_max),
            ("connections_per_address_max", limits.connections_per_address_max),
            ("in_flight_events_per_connection_max", limits.in_flight_events_per_connection_max),
            ("connection_output_bytes_max", limits.connection_output_bytes_max),
            ("quic_streams_per_connection_max", limits.quic_streams_per_connection_max),
        ] {
            if value == 0 {
                bail!("limits.{name} must be positive");
            }
        }
        for (name, value) in [
            ("idle_timeout_ms", limits.idle_timeout_ms),
            ("frame_read_timeout_ms", limits.frame_read_timeout_ms),
            ("write_timeout_ms", limits.write_timeout_ms),
        ] {
            if value == 0 {
                bail!("limits.{name} must be positive");
            }
        }
        let iso = &self.iso8583;
        if !(64..=crate::iso8583::MESSAGE_BYTES_LIMIT).contains(&iso.message_bytes_max) {
            bail!(
                "iso8583.message_bytes_max must be in 64..={} (a longer length prefix would \
                 read as a TLS handshake)",
                crate::iso8583::MESSAGE_BYTES_LIMIT
            );
        }
        if !iso.listen.is_empty() {
            // The key file and the rest are read now, so a bad section stops the start here.
            crate::iso8583::Settings::from_config(iso)?;
            if iso.hold_ttl_s > self.engine.hold_ttl_max_s {
                bail!("iso8583.hold_ttl_s is above engine.hold_ttl_max_s");
            }
        }
        let diameter = &self.diameter;
        if !(64..=(1 << 24) - 1).contains(&diameter.message_bytes_max) || diameter.sessions_max == 0
        {
            bail!("diameter.message_bytes_max must be in 64..=16777215 and sessions_max positive");
        }
        if !diameter.listen.is_empty() {
            crate::diameter::Settings::from_config(diameter)?;
        }
        // One base receive buffer per connection must fit, or connections are refused.
        if limits.read_buffer_bytes_total_max < 64 * 1024 {
            bail!("limits.read_buffer_bytes_total_max must be at least 65536");
        }
        if !matches!(self.server.accept.as_str(), "handoff" | "reuseport") {
            bail!("server.accept must be \"handoff\" or \"reuseport\"");
        }
        if !matches!(self.server.runtime.as_str(), "glommio" | "tokio") {
            bail!("server.runtime must be \"glommio\" or \"tokio\"");
        }
        match self.journal.retention.as_str() {
            "keep" | "delete" => {}
            "archive" if !self.journal.archive_dir.as_os_str().is_empty() => {}
            "archive" => bail!("journal.retention = \"archive\" needs journal.archive_dir"),
            _ => bail!("journal.retention must be \"keep\", \"delete\" or \"archive\""),
        }
        if self.server.clock_step_max_ms == 0 {
            bail!("server.clock_step_max_ms must be positive");
        }
        if self.journal.commit_bytes_max == 0
            || self.journal.commit_bytes_max > self.journal.segment_bytes
        {
            bail!("journal.commit_bytes_max must be in 1..=journal.segment_bytes");
        }
        if !matches!(self.journal.sync.as_str(), "ring" | "thread") {
            bail!("journal.sync must be \"ring\" or \"thread\"");
        }
        if self.journal.snapshot_every_records == 0 {
            bail!("journal.snapshot_every_records must be positive");
        }
        let sessions = &self.sessions;
        if sessions.failure_handling_code().is_none() {
            bail!("sessions.failure_handling must be terminate, continue or retry_and_terminate");
        }
        match sessions.final_unit_action.as_str() {
            "terminate" => {}
            "redirect"
                if pinswitch_core::pack_destination(sessions.redirect_number.as_bytes())
                    .is_some() => {}
            "redirect" => bail!(
                "sessions.redirect_number must be 1 to 15 digits with final_unit_action = \"redirect\""
            ),
            _ => bail!("sessions.final_unit_action must be terminate or redirect"),
        }
        if sessions.audit_sessions_max == 0 {
            bail!("sessions.audit_sessions_max must be positive");
        }
        self.validate_trust()
    }

    /// TLS and plain TCP: listening beyond this host without TLS refuses to start unless plain
    /// TCP from anywhere is asked for by name.
    fn validate_trust(&self) -> anyhow::Result<()> {
        let (tls, access) = (&self.tls, &self.access);
        if !["loopback", "any", "off"].contains(&access.plain.as_str()) {
            bail!("access.plain must be \"loopback\", \"any\" or \"off\"");
        }
        if tls.cert_pem.is_empty() != tls.key_pem.is_empty() {
            bail!("tls.cert_pem and tls.key_pem go together");
        }
        if tls.cert_pem.is_empty() && !tls.client_ca_pem.is_empty() {
            bail!("tls.client_ca_pem needs tls.cert_pem and tls.key_pem");
        }
        let loopback = self
            .server
            .listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|address| address.ip().is_loopback());
        if !loopback && tls.cert_pem.is_empty() && access.plain != "any" {
            bail!(
                "listening on {} without TLS: set [tls] cert_pem and key_pem, or allow plain TCP \
                 from anywhere with [access] plain = \"any\"",
                self.server.listen
            );
        }
        if !self.server.quic_listen.is_empty() && tls.cert_pem.is_empty() {
            bail!("server.quic_listen needs [tls] cert_pem and key_pem: QUIC is always TLS 1.3");
        }
        if tls.cert_pem.is_empty() && access.plain == "off" {
            bail!("access.plain = \"off\" without [tls]: nothing could connect");
        }
        let mut names = std::collections::HashSet::new();
        for identity in &access.identities {
            if !names.insert(identity.name.as_str()) {
                bail!("access.identities: {} is listed twice", identity.name);
            }
        }
        Ok(())
    }
}

/// Refuses an `[engine]` section that still spells products as parallel arrays (the form before
/// `[[engine.products]]`), naming the key and its replacement; serde alone would say "unknown
/// field" and list every key. Text that is not TOML is left to the real parse to report.
fn refuse_retired_engine_keys(text: &str) -> anyhow::Result<()> {
    let Ok(table) = text.parse::<toml::Table>() else { return Ok(()) };
    let Some(engine) = table.get("engine").and_then(toml::Value::as_table) else { return Ok(()) };
    for (retired, replacement) in EngineConfig::RETIRED_TOML_KEYS {
        if engine.contains_key(retired) {
            bail!(
                "[engine] {retired} is no longer read: each product is one [[engine.products]] \
                 table (face_value_won, and any of categories, points_per_mille, validity_days, \
                 recharge_unit_won, balance_cap_won, promotional; a key left out is the \
                 engine-wide rule); instead of {retired}, give each product {replacement} \
                 (see ops/config/production.toml)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ops/config/production.toml documents the defaults: it must say exactly what they are.
    #[test]
    fn the_production_preset_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/config/production.toml");
        let preset = Config::load(Some(&path)).expect("the preset loads");
        let defaults = Config::default();
        assert_eq!(preset.engine(), defaults.engine());
        assert_eq!(preset.limits, defaults.limits);
        assert_eq!(preset.sessions, defaults.sessions);
        assert_eq!(preset.tls, defaults.tls);
        assert_eq!(preset.access, defaults.access);
        assert_eq!(preset.iso8583, defaults.iso8583);
        assert_eq!(preset.diameter, defaults.diameter);
    }

    /// `[engine]` is read straight into `EngineConfig`: band times in "HH:MM", the window in
    /// seconds; a bad time is refused when the file is parsed, naming it.
    #[test]
    fn band_times_parse_and_bad_ones_are_refused() {
        let parse = |from: &str| {
            let text = format!(
                "[[engine.tariffs]]\ntariff_id = 1\ncategory = 2\nrate_won = 2\nincrement_s = 1\nbands = [{{ from = \"{from}\", rate_won = 1 }}]\n[engine]\nidempotency_window_s = 60\n"
            );
            toml::from_str::<Config>(&text).map(|config| {
                (config.engine.tariffs[0].bands[0].from_minute, config.engine.idempotency_window_ms)
            })
        };
        assert_eq!(parse("00:00").ok(), Some((0, 60_000)));
        assert_eq!(
            (parse("08:30").ok(), parse("23:59").ok()),
            (Some((510, 60_000)), Some((1439, 60_000)))
        );
        for bad in ["24:00", "8:30", "08:60", "0830", "aa:bb"] {
            let error = parse(bad).expect_err(bad).to_string();
            assert!(error.contains(bad), "{bad}: {error}");
        }
        let mut config = Config::default();
        config.engine.tariffs[0].bands =
            vec![pinswitch_core::TariffBand { from_minute: 25 * 60, rate_won: 1 }];
        assert!(config.validate().is_err());
        config.engine.tariffs[0].bands.clear();
        config.sessions.final_unit_action = "redirect".into();
        assert!(config.validate().is_err(), "a redirect needs a number");
        config.sessions.redirect_number = "15880000".into();
        assert!(config.validate().is_ok());
    }

    /// One `[[engine.products]]` table per product: a key left out is the engine-wide rule,
    /// categories go by their protocol names, and an unknown name is refused, naming it.
    #[test]
    fn products_are_tables_with_the_global_rules_for_keys_left_out() {
        let text = "[[engine.products]]\nface_value_won = 5000\n\
                    categories = [\"internet_payment\", \"voicemail\"]\npoints_per_mille = 0\n\
                    [[engine.products]]\nface_value_won = 70000\nvalidity_days = 30\n\
                    recharge_unit_won = 5000\nbalance_cap_won = 300000\npromotional = true\n";
        let engine = toml::from_str::<Config>(text).unwrap().engine;
        let faces: Vec<u64> =
            engine.products.iter().map(|product| product.face_value_won).collect();
        assert_eq!(faces, [5_000, 70_000]);
        assert_eq!(engine.products[0].category_mask, Some(0b10_0001));
        assert_eq!(
            engine.products[1],
            pinswitch_core::Product {
                validity_days: Some(30),
                recharge_unit_won: Some(5_000),
                balance_cap_won: Some(300_000),
                promotional: true,
                ..pinswitch_core::Product::plain(70_000)
            }
        );
        assert!(!engine.category_allowed(5_000, 2) && engine.category_allowed(70_000, 2));
        assert_eq!(
            (engine.points_per_mille_of(5_000), engine.points_per_mille_of(70_000)),
            (0, 10)
        );
        assert_eq!(engine.validity_days_of(5_000), 5 * 365);
        let error = toml::from_str::<Config>(
            "[[engine.products]]\nface_value_won = 5000\ncategories = [\"telephone\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("\"telephone\"") && error.contains("telephone_call"), "{error}");
        let none = toml::from_str::<Config>(
            "[[engine.products]]\nface_value_won = 5000\ncategories = []\n",
        )
        .unwrap();
        assert!(none.validate().unwrap_err().to_string().contains("product 5000: categories"));
        let twice =
            toml::from_str::<Config>(&"[[engine.products]]\nface_value_won = 5000\n".repeat(2))
                .unwrap();
        assert!(
            twice.validate().unwrap_err().to_string().contains("two products of face value 5000")
        );
    }

    /// The parallel arrays of the old form are refused, each naming its replacement.
    #[test]
    fn the_old_product_arrays_are_refused_naming_the_new_keys() {
        for (retired, replacement) in EngineConfig::RETIRED_TOML_KEYS {
            let text = format!("[engine]\nbalance_cap_won = 500000\n{retired} = []\n");
            let error = refuse_retired_engine_keys(&text).unwrap_err().to_string();
            assert!(
                error.contains(retired)
                    && error.contains("[[engine.products]]")
                    && error.contains(replacement),
                "{error}"
            );
        }
        assert!(refuse_retired_engine_keys("[engine]\nvalidity_days = 1\n").is_ok());
        assert!(refuse_retired_engine_keys("[[engine.products]]\nface_value_won = 5000\n").is_ok());
    }
}
