//! Deposit notices in: an ISO 20022 camt.054 (BankToCustomerDebitCreditNotification) from the
//! bank, listing credits to the "deposit without bankbook" account, is matched to the web shop's
//! pending card orders, and every matched order becomes a card issued and sold through the
//! protocol (CARD_ISSUE, then CARD_SELL with payment means 3, deposit without bankbook).
//!
//! An order matches a booked credit (`CdtDbtInd` CRDT, status BOOK, currency KRW) whose end-to-end
//! id or unstructured remittance text is the order reference and whose amount is the order's
//! price; each credit pays at most one order. Credits that match nothing are reported (suspense),
//! orders without a credit stay pending.
//!
//! Exactly once, never twice: before an order's two requests go out, its record (the bank entry
//! it was matched to, the two op ids) is written to `deposits.bin` (atomically) as in flight, and
//! afterwards as sold or declined. The new PIN exists only in the CARD_ISSUE reply (it is never
//! written to disk), so an order still in flight after a crash cannot be completed safely: it is
//! reported for an operator to resolve (INQUIRY by its op ids) and never retried automatically,
//! and a bank entry already used is never used again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{CardIssue, CardSell, FLAG_REPLAYED, Funding, ResultCode, new_op_id, pin};
use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{ExportError, Result};
use crate::exporter::{decode, encode, write_atomic};
use crate::xml;

const DEPOSITS_FILE: &str = "deposits.bin";
const DEPOSITS_MAGIC: &[u8; 8] = b"PSEXPDP1";

/// A pending card order from the shop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub order_ref: String,
    pub face_value_won: u64,
    pub price_won: u64,
    pub channel_id: u32,
    pub gift_recipient_ref: u64,
}

/// A booked credit of a camt.054 notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credit {
    /// The bank's unique reference of the entry (`AcctSvcrRef`).
    pub entry_ref: String,
    pub amount_won: u64,
    pub end_to_end_id: String,
    pub remittance: String,
    pub booking_date: String,
}

/// What happened to an order, durably.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    InFlight,
    Sold,
    /// Declined with this result code (by CARD_ISSUE or CARD_SELL).
    Declined(u16),
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OrderRecord {
    pub entry_ref: String,
    pub issue_op_id: u128,
    pub sell_op_id: u128,
    pub outcome: Outcome,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
struct DepositState {
    orders: BTreeMap<String, OrderRecord>,
}

/// The result of one `settle` call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DepositReport {
    /// (order, clear PIN) of cards sold now; the PIN is shown here once.
    pub sold: Vec<(String, u64)>,
    /// (order, result code) declined now.
    pub declined: Vec<(String, u16)>,
    /// Orders handled by an earlier run.
    pub already_done: Vec<String>,
    /// Orders left in flight by an interrupted run: resolve by hand, never retried.
    pub in_flight: Vec<String>,
    /// Orders no credit pays yet.
    pub pending: Vec<String>,
    /// Credits that pay no order (suspense).
    pub unmatched: Vec<Credit>,
}

/// Parses the orders CSV: header `order_ref,face_value_won,price_won,channel_id,gift_recipient_ref`.
pub fn parse_orders(text: &str) -> std::result::Result<Vec<Order>, String> {
    let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
    match lines.next() {
        Some((_, header)) if header.trim() == "order_ref,face_value_won,price_won,channel_id,gift_recipient_ref" => {}
        _ => return Err("the first line must be order_ref,face_value_won,price_won,channel_id,gift_recipient_ref".into()),
    }
    let mut seen = BTreeSet::new();
    let mut orders = Vec::new();
    for (number, line) in lines {
        let fields: Vec<&str> = line.trim().split(',').collect();
        let bad = |what: &str| format!("line {}: {what}", number + 1);
        if fields.len() != 5 {
            return Err(bad("five fields expected"));
        }
        let order_ref = fields[0].to_string();
        if order_ref.is_empty() || order_ref.len() > 35 || !seen.insert(order_ref.clone()) {
            return Err(bad("the order reference must be 1..=35 characters and unique"));
        }
        let number_field =
            |index: usize| fields[index].parse::<u64>().map_err(|_| bad("not a number"));
        let order = Order {
            order_ref,
            face_value_won: number_field(1)?,
            price_won: number_field(2)?,
            channel_id: u32::try_from(number_field(3)?).map_err(|_| bad("channel out of range"))?,
            gift_recipient_ref: number_field(4)?,
        };
        if order.price_won == 0 || order.channel_id == 0 {
            return Err(bad("price and channel must be positive"));
        }
        orders.push(order);
    }
    Ok(orders)
}

