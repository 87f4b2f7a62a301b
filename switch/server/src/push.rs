//! Server pushes to call switches: which connection last reported each live session, and how a
//! shard's session notices (re-authorize after a recharge, abort on a block, low balance,
//! expired for silence) reach it as SESSION_NOTICE frames (`FLAG_PUSH`, request id 0). A shard
//! thread hands its notices over only after the commands that raised them are durable.
//! Delivery is best effort by design: a notice never waits (a connection whose queue is full
//! or that has gone misses it) because the call switch learns the same at its next report,
//! which the switch answers from the journaled state.

use dashmap::DashMap;
use pinswitch_core::SessionNoticeOut;
use pinswitch_protocol::{
    FLAG_PUSH, FrameHeader, MsgType, NOTICE_EXPIRED, SessionNotice, VERSION, encode_body,
    encode_frame,
};
use tokio::sync::mpsc;

/// Live session id → the sending side of the connection that last started or reported it.
/// Bounded by the live sessions (`sessions_per_shard_max` per shard): an entry goes at the
/// session's END, expiry or audit close, or at the first push to a connection that is gone.
#[derive(Default)]
pub(crate) struct SessionDirectory {
    owners: DashMap<u128, mpsc::Sender<Vec<u8>>>,
    /// False when `[sessions] notices` is off: nothing is registered or pushed.
    enabled: bool,
}

impl std::fmt::Debug for SessionDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionDirectory")
            .field("sessions", &self.owners.len())
            .field("enabled", &self.enabled)
            .finish()
    }
}

impl SessionDirectory {
    pub(crate) fn new(enabled: bool) -> SessionDirectory {
        SessionDirectory { owners: DashMap::new(), enabled }
    }

    /// The connection behind `responses` now owns the session.
    pub(crate) fn register(&self, session_id: u128, responses: &mpsc::Sender<Vec<u8>>) {
        if !self.enabled {
            return;
        }
        // Most reports come from the connection that started the call: a read, no write.
        if self.owners.get(&session_id).is_some_and(|owner| owner.same_channel(responses)) {
            return;
        }
        self.owners.insert(session_id, responses.clone());
    }

    pub(crate) fn forget(&self, session_id: u128) {
        self.owners.remove(&session_id);
    }

    /// Pushes each notice to its session's connection; never blocks.
    pub(crate) fn notify(&self, notices: &[SessionNoticeOut]) {
        for notice in notices {
            let sender = self.owners.get(&notice.session_id).map(|entry| entry.value().clone());
            if notice.kind == NOTICE_EXPIRED {
                self.owners.remove(&notice.session_id);
            }
            let Some(sender) = sender else { continue };
            let body = encode_body(&vec![SessionNotice {
                kind: notice.kind,
                session_id: notice.session_id,
                available_won: notice.available_won,
            }]);
            let mut frame = Vec::with_capacity(pinswitch_protocol::HEADER_BYTES + body.len());
            encode_frame(&mut frame, &push_header(), &body);
            if let Err(mpsc::error::TrySendError::Closed(_)) = sender.try_send(frame) {
                self.owners.remove(&notice.session_id);
            }
        }
    }
}

/// The header of a SESSION_NOTICE push.
fn push_header() -> FrameHeader {
    let mut header = FrameHeader::request(MsgType::SessionNotice, 0, 0);
    header.flags = FLAG_PUSH;
    header.version = VERSION;
    header
}
