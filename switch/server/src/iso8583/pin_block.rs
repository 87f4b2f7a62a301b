//! The card's password as ISO 8583 carries it: DE 52, a PIN block of ISO 9564 format 0 (the
//! password's digits beside its length, XORed with twelve digits of the card number) encrypted
//! under the zone PIN key this switch shares with the acquirer (double- or triple-length
//! triple DES, ECB over the one 8-byte block). The clear password exists in memory only from
//! here until the front end MACs it, as on the native protocol. `Clear` reads the block
//! unencrypted: for test links only, and only where `[iso8583] pin_block = "clear"` says so.

#[cfg(test)]
use des::cipher::BlockEncrypt;
use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockDecrypt, KeyInit};

/// The shortest and longest PIN a format-0 block holds.
const PIN_DIGITS_MIN: usize = 4;
const PIN_DIGITS_MAX: usize = 12;

/// How DE 52 is protected on this link. No `Debug`: it holds the key.
pub(crate) enum PinKey {
    Clear,
    Double(Box<des::TdesEde2>),
    Triple(Box<des::TdesEde3>),
}

impl PinKey {
    /// A zone PIN key from its hex digits (32: double length, 48: triple length).
    pub(crate) fn from_hex(text: &str) -> Result<PinKey, String> {
        let text: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        if !text.bytes().all(|byte| byte.is_ascii_hexdigit()) || !text.len().is_multiple_of(2) {
            return Err("the zone PIN key is not hex digits".into());
        }
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .filter_map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
            .collect();
        match bytes.len() {
            16 => des::TdesEde2::new_from_slice(&bytes)
                .map(|key| PinKey::Double(Box::new(key)))
                .map_err(|_| "a double-length key is 16 bytes".into()),
            24 => des::TdesEde3::new_from_slice(&bytes)
                .map(|key| PinKey::Triple(Box::new(key)))
                .map_err(|_| "a triple-length key is 24 bytes".into()),
            other => Err(format!(
                "the zone PIN key is {other} bytes; triple DES takes 16 (double length) or 24"
            )),
        }
    }

    fn decrypt(&self, block: &mut [u8; 8]) {
        let block = GenericArray::from_mut_slice(block);
        match self {
            PinKey::Clear => {}
            PinKey::Double(key) => key.decrypt_block(block),
            PinKey::Triple(key) => key.decrypt_block(block),
        }
    }

    #[cfg(test)]
    fn encrypt(&self, block: &mut [u8; 8]) {
        let block = GenericArray::from_mut_slice(block);
        match self {
            PinKey::Clear => {}
            PinKey::Double(key) => key.encrypt_block(block),
            PinKey::Triple(key) => key.encrypt_block(block),
        }
    }
}

/// Format 0's account field: four zero digits, then the twelve digits of the card number left
/// of its check digit (`None` for a card number of under 13 digits).
fn account_field(pan: &[u8]) -> Option<[u8; 8]> {
    if pan.len() < 13 || !pan.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = &pan[pan.len() - 13..pan.len() - 1];
    let mut field = [0u8; 8];
    for (at, pair) in digits.chunks(2).enumerate() {
        field[2 + at] = ((pair[0] - b'0') << 4) | (pair[1] - b'0');
    }
    Some(field)
}

/// The password (its ASCII digits) in a DE 52 block for card number `pan`, or `None` when the
/// block does not decode as format 0 (a wrong key, or not format 0).
pub(crate) fn password(block: &[u8], pan: &[u8], key: &PinKey) -> Option<Vec<u8>> {
    let mut clear: [u8; 8] = block.try_into().ok()?;
    key.decrypt(&mut clear);
    let account = account_field(pan)?;
    let nibbles: Vec<u8> = clear
        .iter()
        .zip(account)
        .flat_map(|(byte, mask)| {
            let byte = byte ^ mask;
            [byte >> 4, byte & 0x0F]
        })
        .collect();
    let digits = usize::from(nibbles[1]);
    if nibbles[0] != 0 || !(PIN_DIGITS_MIN..=PIN_DIGITS_MAX).contains(&digits) {
        return None;
    }
    let (pin, fill) = nibbles[2..].split_at(digits);
    if pin.iter().any(|nibble| *nibble > 9) || fill.iter().any(|nibble| *nibble != 0x0F) {
        return None;
    }
    Some(pin.iter().map(|digit| b'0' + digit).collect())
}

/// The DE 52 block of `pin` (ASCII digits) for card number `pan` (the acquirer's side; tests).
#[cfg(test)]
pub(crate) fn block(pin: &[u8], pan: &[u8], key: &PinKey) -> Option<[u8; 8]> {
    if !(PIN_DIGITS_MIN..=PIN_DIGITS_MAX).contains(&pin.len())
        || !pin.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let mut nibbles = vec![0u8, u8::try_from(pin.len()).ok()?];
    nibbles.extend(pin.iter().map(|digit| digit - b'0'));
    nibbles.resize(16, 0x0F);
    let account = account_field(pan)?;
    let mut block = [0u8; 8];
    for (at, pair) in nibbles.chunks(2).enumerate() {
        block[at] = ((pair[0] << 4) | pair[1]) ^ account[at];
    }
    key.encrypt(&mut block);
    Some(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_format_0_block_is_the_standard_one() {
        // PIN 1234 on card 4111111111111111: 041234FFFFFFFFFF XOR 0000111111111111.
        let block = block(b"1234", b"4111111111111111", &PinKey::Clear).expect("a block");
        assert_eq!(block, [0x04, 0x12, 0x25, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE]);
        assert_eq!(password(&block, b"4111111111111111", &PinKey::Clear), Some(b"1234".to_vec()));
    }

    #[test]
    fn under_a_zone_key_only_that_key_reads_the_password() {
        let key = PinKey::from_hex("0123456789ABCDEF FEDCBA9876543210").expect("a double key");
        let other = PinKey::from_hex(&"11".repeat(24)).expect("a triple key");
        let pan = b"1000000000000009";
        let block = block(b"98765432", pan, &key).expect("a block");
        assert_eq!(password(&block, pan, &key), Some(b"98765432".to_vec()));
        assert_ne!(password(&block, pan, &other), Some(b"98765432".to_vec()));
        assert_eq!(password(&block, b"1000000000000017", &key), None, "another card's block");
        assert!(PinKey::from_hex("0123").is_err() && PinKey::from_hex("zz").is_err());
        assert_eq!(password(&[0; 7], pan, &key), None);
    }
}
