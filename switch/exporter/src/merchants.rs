//! The merchant (associate) registry: the names and service categories under which merchants
//! are registered, given to the exporter as a CSV file (`--merchants FILE`), so statements show
//! names instead of ids. CSV was chosen over TOML because the registry is a table an operator
//! exports from a spreadsheet or a partner database, one merchant a line:
//!
//! ```text
//! merchant_id,name,category
//! 77,e-lotto,1
//! 78,"Flower delivery service ""Flower Land""",1
//! ```
//!
//! A name is 1 to 64 bytes of UTF-8 (quoted when it holds a comma or a quote, quotes doubled);
//! the category is a `Category` number (1..=6). Names are looked up when a statement is made, so
//! renaming a merchant renames it in every statement. An id missing from the registry is shown
//! as `merchant {id}`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{ExportError, Result};

/// Longest merchant name, in bytes (it travels in every detail line of a STATEMENT answer).
pub const MERCHANT_NAME_BYTES_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merchant {
    pub name: String,
    /// The service category the merchant is registered for (`Category` 1..=6).
    pub category: u8,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MerchantRegistry {
    merchants: BTreeMap<u64, Merchant>,
}

impl MerchantRegistry {
    /// The registry in `path`, or an empty one.
    pub fn load(path: Option<&Path>) -> Result<MerchantRegistry> {
        let Some(path) = path else { return Ok(MerchantRegistry::default()) };
        let text = std::fs::read_to_string(path)
            .map_err(ExportError::io(path, "read merchant registry"))?;
        MerchantRegistry::parse(&text)
            .map_err(|why| ExportError::Config(format!("{}: {why}", path.display())))
    }

    /// Parses the CSV text (header `merchant_id,name,category`).
    pub fn parse(text: &str) -> std::result::Result<MerchantRegistry, String> {
        let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
        match lines.next() {
            Some((_, header))
                if split_csv(header).as_deref()
                    == Ok(&["merchant_id".to_string(), "name".into(), "category".into()][..]) => {}
            _ => return Err("the first line must be the header merchant_id,name,category".into()),
        }
        let mut merchants = BTreeMap::new();
        for (index, line) in lines {
            let number = index + 1;
            let fields = split_csv(line).map_err(|why| format!("line {number}: {why}"))?;
            let [id, name, category] = fields.as_slice() else {
                return Err(format!("line {number}: expected 3 fields, found {}", fields.len()));
            };
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("line {number}: {id:?} is not a merchant id"))?;
            if name.is_empty() || name.len() > MERCHANT_NAME_BYTES_MAX {
                return Err(format!(
                    "line {number}: a name has 1 to {MERCHANT_NAME_BYTES_MAX} bytes"
                ));
            }
            let category = category
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|category| (1..=6).contains(category))
                .ok_or_else(|| format!("line {number}: category {category:?} is not 1..=6"))?;
            if merchants.insert(id, Merchant { name: name.clone(), category }).is_some() {
                return Err(format!("line {number}: merchant {id} is registered twice"));
            }
        }
        Ok(MerchantRegistry { merchants })
    }

    pub fn get(&self, merchant_id: u64) -> Option<&Merchant> {
        self.merchants.get(&merchant_id)
    }

    /// The registered name, or `merchant {id}`.
    pub fn name(&self, merchant_id: u64) -> String {
        self.get(merchant_id)
            .map_or_else(|| format!("merchant {merchant_id}"), |merchant| merchant.name.clone())
    }

    pub fn len(&self) -> usize {
        self.merchants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.merchants.is_empty()
    }
}

/// One CSV line into fields (RFC 4180 quoting, no line breaks inside fields).
fn split_csv(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            (false, '"') => return Err("a quote inside an unquoted field".into()),
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, c) if was_quoted => return Err(format!("{c:?} after a closing quote")),
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("an unclosed quote".into());
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_parses_quoted_names_and_refuses_bad_lines() {
        let registry = MerchantRegistry::parse("merchant_id,name,category\n77,e-lotto,1\r\n78,\"Flower delivery service \"\"Flower Land\"\", Seoul\",1\n\n9,I-Link,2\n").unwrap();
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.name(78), "Flower delivery service \"Flower Land\", Seoul");
        assert_eq!(registry.get(9).map(|merchant| merchant.category), Some(2));
        assert_eq!(registry.name(5), "merchant 5");
        for bad in [
            "id,name,category\n1,a,1\n",
            "merchant_id,name,category\n1,a\n",
            "merchant_id,name,category\nx,a,1\n",
            "merchant_id,name,category\n1,a,7\n",
            "merchant_id,name,category\n1,,1\n",
            "merchant_id,name,category\n1,a,1\n1,b,1\n",
            "merchant_id,name,category\n1,\"a,1\n",
            "merchant_id,name,category\n1,a\"b,1\n",
        ] {
            assert!(MerchantRegistry::parse(bad).is_err(), "{bad:?}");
        }
        let long =
            format!("merchant_id,name,category\n1,{},1\n", "x".repeat(MERCHANT_NAME_BYTES_MAX + 1));
        assert!(MerchantRegistry::parse(&long).is_err());
    }
}