/// The booked KRW credits of a camt.054 document (other entries are skipped; malformed ones are
/// errors).
pub fn parse_camt054(text: &str) -> std::result::Result<Vec<Credit>, String> {
    let document = xml::parse(text)?;
    let namespace = document.attribute("xmlns").unwrap_or_default();
    if document.name != "Document"
        || !namespace.starts_with("urn:iso:std:iso:20022:tech:xsd:camt.054.")
    {
        return Err("not a camt.054 document".into());
    }
    let notification = document.child("BkToCstmrDbtCdtNtfctn").ok_or("no BkToCstmrDbtCdtNtfctn")?;
    let mut credits = Vec::new();
    for notice in notification.children_named("Ntfctn") {
        for entry in notice.children_named("Ntry") {
            let text_at = |path: &[&str]| {
                entry.path(path).map(|element| element.text.clone()).unwrap_or_default()
            };
            let status = entry
                .path(&["Sts", "Cd"])
                .or_else(|| entry.child("Sts"))
                .map(|element| element.text.as_str())
                .unwrap_or_default();
            if text_at(&["CdtDbtInd"]) != "CRDT" || status != "BOOK" {
                continue;
            }
            let amount = entry.child("Amt").ok_or("an entry without Amt")?;
            if amount.attribute("Ccy") != Some("KRW") {
                continue;
            }
            let amount_won = amount
                .text
                .parse::<u64>()
                .map_err(|_| format!("amount {:?} is not whole won", amount.text))?;
            let entry_ref = text_at(&["AcctSvcrRef"]);
            if entry_ref.is_empty() {
                return Err("a booked credit without AcctSvcrRef".into());
            }
            credits.push(Credit {
                entry_ref,
                amount_won,
                end_to_end_id: text_at(&["NtryDtls", "TxDtls", "Refs", "EndToEndId"]),
                remittance: text_at(&["NtryDtls", "TxDtls", "RmtInf", "Ustrd"]),
                booking_date: text_at(&["BookgDt", "Dt"]),
            });
        }
    }
    Ok(credits)
}

