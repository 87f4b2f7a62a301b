//! `wire_enum!`: the one way a wire enum (a numbered value that crosses the wire, the journal
//! or a report) is declared. From one list of `Variant = number => "NAME"` lines it makes the
//! enum with its `#[repr]`, `ALL` (every value, in the order written), the number→value
//! decoder as a `match` (the decoders were linear scans, and `ResultCode::from_u16` once cost
//! 23 % of SALE throughput), and `name()`. A number, its variant and its name can no longer
//! drift apart across three hand-written lists.

/// See the module documentation. `pub enum Name: repr, decoder { ... }`, where `repr` is the
/// integer type and `decoder` the name of the `fn(repr) -> Option<Name>` to generate.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident, $decoder:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $value:literal => $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in the order declared.
            pub const ALL: [$name; [$($value),+].len()] = [$(Self::$variant),+];

            /// The value for a number, or `None` for a number this version does not know.
            pub fn $decoder(value: $repr) -> Option<$name> {
                match value {
                    $( $value => Some(Self::$variant), )+
                    _ => None,
                }
            }

            /// The name used in PROTOCOL.md and in reports.
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $label, )+
                }
            }
        }
    };
}

pub(crate) use wire_enum;

#[cfg(test)]
mod tests {
    use crate::{BlockReason, CardState, Category, Field, Funding, MsgType, OpStatus, ResultCode};
    use std::collections::HashSet;

    /// Every value decodes from its own number, numbers and names are unique, and every other
    /// number of the type's range decodes to `None`.
    fn check<T: Copy + PartialEq + std::fmt::Debug>(
        all: &[T],
        number: impl Fn(T) -> u64,
        name: impl Fn(T) -> &'static str,
        decode: impl Fn(u64) -> Option<T>,
        range_max: u64,
    ) {
        let numbers: HashSet<u64> = all.iter().map(|value| number(*value)).collect();
        let names: HashSet<&str> = all.iter().map(|value| name(*value)).collect();
        assert_eq!(
            (numbers.len(), names.len()),
            (all.len(), all.len()),
            "numbers and names are unique"
        );
        for value in all {
            assert_eq!(decode(number(*value)), Some(*value));
        }
        for raw in 0..=range_max {
            assert_eq!(decode(raw).is_some(), numbers.contains(&raw), "number {raw}");
        }
    }

    #[test]
    fn every_wire_enum_decodes_exactly_its_own_numbers() {
        check(
            &ResultCode::ALL,
            |v| u64::from(v as u16),
            ResultCode::name,
            |n| ResultCode::from_u16(n as u16),
            1_100,
        );
        check(
            &MsgType::ALL,
            |v| u64::from(v as u16),
            MsgType::name,
            |n| MsgType::from_u16(n as u16),
            300,
        );
        check(&Field::ALL, |v| u64::from(v as u8), Field::name, |n| Field::from_u8(n as u8), 255);
        check(
            &Category::ALL,
            |v| u64::from(v as u8),
            Category::name,
            |n| Category::from_u8(n as u8),
            255,
        );
        check(
            &BlockReason::ALL,
            |v| u64::from(v as u8),
            BlockReason::name,
            |n| BlockReason::from_u8(n as u8),
            255,
        );
        check(
            &OpStatus::ALL,
            |v| u64::from(v as u8),
            OpStatus::name,
            |n| OpStatus::from_u8(n as u8),
            255,
        );
        check(
            &CardState::ALL,
            |v| u64::from(v as u8),
            CardState::name,
            |n| CardState::from_u8(n as u8),
            255,
        );
        check(
            &Funding::ALL,
            |v| u64::from(v as u8),
            Funding::name,
            |n| Funding::from_u8(n as u8),
            255,
        );
    }
}
