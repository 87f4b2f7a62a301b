//! `pinswitch card …`: the card's life, payments and inquiries through the protocol, as any
//! client would send them.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use pinswitch_protocol::{
    self as protocol, BalanceInquiry, BlockReason, CardActivate, CardBlock, CardClaim, CardConsign,
    CardIssue, CardLoad, CardRefund, CardRegister, CardSell, CardState, CardUnblock,
    ForeignConvert, ForeignImport, Funding, ResultCode, Sale, pin,
};

use super::{
    balance_outcome, connect, op_id, op_outcome, outcome, parse_pin, refuse_op_id, single,
};

#[derive(Subcommand)]
pub(super) enum CardCommand {
    /// Issue cards of one product; prints each new PIN once.
    Issue {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        /// Face value in won (5000, 10000, 20000, 30000, 50000, 100000 by default).
        #[arg(long)]
        product: u64,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Write the new PINs to this file for printing physical cards (one `PIN,face value`
        /// line each; created new with mode 0600, never overwritten) instead of printing them.
        #[arg(long)]
        pin_file: Option<PathBuf>,
    },
    /// Show a card's state, balance and live holds.
    Show {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
    },
    /// Register the holder's password; the card becomes active.
    Activate {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long)]
        password: String,
    },
    /// Recharge a card.
    Load {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long)]
        amount: u64,
    },
    /// Debit a card (single-phase sale), as a gateway would.
    Sale {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long)]
        password: String,
        #[arg(long)]
        amount: u64,
        #[arg(long, default_value_t = 0)]
        merchant: u64,
    },
    /// Sell an issued card through a channel; its validity period starts.
    Sell {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        /// The selling channel (non-zero).
        #[arg(long)]
        channel: u32,
        /// What the buyer paid, in won.
        #[arg(long)]
        price: u64,
        /// How the buyer paid: 1 credit card, 2 bank transfer, 3 deposit without bankbook,
        /// 4 cash, 5 mobile bill.
        #[arg(long, default_value_t = Funding::Cash as u8, value_parser = clap::value_parser!(u8).range(1..=5))]
        means: u8,
        /// Sell as a gift to this recipient reference (0: for the buyer).
        #[arg(long = "gift-to", default_value_t = 0)]
        gift_to: u64,
    },
    /// Stop an active card from paying; the balance is kept.
    Block {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long, value_enum)]
        reason: Reason,
    },
    /// Return a blocked card to active, or clear a wrong-password lockout.
    Unblock {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
    },
    /// Consign an issued card to a partner channel (mobile operator, agent): only it may sell it.
    Consign {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        /// The partner's channel id (non-zero).
        #[arg(long)]
        partner: u32,
        /// The partner's commission, per mille of the sale price.
        #[arg(long, default_value_t = 0)]
        commission: u16,
    },
    /// Register the holder (user information stays with the card site); with --verified-name the
    /// named-card balance cap applies.
    Register {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        /// The card site's reference of the holder (non-zero).
        #[arg(long)]
        holder: u64,
        /// The holder's real name was verified.
        #[arg(long)]
        verified_name: bool,
    },
    /// Pay the whole balance out to an account and close the card (refund rule permitting).
    Refund {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        /// The payout account reference (non-zero).
        #[arg(long)]
        account: u64,
    },
    /// Activation with details: a gift's recipient claims it with the reference the sale named
    /// (`--gift-ref`), and `--hint` records that the holder left a password hint with the site.
    Claim {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long)]
        password: String,
        /// The recipient reference of the gift sale (0: the card is not a gift).
        #[arg(long, default_value_t = 0)]
        gift_ref: u64,
        #[arg(long)]
        hint: bool,
    },
    /// Import foreign PINs bought from a foreign operator into a foreign product's pool: one
    /// code per line of FILE (blank lines skipped); prints one result per code.
    ForeignImport {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        /// The foreign product (`[[engine.foreign_products]]` in the configuration).
        #[arg(long)]
        product: u32,
        file: PathBuf,
    },
    /// Convert part of a card's balance into one foreign PIN of a product; prints the PIN.
    Convert {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long)]
        product: u32,
        #[arg(long)]
        password: String,
    },
}

/// Why a card is blocked (`card block --reason`).
#[derive(Clone, Copy, ValueEnum)]
pub(super) enum Reason {
    Lost,
    Stolen,
    Operator,
    Holder,
}

impl Reason {
    fn code(self) -> u8 {
        let reason = match self {
            Reason::Lost => BlockReason::Lost,
            Reason::Stolen => BlockReason::Stolen,
            Reason::Operator => BlockReason::Operator,
            Reason::Holder => BlockReason::HolderRequest,
        };
        reason as u8
    }
}

