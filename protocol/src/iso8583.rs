//! ISO 8583:1987 messages as acquirers and gateways send them: a four-digit message type
//! indicator (MTI), a primary bitmap (and a secondary one when bit 1 is set), then the data
//! elements the bitmaps name, in order. The length of every data element is the standard's
//! (fixed, LLVAR or LLLVAR with ASCII length digits); two encodings of the rest exist here,
//! chosen per listener: `Ascii` (bitmaps as 16 hex digits, the binary elements as hex text: the
//! `default_ascii` specification of pyiso8583) and `Binary` (bitmaps and the binary elements as
//! raw bytes, every other element ASCII: pyiso8583's `default`). The binary elements (52 PIN
//! block, 55 ICC data, 64/128 MAC, 65 extended bitmap, 96 message security code) are held as raw
//! bytes either way, so the front end reads one form. protocol/ISO8583.md tabulates every
//! element this switch reads or writes. The 2-byte big-endian length prefix that frames each
//! message on TCP is the server's business, not this codec's. Pure and panic-free on any input:
//! the fuzz target and tests/garbage drive it.

use thiserror::Error;

/// The highest data element number (a secondary bitmap reaches 65..=128).
pub const ELEMENTS_MAX: u8 = 128;

/// How bitmaps and binary elements are written (the rest is ASCII in both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Hex-digit bitmaps and binary elements as hex text (pyiso8583 `default_ascii`).
    Ascii,
    /// Raw 8-byte bitmaps and binary elements as raw bytes (pyiso8583 `default`).
    Binary,
}

/// How an element's length is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Length {
    Fixed,
    /// Two ASCII length digits first.
    LlVar,
    /// Three ASCII length digits first.
    LllVar,
}

/// One element's definition: its length rule, its longest value (bytes; for a binary element,
/// bytes of the raw value, so twice as many hex digits in `Ascii`), and whether it is binary.
#[derive(Clone, Copy, Debug)]
struct Spec {
    length: Length,
    max: u16,
    binary: bool,
}

const fn fixed(max: u16) -> Spec {
    Spec { length: Length::Fixed, max, binary: false }
}
const fn ll(max: u16) -> Spec {
    Spec { length: Length::LlVar, max, binary: false }
}
const fn lll(max: u16) -> Spec {
    Spec { length: Length::LllVar, max, binary: false }
}
const fn bin(max: u16) -> Spec {
    Spec { length: Length::Fixed, max, binary: true }
}
const fn lll_bin(max: u16) -> Spec {
    Spec { length: Length::LllVar, max, binary: true }
}

/// ISO 8583:1987's data elements 1..=128 (index 0 unused; 1 is the secondary bitmap, read by
/// the bitmap code, never as data).
const SPECS: [Spec; 129] = [
    fixed(0),
    bin(8),
    ll(19),
    fixed(6),
    fixed(12),
    fixed(12),
    fixed(12),
    fixed(10),
    fixed(8),
    fixed(8),
    fixed(8),
    fixed(6),
    fixed(6),
    fixed(4),
    fixed(4),
    fixed(4),
    fixed(4),
    fixed(4),
    fixed(4),
    fixed(3),
    fixed(3),
    fixed(3),
    fixed(3),
    fixed(3),
    fixed(3),
    fixed(2),
    fixed(2),
    fixed(1),
    fixed(9),
    fixed(9),
    fixed(9),
    fixed(9),
    ll(11),
    ll(11),
    ll(28),
    ll(37),
    lll(104),
    fixed(12),
    fixed(6),
    fixed(2),
    fixed(3),
    fixed(8),
    fixed(15),
    fixed(40),
    ll(25),
    ll(76),
    lll(999),
    lll(999),
    lll(999),
    fixed(3),
    fixed(3),
    fixed(3),
    bin(8),
    fixed(16),
    lll(240),
    lll_bin(255),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    bin(8),
    bin(8),
    fixed(1),
    fixed(2),
    fixed(3),
    fixed(3),
    fixed(3),
    fixed(4),
    fixed(4),
    fixed(6),
    fixed(10),
    fixed(10),
    fixed(10),
    fixed(10),
    fixed(10),
    fixed(10),
    fixed(10),
    fixed(10),
    fixed(12),
    fixed(12),
    fixed(12),
    fixed(12),
    fixed(16),
    fixed(16),
    fixed(16),
    fixed(16),
    fixed(42),
    fixed(1),
    fixed(2),
    fixed(5),
    fixed(7),
    fixed(42),
    bin(8),
    fixed(17),
    fixed(25),
    ll(11),
    ll(11),
    ll(17),
    ll(28),
    ll(28),
    lll(100),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    lll(999),
    bin(8),
];

