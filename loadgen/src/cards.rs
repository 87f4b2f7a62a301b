//! The cards file: every card `prepare` issued (PIN, password, face value, the balance the
//! switch must hold for it) plus the operations whose outcome was still unknown when the file
//! was written, so a later `validate` (say after a kill -9 and restart) can resolve them by
//! INQUIRY and check every balance. The file holds clear PINs and passwords: it is test data for
//! a test switch, never for real cards.
//!
//! Two encodings, chosen by the file name: `*.txt` is text (one line per card, for people and
//! scripts), anything else is compact binary: a 32-byte header, 48 bytes per card, 64 per
//! pending operation, and a CRC-32C of everything before it. Files are written to a temporary
//! name, fsynced and renamed, so a crash leaves the old file or the new one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use pinswitch_protocol::pin;

use crate::model::{Op, OpKind};
use crate::rng::splitmix64;

/// Longest password the switch accepts.
pub(crate) const PASSWORD_BYTES_MAX: usize = 16;
/// Shortest password the switch accepts.
pub(crate) const PASSWORD_BYTES_MIN: usize = 4;

/// A card password (4..=16 bytes), stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Password {
    len: u8,
    bytes: [u8; PASSWORD_BYTES_MAX],
}

impl Password {
    pub(crate) fn new(bytes: &[u8]) -> Option<Password> {
        if !(PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&bytes.len()) {
            return None;
        }
        let mut inline = [0u8; PASSWORD_BYTES_MAX];
        inline[..bytes.len()].copy_from_slice(bytes);
        let len = u8::try_from(bytes.len()).expect("at most PASSWORD_BYTES_MAX (16) bytes");
        Some(Password { len, bytes: inline })
    }

    /// The password `prepare` registers for a PIN: eight decimal digits mixed from the PIN, so
    /// a lost cards file line can be recomputed and no two neighbours share one.
    pub(crate) fn derive(pin: u64) -> Password {
        let mut mix = pin ^ 0x5053_4C47_5057_4431; // "PSLGPWD1"
        let digits = splitmix64(&mut mix) % 100_000_000;
        let text = format!("{digits:08}");
        Password::new(text.as_bytes()).unwrap_or(Password { len: 0, bytes: [0; 16] })
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub(crate) fn to_vec(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

/// One prepared card.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct CardRecord {
    pub pin: u64,
    pub password: Password,
    pub face_value_won: u64,
    /// What the switch must report as the card's balance (posted money, holds included).
    pub expected_balance_won: i64,
}

/// The whole file.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub(crate) struct CardsFile {
    pub cards: Vec<CardRecord>,
    /// Operations whose outcome is unknown; `Op::card` indexes `cards`.
    pub pending: Vec<Op>,
}

const MAGIC: &[u8; 8] = b"PSLGCRD1";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 32;
const CARD_BYTES: usize = 48;
const PENDING_BYTES: usize = 64;
const CRC_BYTES: usize = 4;
const TEXT_HEADER: &str = "# pinswitch-loadgen cards v1";

/// True when `path` selects the text encoding.
fn is_text(path: &Path) -> bool {
    path.extension().is_some_and(|extension| extension.eq_ignore_ascii_case("txt"))
}

/// Reads a cards file (either encoding).
pub(crate) fn read(path: &Path) -> anyhow::Result<CardsFile> {
    let bytes = fs::read(path).with_context(|| format!("reading cards file {}", path.display()))?;
    let file = if is_text(path) {
        let text = std::str::from_utf8(&bytes).context("the text cards file is not UTF-8")?;
        decode_text(text)
    } else {
        decode_binary(&bytes)
    };
    file.with_context(|| format!("cards file {}", path.display()))
}

/// Writes a cards file atomically (temporary file, fsync, rename).
pub(crate) fn write(path: &Path, file: &CardsFile) -> anyhow::Result<()> {
    let bytes = if is_text(path) { encode_text(file)?.into_bytes() } else { encode_binary(file) };
    let mut temporary = PathBuf::from(path);
    let mut name = path.file_name().map(|name| name.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    temporary.set_file_name(name);
    let result = (|| -> std::io::Result<()> {
        let mut out = fs::File::create(&temporary)?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result.with_context(|| format!("writing cards file {}", path.display()))
}

pub(crate) fn encode_binary(file: &CardsFile) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        HEADER_BYTES
            + file.cards.len() * CARD_BYTES
            + file.pending.len() * PENDING_BYTES
            + CRC_BYTES,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flags, reserved
    out.extend_from_slice(&(file.cards.len() as u64).to_le_bytes());
    out.extend_from_slice(&(file.pending.len() as u64).to_le_bytes());
    for card in &file.cards {
        out.extend_from_slice(&card.pin.to_le_bytes());
        out.extend_from_slice(&card.face_value_won.to_le_bytes());
        out.extend_from_slice(&card.expected_balance_won.to_le_bytes());
        out.push(card.password.len);
        out.extend_from_slice(&card.password.bytes);
        out.extend_from_slice(&[0u8; 7]);
    }
    for op in &file.pending {
        out.extend_from_slice(&op.card.to_le_bytes());
        out.push(op.kind as u8);
        out.extend_from_slice(&[0u8; 3]);
        out.extend_from_slice(&op.amount_won.to_le_bytes());
        out.extend_from_slice(&op.captured_won.to_le_bytes());
        out.extend_from_slice(&op.op_id.to_le_bytes());
        out.extend_from_slice(&op.reference.to_le_bytes());
        out.extend_from_slice(&[0u8; 8]);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Little-endian field reader over a checked slice.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.at..self.at + N]);
        self.at += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }
    fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.take())
    }
    fn skip(&mut self, count: usize) {
        self.at += count;
    }
}