pub(super) async fn card(command: CardCommand) -> anyhow::Result<ExitCode> {
    match command {
        CardCommand::Issue { connect: address, product, count, pin_file } => {
            issue(address, product, count, pin_file).await
        }
        CardCommand::Show { connect: address, pin } => show(address, pin).await,
        CardCommand::Activate { connect: address, pin, password } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardActivate { op_id: op_id()?, pin, password: password.into_bytes() };
            Ok(balance_outcome(single(
                client.card_activate(&[event]).await.context("activating")?,
            )?))
        }
        CardCommand::Load { connect: address, pin, amount } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event =
                CardLoad { op_id: op_id()?, pin, amount_won: amount, funding: Funding::Cash as u8 };
            Ok(balance_outcome(single(client.card_load(&[event]).await.context("recharging")?)?))
        }
        CardCommand::Sale { connect: address, pin, password, amount, merchant } => {
            sale(address, pin, password, amount, merchant).await
        }
        CardCommand::Sell { connect: address, pin, channel, price, means, gift_to } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardSell {
                op_id: op_id()?,
                pin,
                channel_id: channel,
                price_won: price,
                payment_means: means,
                gift_recipient_ref: gift_to,
            };
            let result = single(client.card_sell(&[event]).await.context("selling")?)?;
            Ok(op_outcome(&result, format!(", face value {} won", result.amount_won)))
        }
        CardCommand::Block { connect: address, pin, reason } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardBlock { op_id: op_id()?, pin, reason: reason.code() };
            Ok(balance_outcome(single(client.card_block(&[event]).await.context("blocking")?)?))
        }
        CardCommand::Unblock { connect: address, pin } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardUnblock { op_id: op_id()?, pin };
            Ok(balance_outcome(single(client.card_unblock(&[event]).await.context("unblocking")?)?))
        }
        CardCommand::Consign { connect: address, pin, partner, commission } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardConsign {
                op_id: op_id()?,
                pin,
                partner_id: partner,
                commission_per_mille: commission,
            };
            let result = single(client.card_consign(&[event]).await.context("consigning")?)?;
            Ok(op_outcome(&result, format!(", face value {} won", result.amount_won)))
        }
        CardCommand::Register { connect: address, pin, holder, verified_name } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardRegister { op_id: op_id()?, pin, holder_ref: holder, verified_name };
            let result =
                single(client.card_register(&[event]).await.context("registering the holder")?)?;
            Ok(op_outcome(&result, format!(", balance cap {} won", result.amount_won)))
        }
        CardCommand::Refund { connect: address, pin, account } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardRefund { op_id: op_id()?, pin, payout_account_ref: account };
            let result =
                single(client.card_refund(&[event]).await.context("refunding the balance")?)?;
            Ok(op_outcome(
                &result,
                format!(", paid out {} won, balance {} won", result.amount_won, result.balance_won),
            ))
        }
        CardCommand::Claim { connect: address, pin, password, gift_ref, hint } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardClaim {
                op_id: op_id()?,
                pin,
                password: password.into_bytes(),
                gift_recipient_ref: gift_ref,
                password_hint: hint,
            };
            Ok(balance_outcome(single(client.card_claim(&[event]).await.context("claiming")?)?))
        }
        CardCommand::ForeignImport { connect: address, product, file } => {
            foreign_import(address, product, file).await
        }
        CardCommand::Convert { connect: address, pin, product, password } => {
            convert(address, pin, product, password).await
        }
    }
}