/// Why bytes are not an ISO 8583 message (or a message cannot be written). `mti` is the message
/// type when it could be read, so the front end can still answer with a format error.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Iso8583Error {
    #[error("the message type indicator is not four digits")]
    BadMti,
    #[error("the bitmap is not {0}")]
    BadBitmap(&'static str),
    #[error("element {element} is cut off")]
    Truncated { mti: [u8; 4], element: u8 },
    #[error("element {element}'s length is not {digits} digits")]
    BadLength { mti: [u8; 4], element: u8, digits: usize },
    #[error("element {element} is {len} long, more than its {max}")]
    TooLong { mti: [u8; 4], element: u8, len: usize, max: usize },
    #[error("element {element} is not hex digits")]
    BadHex { mti: [u8; 4], element: u8 },
    #[error("{0} bytes follow the last element")]
    Trailing(usize),
    #[error("element {element} cannot be written: {why}")]
    Unwritable { element: u8, why: &'static str },
}

impl Iso8583Error {
    /// The message type of the message in error, when it was read.
    pub fn mti(&self) -> Option<[u8; 4]> {
        match self {
            Iso8583Error::Truncated { mti, .. }
            | Iso8583Error::BadLength { mti, .. }
            | Iso8583Error::TooLong { mti, .. }
            | Iso8583Error::BadHex { mti, .. } => Some(*mti),
            _ => None,
        }
    }
}

/// One message: its type and its data elements, in element order (binary ones as raw bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub mti: [u8; 4],
    elements: Vec<(u8, Vec<u8>)>,
}

impl Message {
    pub fn new(mti: [u8; 4]) -> Message {
        Message { mti, elements: Vec::new() }
    }

    /// Element `number`'s value.
    pub fn get(&self, number: u8) -> Option<&[u8]> {
        self.elements.iter().find(|(at, _)| *at == number).map(|(_, value)| value.as_slice())
    }

    /// Sets (or replaces) element `number`.
    pub fn set(&mut self, number: u8, value: Vec<u8>) {
        match self.elements.binary_search_by_key(&number, |(at, _)| *at) {
            Ok(at) => self.elements[at].1 = value,
            Err(at) => self.elements.insert(at, (number, value)),
        }
    }

    /// The element numbers present, ascending.
    pub fn numbers(&self) -> impl Iterator<Item = u8> + '_ {
        self.elements.iter().map(|(number, _)| *number)
    }
}

/// Reads one whole message (the bytes inside the TCP length prefix).
pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<Message, Iso8583Error> {
    let mti: [u8; 4] = bytes
        .get(..4)
        .and_then(|mti| <[u8; 4]>::try_from(mti).ok())
        .filter(|mti| mti.iter().all(u8::is_ascii_digit))
        .ok_or(Iso8583Error::BadMti)?;
    let mut at = 4;
    let primary = read_bitmap(bytes, &mut at, encoding)?;
    let secondary =
        if primary & (1 << 63) != 0 { read_bitmap(bytes, &mut at, encoding)? } else { 0 };
    let mut message = Message::new(mti);
    for number in 2..=ELEMENTS_MAX {
        let bit = if number <= 64 {
            primary & (1 << (64 - u32::from(number)))
        } else {
            secondary & (1 << (128 - u32::from(number)))
        };
        if bit == 0 {
            continue;
        }
        let value = read_element(bytes, &mut at, number, encoding, mti)?;
        message.elements.push((number, value));
    }
    if at != bytes.len() {
        return Err(Iso8583Error::Trailing(bytes.len() - at));
    }
    Ok(message)
}