/// A card's index in the cards file (or a count of its cards) as the model and the workload
/// number cards: `decode_binary` refuses a file of more than `u32::MAX` cards, so it fits.
pub(crate) fn card_index(index: usize) -> u32 {
    u32::try_from(index).expect("a cards file holds at most u32::MAX cards")
}

pub(crate) fn decode_binary(bytes: &[u8]) -> anyhow::Result<CardsFile> {
    ensure!(bytes.len() >= HEADER_BYTES + CRC_BYTES, "too short for a cards file");
    ensure!(&bytes[..8] == MAGIC, "not a pinswitch-loadgen cards file (bad magic)");
    let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
    let stored_crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    ensure!(crc32c::crc32c(body) == stored_crc, "checksum mismatch: the file is damaged");
    let mut fields = Fields { bytes: body, at: 8 };
    let version = fields.u32();
    ensure!(version == FORMAT_VERSION, "unsupported cards file version {version}");
    fields.skip(4);
    let card_count = fields.u64();
    let pending_count = fields.u64();
    let expected_len = card_count
        .checked_mul(CARD_BYTES as u64)
        .and_then(|cards| cards.checked_add(pending_count.checked_mul(PENDING_BYTES as u64)?))
        .and_then(|records| records.checked_add(HEADER_BYTES as u64));
    ensure!(
        expected_len == Some(body.len() as u64),
        "length {} does not match {card_count} cards and {pending_count} pending operations",
        bytes.len()
    );
    ensure!(card_count <= u64::from(u32::MAX), "too many cards");
    // The length check bounds both counts by the file's size, so they fit a usize.
    let mut file = CardsFile {
        cards: Vec::with_capacity(usize::try_from(card_count)?),
        pending: Vec::with_capacity(usize::try_from(pending_count)?),
    };
    for index in 0..card_count {
        let pin = fields.u64();
        let face_value_won = fields.u64();
        let expected_balance_won = fields.i64();
        let password_len = usize::from(fields.u8());
        let password_bytes: [u8; PASSWORD_BYTES_MAX] = fields.take();
        fields.skip(7);
        ensure!(pin::is_valid(pin), "card {index}: invalid PIN");
        let password = password_bytes
            .get(..password_len)
            .and_then(Password::new)
            .with_context(|| format!("card {index}: invalid password length {password_len}"))?;
        file.cards.push(CardRecord { pin, password, face_value_won, expected_balance_won });
    }
    for index in 0..pending_count {
        let card = fields.u32();
        let kind = fields.u8();
        fields.skip(3);
        let amount_won = fields.u64();
        let captured_won = fields.u64();
        let op_id = fields.u128();
        let reference = fields.u128();
        fields.skip(8);
        let kind = OpKind::from_u8(kind)
            .with_context(|| format!("pending operation {index}: unknown kind {kind}"))?;
        ensure!(u64::from(card) < card_count, "pending operation {index}: no card {card}");
        file.pending.push(Op {
            kind,
            card,
            op_id,
            amount_won,
            captured_won,
            reference,
            gateway: false,
        });
    }
    Ok(file)
}

pub(crate) fn encode_text(file: &CardsFile) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64 + file.cards.len() * 56 + file.pending.len() * 120);
    out.push_str(TEXT_HEADER);
    out.push('\n');
    out.push_str("# card PIN PASSWORD FACE_VALUE_WON EXPECTED_BALANCE_WON\n");
    out.push_str("# pending CARD_INDEX KIND OP_ID AMOUNT_WON CAPTURED_WON REFERENCE\n");
    for card in &file.cards {
        let password = std::str::from_utf8(card.password.as_bytes())
            .ok()
            .filter(|text| text.bytes().all(|byte| byte.is_ascii_graphic()))
            .context("a password is not printable; use a binary cards file")?;
        let _ = writeln!(
            out,
            "card {:016} {password} {} {}",
            card.pin, card.face_value_won, card.expected_balance_won
        );
    }
    for op in &file.pending {
        let _ = writeln!(
            out,
            "pending {} {} {:032x} {} {} {:032x}",
            op.card,
            op.kind.name(),
            op.op_id,
            op.amount_won,
            op.captured_won,
            op.reference
        );
    }
    Ok(out)
}