/// `card issue`: issues `count` cards of face value `product`, printing each PIN once or writing
/// them to a new PIN file.
async fn issue(
    address: String,
    product: u64,
    count: u32,
    pin_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    refuse_op_id("card issue")?;
    // The PIN file is created before anything is issued: a PIN is shown only once, so
    // it must have somewhere to go (an existing file is never overwritten).
    let mut pin_out = match &pin_file {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating the PIN file {}", path.display()))?;
            Some(std::io::BufWriter::new(file))
        }
        None => None,
    };
    let client = connect(&address).await?;
    let hello = client.hello("pinswitch-cli").await.context("greeting the switch")?;
    let batch_max = hello.batch_events_max.max(1) as usize;
    let mut failed = 0u32;
    let mut remaining = count as usize;
    while remaining > 0 {
        let take = remaining.min(batch_max);
        remaining -= take;
        let events: Vec<CardIssue> = (0..take)
            .map(|_| CardIssue { op_id: protocol::new_op_id(), face_value_won: product })
            .collect();
        for result in client.card_issue(&events).await.context("issuing cards")? {
            if result.code == ResultCode::Approved.as_u16() {
                match pin_out.as_mut() {
                    Some(out) => {
                        writeln!(out, "{},{}", pin::format(result.pin), result.balance_won)
                            .context("writing the PIN file")?
                    }
                    None => {
                        println!("{}  {} won", pin::format(result.pin), result.balance_won)
                    }
                }
            } else {
                failed += 1;
                let name = ResultCode::from_u16(result.code).map_or("UNKNOWN", ResultCode::name);
                eprintln!("not issued: {name} ({})", result.code);
            }
        }
    }
    if let (Some(mut out), Some(path)) = (pin_out, pin_file) {
        out.flush().context("writing the PIN file")?;
        out.into_inner()
            .map_err(|error| error.into_error())
            .and_then(|file| file.sync_all())
            .context("syncing the PIN file")?;
        println!("{} PINs written to {}", count as u64 - u64::from(failed), path.display());
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `card show`: the card's state, balances, validity and holds.
async fn show(address: String, pin: String) -> anyhow::Result<ExitCode> {
    let pin = parse_pin(&pin)?;
    let client = connect(&address).await?;
    let results =
        client.balance_inquiry(&[BalanceInquiry { pin }]).await.context("reading the card")?;
    let Some(card) = results.into_iter().next() else { bail!("the switch sent no result") };
    if card.code != ResultCode::Approved.as_u16() {
        return Ok(outcome(card.code, String::new()));
    }
    let state = CardState::from_u8(card.state).map_or("unknown", CardState::name);
    println!("card      {}", pin::format(pin));
    println!("state     {state}");
    println!("face      {} won", card.face_value_won);
    println!("balance   {} won", card.balance_won);
    println!("available {} won", card.available_won);
    println!("held      {} won", card.held_won);
    println!("password  {} tries left", card.password_tries_left);
    println!("points    {}", card.points);
    println!("valid to  {} s since the epoch", card.valid_until_s);
    if card.password_hint {
        println!("hint      a password hint is kept by the card site");
    }
    for hold in &card.holds {
        println!(
            "hold      {:032x}  {} won, {} captured, expires at {} ms",
            hold.hold_id, hold.amount_won, hold.captured_won, hold.expires_at_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `card foreign-import`: one foreign PIN per line of `file` into the pool of `product`.
async fn foreign_import(address: String, product: u32, file: PathBuf) -> anyhow::Result<ExitCode> {
    refuse_op_id("card foreign-import")?;
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let codes: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let client = connect(&address).await?;
    let hello = client.hello("pinswitch-cli").await.context("greeting the switch")?;
    let mut failed = false;
    for chunk in codes.chunks(hello.batch_events_max.max(1) as usize) {
        let events: Vec<ForeignImport> = chunk
            .iter()
            .map(|code| ForeignImport {
                op_id: protocol::new_op_id(),
                product_id: product,
                foreign_pin: code.as_bytes().to_vec(),
            })
            .collect();
        let results = client.foreign_import(&events).await.context("importing foreign PINs")?;
        for (code, result) in chunk.iter().zip(results) {
            let name = ResultCode::from_u16(result.code).map_or("UNKNOWN", ResultCode::name);
            println!("{code} {name} ({})", result.code);
            failed |= result.code != ResultCode::Approved.as_u16();
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `card convert`: part of the balance into one foreign PIN, printed.
async fn convert(
    address: String,
    pin: String,
    product: u32,
    password: String,
) -> anyhow::Result<ExitCode> {
    let pin = parse_pin(&pin)?;
    let client = connect(&address).await?;
    let event = ForeignConvert {
        op_id: op_id()?,
        pin,
        password: password.into_bytes(),
        product_id: product,
    };
    let converted = single(client.foreign_convert(&[event]).await.context("converting")?)?;
    let result = converted.result;
    let foreign_pin = String::from_utf8_lossy(&converted.foreign_pin).into_owned();
    let detail = if foreign_pin.is_empty() {
        format!(", balance {} won", result.balance_won)
    } else {
        format!(
            ", foreign PIN {foreign_pin}, debited {} won, balance {} won",
            result.amount_won, result.balance_won
        )
    };
    Ok(op_outcome(&result, detail))
}

/// `card sale`: one SALE (internet payment) of `amount` won at `merchant`.
async fn sale(
    address: String,
    pin: String,
    password: String,
    amount: u64,
    merchant: u64,
) -> anyhow::Result<ExitCode> {
    let pin = parse_pin(&pin)?;
    let client = connect(&address).await?;
    let event = Sale {
        op_id: op_id()?,
        pin,
        password: password.into_bytes(),
        amount_won: amount,
        merchant_id: merchant,
        category: protocol::Category::InternetPayment as u8,
    };
    let result = single(client.sale(&[event]).await.context("debiting")?)?;
    Ok(op_outcome(
        &result,
        format!(", approval {:06}, balance {} won", result.approval_code, result.balance_won),
    ))
}