fn read_bitmap(bytes: &[u8], at: &mut usize, encoding: Encoding) -> Result<u64, Iso8583Error> {
    match encoding {
        Encoding::Binary => {
            let raw = bytes.get(*at..*at + 8).ok_or(Iso8583Error::BadBitmap("8 bytes"))?;
            *at += 8;
            Ok(u64::from_be_bytes(
                <[u8; 8]>::try_from(raw).map_err(|_| Iso8583Error::BadBitmap("8 bytes"))?,
            ))
        }
        Encoding::Ascii => {
            let text = bytes.get(*at..*at + 16).ok_or(Iso8583Error::BadBitmap("16 hex digits"))?;
            let text = std::str::from_utf8(text).map_err(|_| Iso8583Error::BadBitmap("hex"))?;
            let bitmap = u64::from_str_radix(text, 16)
                .ok()
                .filter(|_| text.bytes().all(|byte| byte.is_ascii_hexdigit()))
                .ok_or(Iso8583Error::BadBitmap("16 hex digits"))?;
            *at += 16;
            Ok(bitmap)
        }
    }
}

fn read_element(
    bytes: &[u8],
    at: &mut usize,
    number: u8,
    encoding: Encoding,
    mti: [u8; 4],
) -> Result<Vec<u8>, Iso8583Error> {
    let spec = SPECS[usize::from(number)];
    // In `Ascii` a binary element is written as two hex digits a byte.
    let hex = spec.binary && encoding == Encoding::Ascii;
    let scale = if hex { 2 } else { 1 };
    let max = usize::from(spec.max) * scale;
    let len = match spec.length {
        Length::Fixed => max,
        Length::LlVar | Length::LllVar => {
            let digits = if spec.length == Length::LlVar { 2 } else { 3 };
            let text = bytes
                .get(*at..*at + digits)
                .ok_or(Iso8583Error::Truncated { mti, element: number })?;
            if !text.iter().all(u8::is_ascii_digit) {
                return Err(Iso8583Error::BadLength { mti, element: number, digits });
            }
            *at += digits;
            let len = text.iter().fold(0usize, |len, digit| len * 10 + usize::from(digit - b'0'));
            if len > max {
                return Err(Iso8583Error::TooLong { mti, element: number, len, max });
            }
            len
        }
    };
    let raw = bytes.get(*at..*at + len).ok_or(Iso8583Error::Truncated { mti, element: number })?;
    *at += len;
    if !hex {
        return Ok(raw.to_vec());
    }
    if len % 2 != 0 {
        return Err(Iso8583Error::BadHex { mti, element: number });
    }
    raw.chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok().filter(|_| pair.iter().all(u8::is_ascii_hexdigit))
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or(Iso8583Error::BadHex { mti, element: number })
}

/// Writes a message; a value that breaks its element's length rule is refused, never cut.
pub fn encode(message: &Message, encoding: Encoding) -> Result<Vec<u8>, Iso8583Error> {
    let mut primary = 0u64;
    let mut secondary = 0u64;
    for (number, _) in &message.elements {
        match *number {
            2..=64 => primary |= 1 << (64 - u32::from(*number)),
            65..=128 => secondary |= 1 << (128 - u32::from(*number)),
            _ => return Err(Iso8583Error::Unwritable { element: *number, why: "no such element" }),
        }
    }
    if secondary != 0 {
        primary |= 1 << 63;
    }
    let mut out = message.mti.to_vec();
    write_bitmap(&mut out, primary, encoding);
    if secondary != 0 {
        write_bitmap(&mut out, secondary, encoding);
    }
    for (number, value) in &message.elements {
        let spec = SPECS[usize::from(*number)];
        let hex = spec.binary && encoding == Encoding::Ascii;
        let written: Vec<u8> = if hex {
            value.iter().flat_map(|byte| format!("{byte:02X}").into_bytes()).collect()
        } else {
            value.clone()
        };
        let max = usize::from(spec.max) * if hex { 2 } else { 1 };
        match spec.length {
            Length::Fixed if written.len() != max => {
                return Err(Iso8583Error::Unwritable {
                    element: *number,
                    why: "not its fixed length",
                });
            }
            Length::Fixed => {}
            _ if written.len() > max => {
                return Err(Iso8583Error::Unwritable { element: *number, why: "too long" });
            }
            Length::LlVar => out.extend_from_slice(format!("{:02}", written.len()).as_bytes()),
            Length::LllVar => out.extend_from_slice(format!("{:03}", written.len()).as_bytes()),
        }
        out.extend_from_slice(&written);
    }
    Ok(out)
}

