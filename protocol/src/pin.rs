//! PIN numbers as people type them: 16 digits whose last digit is a Luhn check digit. The check
//! digit catches typos before they cost a password try; it is not a security control (the PIN's
//! 15 random digits and the password lockout are). Shared by the server, the CLI and clients.

/// Largest 16-digit number.
pub const PIN_MAX: u64 = 9_999_999_999_999_999;

/// The Luhn check digit for a 15-digit body (`body < 10^15`).
pub fn check_digit(body: u64) -> u8 {
    assert!(body < 1_000_000_000_000_000, "a PIN body has 15 digits");
    // Luhn: double every second digit starting from the rightmost digit of the body, because
    // the check digit will sit to its right.
    let mut sum = 0u32;
    let mut rest = body;
    let mut double = true;
    for _ in 0..15 {
        let mut digit = (rest % 10) as u32;
        rest /= 10;
        if double {
            digit *= 2;
            if digit > 9 {
                digit -= 9;
            }
        }
        sum += digit;
        double = !double;
    }
    ((10 - sum % 10) % 10) as u8
}

/// Appends the check digit to a 15-digit body.
pub fn with_check_digit(body: u64) -> u64 {
    body * 10 + u64::from(check_digit(body))
}

/// True when `pin` has at most 16 digits and its last digit checks.
pub fn is_valid(pin: u64) -> bool {
    pin <= PIN_MAX && check_digit(pin / 10) == (pin % 10) as u8
}

/// Shows a PIN as people read it: `1234-5678-9012-3452`.
pub fn format(pin: u64) -> String {
    let digits = format!("{pin:016}");
    format!("{}-{}-{}-{}", &digits[0..4], &digits[4..8], &digits[8..12], &digits[12..16])
}

/// Parses 16 digits, allowing `-` and spaces between them. Does not check the check digit.
pub fn parse(text: &str) -> Option<u64> {
    let mut value = 0u64;
    let mut digits = 0;
    for ch in text.chars() {
        match ch {
            '0'..='9' => {
                digits += 1;
                if digits > 16 {
                    return None;
                }
                value = value * 10 + u64::from(ch as u8 - b'0');
            }
            '-' | ' ' => {}
            _ => return None,
        }
    }
    (digits == 16).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_luhn_vectors() {
        // 4539 1488 0343 6467 is a well-known valid Luhn test number.
        assert!(is_valid(4_539_148_803_436_467));
        assert!(!is_valid(4_539_148_803_436_468));
        assert_eq!(with_check_digit(453_914_880_343_646), 4_539_148_803_436_467);
    }

    #[test]
    fn every_single_digit_typo_is_caught() {
        let pin = with_check_digit(123_456_789_012_345);
        let text = format!("{pin:016}");
        for position in 0..16 {
            for replacement in b'0'..=b'9' {
                let mut bytes = text.clone().into_bytes();
                if bytes[position] == replacement {
                    continue;
                }
                bytes[position] = replacement;
                let typo = parse(std::str::from_utf8(&bytes).expect("ascii")).expect("16 digits");
                assert!(!is_valid(typo), "typo at {position} not caught");
            }
        }
    }

    #[test]
    fn format_and_parse_round_trip() {
        let pin = with_check_digit(42);
        assert_eq!(format(pin), "0000-0000-0000-0422");
        assert_eq!(parse(&format(pin)), Some(pin));
        assert_eq!(parse("1234"), None);
        assert_eq!(parse("12345678901234567"), None);
        assert_eq!(parse("1234-5678-9012-345x"), None);
    }
}