pub(crate) fn decode_text(text: &str) -> anyhow::Result<CardsFile> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, first)) if first.trim() == TEXT_HEADER => {}
        _ => bail!("not a pinswitch-loadgen text cards file (first line must be {TEXT_HEADER:?})"),
    }
    let mut file = CardsFile::default();
    for (number, line) in lines {
        let line_number = number + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_ascii_whitespace().collect();
        let parsed = match parts.as_slice() {
            ["card", pin_text, password, face, expected] => {
                let pin = pin::parse(pin_text).filter(|pin| pin::is_valid(*pin));
                let card =
                    pin.zip(Password::new(password.as_bytes())).and_then(|(pin, password)| {
                        Some(CardRecord {
                            pin,
                            password,
                            face_value_won: face.parse().ok()?,
                            expected_balance_won: expected.parse().ok()?,
                        })
                    });
                card.map(|card| file.cards.push(card))
            }
            ["pending", card, kind, op_id, amount, captured, reference] => {
                let op = (|| {
                    Some(Op {
                        card: card.parse().ok()?,
                        kind: OpKind::from_name(kind)?,
                        op_id: u128::from_str_radix(op_id, 16).ok()?,
                        amount_won: amount.parse().ok()?,
                        captured_won: captured.parse().ok()?,
                        reference: u128::from_str_radix(reference, 16).ok()?,
                        gateway: false,
                    })
                })();
                op.map(|op| file.pending.push(op))
            }
            _ => None,
        };
        if parsed.is_none() {
            bail!("line {line_number}: cannot parse {line:?}");
        }
    }
    for op in &file.pending {
        ensure!(
            (op.card as usize) < file.cards.len(),
            "pending operation names no card {}",
            op.card
        );
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CardsFile {
        let cards = (0..50u64)
            .map(|index| {
                let pin = pin::with_check_digit(123_456_789_000_000 + index * 7919);
                CardRecord {
                    pin,
                    password: Password::derive(pin),
                    face_value_won: 10_000,
                    expected_balance_won: 10_000 - index as i64 * 37,
                }
            })
            .collect();
        let pending = vec![
            Op {
                kind: OpKind::Capture,
                card: 3,
                op_id: u128::MAX - 5,
                amount_won: 1_000,
                captured_won: 400,
                reference: 77,
                gateway: false,
            },
            Op {
                kind: OpKind::Sale,
                card: 49,
                op_id: 1,
                amount_won: 10,
                captured_won: 0,
                reference: 0,
                gateway: false,
            },
        ];
        CardsFile { cards, pending }
    }

    #[test]
    fn binary_round_trip_and_damage_is_caught() {
        let file = sample();
        let bytes = encode_binary(&file);
        assert_eq!(bytes.len(), HEADER_BYTES + 50 * CARD_BYTES + 2 * PENDING_BYTES + CRC_BYTES);
        assert_eq!(decode_binary(&bytes).expect("decodes"), file);
        let mut damaged = bytes.clone();
        damaged[HEADER_BYTES + 10] ^= 1;
        assert!(decode_binary(&damaged).is_err());
        assert!(decode_binary(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_binary(b"nonsense").is_err());
        let empty = CardsFile::default();
        assert_eq!(decode_binary(&encode_binary(&empty)).expect("empty"), empty);
    }

    #[test]
    fn text_round_trip_and_errors() {
        let file = sample();
        let text = encode_text(&file).expect("encodes");
        assert_eq!(decode_text(&text).expect("decodes"), file);
        assert!(decode_text("card 1 2 3 4").is_err());
        let bad = format!("{TEXT_HEADER}\ncard 1234 pw 1 2\n");
        assert!(decode_text(&bad).is_err());
    }

    #[test]
    fn files_round_trip_through_disk_in_both_encodings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = sample();
        for name in ["cards.bin", "cards.txt"] {
            let path = dir.path().join(name);
            write(&path, &file).expect("write");
            assert_eq!(read(&path).expect("read"), file);
        }
    }

    #[test]
    fn derived_passwords_are_valid_and_stable() {
        let pin = pin::with_check_digit(987_654_321_012_345);
        let password = Password::derive(pin);
        assert_eq!(password, Password::derive(pin));
        assert_eq!(password.as_bytes().len(), 8);
        assert!(password.as_bytes().iter().all(u8::is_ascii_digit));
        assert_ne!(password, Password::derive(pin::with_check_digit(987_654_321_012_346)));
        assert!(Password::new(b"abc").is_none());
        assert!(Password::new(&[b'x'; 17]).is_none());
    }
}