fn write_bitmap(out: &mut Vec<u8>, bitmap: u64, encoding: Encoding) {
    match encoding {
        Encoding::Binary => out.extend_from_slice(&bitmap.to_be_bytes()),
        Encoding::Ascii => out.extend_from_slice(format!("{bitmap:016X}").as_bytes()),
    }
}

/// The fixed length of element `number` as this encoding writes it (`None`: variable).
pub fn fixed_len(number: u8, encoding: Encoding) -> Option<usize> {
    let spec = SPECS.get(usize::from(number))?;
    let scale = if spec.binary && encoding == Encoding::Ascii { 2 } else { 1 };
    (spec.length == Length::Fixed).then(|| usize::from(spec.max) * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale() -> Message {
        let mut message = Message::new(*b"0200");
        message.set(2, b"1234567890123452".to_vec());
        message.set(3, b"000000".to_vec());
        message.set(4, b"000000001000".to_vec());
        message.set(11, b"000001".to_vec());
        message.set(52, vec![0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE, 0xF0]);
        message.set(90, b"020000000100000000000000000000000000000000".to_vec());
        message
    }

    #[test]
    fn both_encodings_round_trip_with_a_secondary_bitmap() {
        for encoding in [Encoding::Ascii, Encoding::Binary] {
            let bytes = encode(&sale(), encoding).expect("encodes");
            assert_eq!(decode(&bytes, encoding), Ok(sale()), "{encoding:?}");
        }
        let ascii = encode(&sale(), Encoding::Ascii).expect("encodes");
        // Bits 1 (secondary), 2, 3, 4, 11 and 52; then bit 90 of the secondary bitmap.
        assert_eq!(&ascii[..36], b"0200F0200000000010000000004000000000" as &[u8]);
        assert!(ascii.windows(16).any(|window| window == b"123456789ABCDEF0"));
    }

    #[test]
    fn bad_input_is_named_never_a_panic() {
        let good = encode(&sale(), Encoding::Ascii).expect("encodes");
        assert_eq!(decode(b"02x0", Encoding::Ascii), Err(Iso8583Error::BadMti));
        assert!(matches!(decode(b"0200ZZZZ", Encoding::Ascii), Err(Iso8583Error::BadBitmap(_))));
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], Encoding::Ascii).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(b'0');
        assert_eq!(decode(&long, Encoding::Ascii), Err(Iso8583Error::Trailing(1)));
        // Element 2's LL length says 20, over its 19.
        let mut message = Message::new(*b"0200");
        message.set(2, b"1234".to_vec());
        let mut bytes = encode(&message, Encoding::Ascii).expect("encodes");
        bytes[20..22].copy_from_slice(b"20");
        assert!(matches!(
            decode(&bytes, Encoding::Ascii),
            Err(Iso8583Error::TooLong { element: 2, len: 20, max: 19, .. })
        ));
        let mut fixed_wrong = Message::new(*b"0200");
        fixed_wrong.set(3, b"00".to_vec());
        assert!(encode(&fixed_wrong, Encoding::Ascii).is_err());
        // Every byte string of a few lengths: an answer, never a panic.
        let mut state = 0x1234_5678u32;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (state >> 16) as u8
                })
                .collect();
            let _ = decode(&bytes, Encoding::Ascii);
            let _ = decode(&bytes, Encoding::Binary);
        }
    }
}
