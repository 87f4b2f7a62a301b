//! Diameter messages (RFC 6733 §3, §4): a 20-byte header (version 1, a 24-bit length that
//! counts the whole message, the R/P/E/T flags, a 24-bit command code, the application id,
//! the hop-by-hop and end-to-end identifiers) followed by AVPs, each a code, V/M/P flags, a
//! 24-bit length, a vendor id when V is set, and its data padded to a multiple of four bytes.
//! Grouped AVPs hold AVPs. The credit-control front end (switch/server/src/diameter/) reads and
//! writes these; protocol/DIAMETER.md says which commands and AVPs it uses. Pure and
//! panic-free on any input.

use thiserror::Error;

/// The header's length.
pub const HEADER_BYTES: usize = 20;
/// Header flags.
pub const FLAG_REQUEST: u8 = 0x80;
pub const FLAG_PROXIABLE: u8 = 0x40;
pub const FLAG_ERROR: u8 = 0x20;
pub const FLAG_RETRANSMIT: u8 = 0x10;
/// AVP flags.
pub const AVP_VENDOR: u8 = 0x80;
pub const AVP_MANDATORY: u8 = 0x40;

/// Why bytes are not a Diameter message.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DiameterError {
    #[error("version {0}, not 1")]
    Version(u8),
    #[error("the header says {said} bytes, the message has {has}")]
    Length { said: usize, has: usize },
    /// An AVP whose length runs past its container or under its header (RFC 6733 5014).
    #[error("AVP {code} has a bad length")]
    AvpLength { code: u32 },
}

/// One AVP: its code, flags, vendor (0: none), and data (padding removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Avp {
    pub code: u32,
    pub flags: u8,
    pub vendor: u32,
    pub data: Vec<u8>,
}

impl Avp {
    /// A base-protocol AVP (no vendor) with the M flag.
    pub fn new(code: u32, data: Vec<u8>) -> Avp {
        Avp { code, flags: AVP_MANDATORY, vendor: 0, data }
    }
    pub fn u32(code: u32, value: u32) -> Avp {
        Avp::new(code, value.to_be_bytes().to_vec())
    }
    pub fn u64(code: u32, value: u64) -> Avp {
        Avp::new(code, value.to_be_bytes().to_vec())
    }
    pub fn text(code: u32, value: &str) -> Avp {
        Avp::new(code, value.as_bytes().to_vec())
    }
    pub fn grouped(code: u32, avps: &[Avp]) -> Avp {
        let mut data = Vec::new();
        for avp in avps {
            write_avp(&mut data, avp);
        }
        Avp::new(code, data)
    }

    /// The data as an Unsigned32 / Integer32 / Enumerated.
    pub fn as_u32(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.data.as_slice().try_into().ok()?))
    }
    /// The data as an Unsigned64.
    pub fn as_u64(&self) -> Option<u64> {
        Some(u64::from_be_bytes(self.data.as_slice().try_into().ok()?))
    }
    /// The AVPs of a grouped AVP.
    pub fn as_grouped(&self) -> Result<Vec<Avp>, DiameterError> {
        read_avps(&self.data)
    }
}

/// A message: its header fields and its AVPs, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub flags: u8,
    pub command: u32,
    pub application: u32,
    pub hop_by_hop: u32,
    pub end_to_end: u32,
    pub avps: Vec<Avp>,
}

impl Message {
    pub fn is_request(&self) -> bool {
        self.flags & FLAG_REQUEST != 0
    }

    /// The first top-level AVP with this code (vendor 0).
    pub fn avp(&self, code: u32) -> Option<&Avp> {
        find(&self.avps, code)
    }
}

/// The first AVP of `avps` with this code and no vendor.
pub fn find(avps: &[Avp], code: u32) -> Option<&Avp> {
    avps.iter().find(|avp| avp.code == code && avp.vendor == 0)
}

/// The length of the message starting `bytes`, once its first four bytes are there.
pub fn message_len(bytes: &[u8]) -> Option<usize> {
    let prefix = bytes.get(..4)?;
    Some(usize::from(prefix[1]) << 16 | usize::from(prefix[2]) << 8 | usize::from(prefix[3]))
}

