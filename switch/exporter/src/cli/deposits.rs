//! `pinswitch-exporter deposits`. A bank's camt.054 deposit notice matched to the shop's pending
//! card orders, and the paid ones sold through the protocol (CARD_ISSUE, CARD_SELL) like any
//! channel would. It holds the exporter's state exclusively: the record of orders already sold
//! lives there.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use pinswitch_exporter::{Exporter, Options, deposits};
use pinswitch_protocol::client::Client;
use pinswitch_protocol::{ResultCode, pin};

use super::exit_code;

/// `deposits --camt NOTICE --orders ORDERS [--connect ADDR]`: prints each sold order with its
/// new PIN (once), the declined, the unresolved and the unmatched credits.
pub(super) fn deposits(
    options: Options,
    camt: &Path,
    orders: &Path,
    address: &str,
) -> anyhow::Result<ExitCode> {
    let exporter = Exporter::open(options)?;
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let credits = deposits::parse_camt054(&read(camt)?)
        .map_err(|why| anyhow::anyhow!("{}: {why}", camt.display()))?;
    let orders = deposits::parse_orders(&read(orders)?)
        .map_err(|why| anyhow::anyhow!("{}: {why}", orders.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the client runtime")?;
    let report = runtime.block_on(async {
        let client =
            Client::connect(address).await.with_context(|| format!("connecting to {address}"))?;
        anyhow::Ok(deposits::settle(exporter.state_dir(), &client, &orders, &credits).await?)
    })?;
    for (order, card_pin) in &report.sold {
        println!("sold {order}  {}", pin::format(*card_pin));
    }
    for (order, code) in &report.declined {
        println!(
            "declined {order}: {} ({code})",
            ResultCode::from_u16(*code).map_or("UNKNOWN", ResultCode::name)
        );
    }
    for order in &report.in_flight {
        println!("in flight since an interrupted run, resolve by hand: {order}");
    }
    println!("already done: {}, pending: {}", report.already_done.len(), report.pending.join(" "));
    for credit in &report.unmatched {
        println!(
            "unmatched credit {} of {} won ({} {})",
            credit.entry_ref, credit.amount_won, credit.end_to_end_id, credit.remittance
        );
    }
    Ok(exit_code(report.declined.is_empty() && report.in_flight.is_empty()))
}
