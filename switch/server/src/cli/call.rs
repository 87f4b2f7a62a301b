//! `pinswitch call …`: call charging as a call switch does it (quote, start, update, end,
//! event charge, audit).

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use pinswitch_protocol::{self as protocol, EventCharge, PriceQuote, ResultCode, SessionAudit};

use super::{connect, op_id, op_outcome, outcome, parse_pin, single};

#[derive(Subcommand)]
pub(super) enum CallCommand {
    /// What a call of --seconds to --to, or --units events, would cost now (PRICE_QUOTE); with
    /// --pin also how many seconds the card's available balance buys.
    Quote {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        /// Service category (2 telephone call, 3 phone information, 4 prepaid mobile, ...).
        #[arg(long)]
        category: u8,
        /// The called number (digits).
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 0)]
        seconds: u32,
        #[arg(long, default_value_t = 0)]
        units: u32,
        #[arg(long)]
        pin: Option<String>,
    },
    /// Charge --units events of the service at --to to the card (EVENT_CHARGE).
    Charge {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long)]
        category: u8,
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 1)]
        units: u32,
        /// The holder's password (needed where the card's product or the switch requires one).
        #[arg(long)]
        password: Option<String>,
    },
    /// Compare a call switch's live sessions (--session, repeated; hex or decimal ids) with the
    /// switch's (SESSION_AUDIT); with --close, end the switch's sessions of --owner missing
    /// from the list.
    Audit {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        #[arg(long)]
        owner: u32,
        #[arg(long = "session")]
        sessions: Vec<String>,
        #[arg(long)]
        close: bool,
    },
}

/// A session id as a call switch logs it: `0x…` hex or decimal.
fn parse_session_id(text: &str) -> anyhow::Result<u128> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u128::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.with_context(|| format!("{text:?} is not a session id"))
}

pub(super) async fn call(command: CallCommand) -> anyhow::Result<ExitCode> {
    match command {
        CallCommand::Quote { connect: address, category, to, seconds, units, pin } => {
            let pin = pin.as_deref().map(parse_pin).transpose()?.unwrap_or(0);
            let client = connect(&address).await?;
            let quote = PriceQuote {
                pin,
                category,
                destination: to.into_bytes(),
                duration_s: seconds,
                units,
            };
            let quoted = single(client.price_quote(&[quote]).await.context("asking for a quote")?)?;
            if quoted.code != ResultCode::Approved.as_u16() {
                return Ok(outcome(quoted.code, String::new()));
            }
            println!("tariff    {}", quoted.tariff_id);
            println!(
                "rate      {} won per {} s (first {} s), {} won to connect",
                quoted.rate_won,
                quoted.increment_s,
                quoted.first_increment_s,
                quoted.connect_fee_won
            );
            println!("event     {} won", quoted.event_won);
            println!("call      {seconds} s cost {} won", quoted.duration_cost_won);
            println!("events    {units} cost {} won", quoted.event_cost_won);
            if pin != 0 {
                println!(
                    "card      {} won available, buys {} s",
                    quoted.available_won, quoted.affordable_s
                );
            }
            Ok(outcome(quoted.code, String::new()))
        }
        CallCommand::Charge { connect: address, pin, category, to, units, password } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = EventCharge {
                op_id: op_id()?,
                pin,
                password: password.unwrap_or_default().into_bytes(),
                category,
                destination: to.into_bytes(),
                units,
            };
            let result =
                single(client.event_charge(&[event]).await.context("charging the event")?)?;
            Ok(op_outcome(
                &result,
                format!(", charged {} won, balance {} won", result.amount_won, result.balance_won),
            ))
        }
        CallCommand::Audit { connect: address, owner, sessions, close } => {
            let session_ids = sessions
                .iter()
                .map(|text| parse_session_id(text))
                .collect::<anyhow::Result<Vec<u128>>>()?;
            let client = connect(&address).await?;
            let audit = SessionAudit {
                owner_id: owner,
                count: u32::try_from(session_ids.len()).context("too many sessions")?,
                digest: protocol::session_digest(session_ids.iter().copied()),
                list: close,
                session_ids: if close { session_ids } else { Vec::new() },
            };
            let answer = client.session_audit(&audit).await.context("auditing the sessions")?;
            Ok(outcome(
                answer.code,
                format!(", {} live on the switch, {} ended", answer.live_count, answer.ended),
            ))
        }
    }
}