/// Reads one whole message.
pub fn decode(bytes: &[u8]) -> Result<Message, DiameterError> {
    let said = message_len(bytes).unwrap_or(0);
    if bytes.len() < HEADER_BYTES || said != bytes.len() {
        return Err(DiameterError::Length { said, has: bytes.len() });
    }
    if bytes[0] != 1 {
        return Err(DiameterError::Version(bytes[0]));
    }
    let word =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Ok(Message {
        flags: bytes[4],
        command: word(4) & 0x00FF_FFFF,
        application: word(8),
        hop_by_hop: word(12),
        end_to_end: word(16),
        avps: read_avps(&bytes[HEADER_BYTES..])?,
    })
}

fn read_avps(mut bytes: &[u8]) -> Result<Vec<Avp>, DiameterError> {
    let mut avps = Vec::new();
    while !bytes.is_empty() {
        let Some(head) = bytes.get(..8) else {
            return Err(DiameterError::AvpLength { code: 0 });
        };
        let code = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let len = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
        let header_len = if flags & AVP_VENDOR != 0 { 12 } else { 8 };
        if len < header_len || len > bytes.len() {
            return Err(DiameterError::AvpLength { code });
        }
        let vendor = if header_len == 12 {
            u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]])
        } else {
            0
        };
        avps.push(Avp { code, flags, vendor, data: bytes[header_len..len].to_vec() });
        let padded = len.div_ceil(4) * 4;
        bytes = bytes.get(padded..).unwrap_or(&[]);
    }
    Ok(avps)
}

fn write_avp(out: &mut Vec<u8>, avp: &Avp) {
    let vendor = avp.flags & AVP_VENDOR != 0;
    let len = if vendor { 12 } else { 8 } + avp.data.len();
    out.extend_from_slice(&avp.code.to_be_bytes());
    out.push(avp.flags);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(0x00FF_FFFF).to_be_bytes()[1..]);
    if vendor {
        out.extend_from_slice(&avp.vendor.to_be_bytes());
    }
    out.extend_from_slice(&avp.data);
    out.resize(out.len().div_ceil(4) * 4, 0);
}

/// Writes a message (its length computed).
pub fn encode(message: &Message) -> Vec<u8> {
    let mut out = vec![1, 0, 0, 0];
    out.extend_from_slice(&message.command.to_be_bytes());
    out[4] = message.flags;
    out.extend_from_slice(&message.application.to_be_bytes());
    out.extend_from_slice(&message.hop_by_hop.to_be_bytes());
    out.extend_from_slice(&message.end_to_end.to_be_bytes());
    for avp in &message.avps {
        write_avp(&mut out, avp);
    }
    let len = u32::try_from(out.len()).unwrap_or(0x00FF_FFFF).to_be_bytes();
    out[1..4].copy_from_slice(&len[1..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_grouped_and_vendor_avps_round_trips() {
        let vendor = Avp { code: 873, flags: AVP_VENDOR, vendor: 10415, data: b"abc".to_vec() };
        let message = Message {
            flags: FLAG_REQUEST | FLAG_PROXIABLE,
            command: 272,
            application: 4,
            hop_by_hop: 7,
            end_to_end: 9,
            avps: vec![
                Avp::text(263, "host;1;2"),
                Avp::grouped(456, &[Avp::u32(432, 1), Avp::grouped(437, &[Avp::u32(420, 60)])]),
                vendor.clone(),
            ],
        };
        let bytes = encode(&message);
        assert_eq!(bytes.len() % 4, 0);
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back, message);
        let mscc = back.avp(456).expect("MSCC").as_grouped().expect("grouped");
        assert_eq!(find(&mscc, 432).and_then(Avp::as_u32), Some(1));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut lying = bytes.clone();
        lying[HEADER_BYTES + 7] = 200; // Session-Id's length past the message.
        assert_eq!(decode(&lying), Err(DiameterError::AvpLength { code: 263 }));
    }
}