/// Pairs orders with credits: same reference (end-to-end id or remittance text) and amount; each
/// credit pays at most one order. Credits already used (by entry reference) are skipped.
pub fn match_credits<'a>(
    orders: &'a [Order],
    credits: &[Credit],
    used: &BTreeSet<String>,
) -> (Vec<(&'a Order, Credit)>, Vec<Credit>) {
    let mut matched = Vec::new();
    let mut taken = BTreeSet::new();
    for order in orders {
        let found = credits.iter().find(|credit| {
            !used.contains(&credit.entry_ref)
                && !taken.contains(&credit.entry_ref)
                && credit.amount_won == order.price_won
                && (credit.end_to_end_id == order.order_ref
                    || credit.remittance.trim() == order.order_ref)
        });
        if let Some(credit) = found {
            taken.insert(credit.entry_ref.clone());
            matched.push((order, credit.clone()));
        }
    }
    let unmatched = credits
        .iter()
        .filter(|credit| !used.contains(&credit.entry_ref) && !taken.contains(&credit.entry_ref))
        .cloned()
        .collect();
    (matched, unmatched)
}

/// Matches the notice to the orders and sells every newly paid order through `client`.
pub async fn settle(
    state_dir: &Path,
    client: &Client,
    orders: &[Order],
    credits: &[Credit],
) -> Result<DepositReport> {
    let path = state_dir.join(DEPOSITS_FILE);
    let mut state = match std::fs::read(&path) {
        Ok(bytes) => decode::<DepositState>(&path, DEPOSITS_MAGIC, &bytes)?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => DepositState::default(),
        Err(error) => {
            return Err(ExportError::Io { path, action: "read deposit state", source: error });
        }
    };
    std::fs::create_dir_all(state_dir)
        .map_err(ExportError::io(state_dir, "create state directory"))?;
    let mut report = DepositReport::default();
    for (order_ref, record) in &state.orders {
        match record.outcome {
            Outcome::InFlight => report.in_flight.push(order_ref.clone()),
            _ => report.already_done.push(order_ref.clone()),
        }
    }
    let used: BTreeSet<String> =
        state.orders.values().map(|record| record.entry_ref.clone()).collect();
    let open: Vec<Order> = orders
        .iter()
        .filter(|order| !state.orders.contains_key(&order.order_ref))
        .cloned()
        .collect();
    let (matched, unmatched) = match_credits(&open, credits, &used);
    report.unmatched = unmatched;
    let paid: BTreeSet<&str> = matched.iter().map(|(order, _)| order.order_ref.as_str()).collect();
    report.pending = open
        .iter()
        .filter(|order| !paid.contains(order.order_ref.as_str()))
        .map(|order| order.order_ref.clone())
        .collect();
    for (order, credit) in matched {
        let record = OrderRecord {
            entry_ref: credit.entry_ref.clone(),
            issue_op_id: new_op_id(),
            sell_op_id: new_op_id(),
            outcome: Outcome::InFlight,
        };
        state.orders.insert(order.order_ref.clone(), record.clone());
        write_atomic(&path, &encode(DEPOSITS_MAGIC, &state))?;
        let outcome = sell(client, order, &record).await?;
        match outcome {
            Ok(clear_pin) => report.sold.push((order.order_ref.clone(), clear_pin)),
            Err(code) => report.declined.push((order.order_ref.clone(), code)),
        }
        let done = match outcome {
            Ok(_) => Outcome::Sold,
            Err(code) => Outcome::Declined(code),
        };
        if let Some(record) = state.orders.get_mut(&order.order_ref) {
            record.outcome = done;
        }
        write_atomic(&path, &encode(DEPOSITS_MAGIC, &state))?;
    }
    Ok(report)
}

/// CARD_ISSUE then CARD_SELL for one order: the clear PIN, or the declining result code.
async fn sell(
    client: &Client,
    order: &Order,
    record: &OrderRecord,
) -> Result<std::result::Result<u64, u16>> {
    let protocol = |error: pinswitch_protocol::client::ClientError| {
        ExportError::Config(format!("talking to the switch: {error}"))
    };
    let issued = client
        .card_issue(&[CardIssue {
            op_id: record.issue_op_id,
            face_value_won: order.face_value_won,
        }])
        .await
        .map_err(protocol)?;
    let Some(issued) = issued.into_iter().next() else {
        return Err(ExportError::Config("the switch sent no CARD_ISSUE result".into()));
    };
    if issued.code != ResultCode::Approved.as_u16()
        || issued.flags & FLAG_REPLAYED != 0
        || !pin::is_valid(issued.pin)
    {
        return Ok(Err(issued.code));
    }
    let event = CardSell {
        op_id: record.sell_op_id,
        pin: issued.pin,
        channel_id: order.channel_id,
        price_won: order.price_won,
        payment_means: Funding::DepositWithoutBankbook as u8,
        gift_recipient_ref: order.gift_recipient_ref,
    };
    let sold = client.card_sell(&[event]).await.map_err(protocol)?;
    let Some(sold) = sold.into_iter().next() else {
        return Err(ExportError::Config("the switch sent no CARD_SELL result".into()));
    };
    Ok(if sold.code == ResultCode::Approved.as_u16() { Ok(issued.pin) } else { Err(sold.code) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTICE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.054.001.08">
  <BkToCstmrDbtCdtNtfctn>
    <GrpHdr><MsgId>N1</MsgId><CreDtTm>2026-05-01T10:00:00+09:00</CreDtTm></GrpHdr>
    <Ntfctn>
      <Id>N1-1</Id>
      <Ntry>
        <Amt Ccy="KRW">10000</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>
        <BookgDt><Dt>2026-05-01</Dt></BookgDt><AcctSvcrRef>B-1</AcctSvcrRef>
        <NtryDtls><TxDtls><Refs><EndToEndId>ORD-1</EndToEndId></Refs></TxDtls></NtryDtls>
      </Ntry>
      <Ntry>
        <Amt Ccy="KRW">20000</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts><AcctSvcrRef>B-2</AcctSvcrRef>
        <NtryDtls><TxDtls><RmtInf><Ustrd> ORD-2 </Ustrd></RmtInf></TxDtls></NtryDtls>
      </Ntry>
      <Ntry>
        <Amt Ccy="KRW">5000</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts><AcctSvcrRef>B-3</AcctSvcrRef>
        <NtryDtls><TxDtls><Refs><EndToEndId>ORD-3</EndToEndId></Refs></TxDtls></NtryDtls>
      </Ntry>
      <Ntry>
        <Amt Ccy="KRW">7000</Amt><CdtDbtInd>DBIT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts><AcctSvcrRef>B-4</AcctSvcrRef>
      </Ntry>
      <Ntry>
        <Amt Ccy="KRW">10000</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>PDNG</Cd></Sts><AcctSvcrRef>B-5</AcctSvcrRef>
      </Ntry>
    </Ntfctn>
  </BkToCstmrDbtCdtNtfctn>
</Document>"#;

    #[test]
    fn booked_credits_match_orders_by_reference_and_amount() {
        let credits = parse_camt054(NOTICE).unwrap();
        assert_eq!(
            credits.iter().map(|credit| credit.entry_ref.as_str()).collect::<Vec<_>>(),
            ["B-1", "B-2", "B-3"]
        );
        let orders = parse_orders("order_ref,face_value_won,price_won,channel_id,gift_recipient_ref\nORD-1,10000,10000,9,0\nORD-2,20000,20000,9,55\nORD-3,5000,4500,9,0\nORD-4,5000,5000,9,0\n").unwrap();
        let (matched, unmatched) = match_credits(&orders, &credits, &BTreeSet::new());
        let pairs: Vec<(&str, &str)> = matched
            .iter()
            .map(|(order, credit)| (order.order_ref.as_str(), credit.entry_ref.as_str()))
            .collect();
        // ORD-3 paid 5,000 for a 4,500 order: no match, the credit goes to suspense.
        assert_eq!(pairs, [("ORD-1", "B-1"), ("ORD-2", "B-2")]);
        assert_eq!(
            unmatched.iter().map(|credit| credit.entry_ref.as_str()).collect::<Vec<_>>(),
            ["B-3"]
        );
        let used: BTreeSet<String> = ["B-1".to_string()].into();
        let (matched, _) = match_credits(&orders, &credits, &used);
        assert_eq!(matched.len(), 1, "a used bank entry pays nothing again");
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert!(
            parse_camt054("<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pain.001.001.09\"/>")
                .is_err()
        );
        assert!(parse_camt054(&NOTICE.replace("<AcctSvcrRef>B-1</AcctSvcrRef>", "")).is_err());
        assert!(parse_camt054(&NOTICE.replace(">10000<", ">100.50<")).is_err());
        assert!(parse_camt054(&NOTICE[..200]).is_err());
        for bad in [
            "",
            "x\nORD-1,1,1,1,0",
            "order_ref,face_value_won,price_won,channel_id,gift_recipient_ref\nORD-1,1,1,1",
            "order_ref,face_value_won,price_won,channel_id,gift_recipient_ref\nA,1,1,1,0\nA,1,1,1,0",
            "order_ref,face_value_won,price_won,channel_id,gift_recipient_ref\nA,1,0,1,0",
        ] {
            assert!(parse_orders(bad).is_err(), "{bad}");
        }
    }
}
