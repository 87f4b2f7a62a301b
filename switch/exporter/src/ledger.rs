//! The chart of accounts and the double-entry ledger. Every posting debits one account and
//! credits another by the same positive amount of won, so the trial balance balances by
//! construction; `TrialBalance::check` asserts it anyway, together with each account's normal
//! side (an asset or expense never has more credits than debits, a liability or income never more
//! debits than credits). Balances are `u128` won, added with checked arithmetic.

use std::collections::BTreeMap;

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{ExportError, Result};

/// One account. Accounts with a parameter are sub-ledgers (per product face value, per merchant,
/// per channel, per funding means). The number is the account's code in the chart.
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[rkyv(derive(PartialEq, Eq, PartialOrd, Ord))]
pub enum Account {
    /// 1100 (asset, memorandum): face value of issued cards not yet sold. Debited at CARD_ISSUE,
    /// credited when the card is sold or activated without a sale. Offsets `CardUnsold`.
    CardStockControl,
    /// 1200 (asset): what a selling channel owes for the cards it sold, net of its commission.
    ChannelReceivable { channel_id: u32 },
    /// 1300 (asset): recharge money collected through a funding means (1 credit card, 2 bank
    /// transfer, 3 deposit without bankbook, 4 cash, 5 mobile bill), to be cleared by the
    /// collector's remittance.
    FundingClearing { means: u8 },
    /// 1400 (asset, suspense): face value of cards activated without a channel sale (virtual
    /// cards): value the holder can spend that no channel has accounted for. Must be cleared.
    SuspenseActivatedUnsold,
    /// 2000 (liability, memorandum): value of issued, unsold cards, per product.
    CardUnsold { face_value_won: u64 },
    /// 2100 (liability): spendable card value (sold or activated cards), per product.
    CardLiability { face_value_won: u64 },
    /// 2200 (liability): authorizations in flight (pending holds), moved out of card liability.
    Holds,
    /// 2300 (liability): what is owed to a merchant (associate) for captured payments.
    MerchantPayable { merchant_id: u64 },
    /// 2400 (liability): card balances to pay out to holders' accounts (CARD_REFUND, and
    /// reversals onto a card already paid out).
    RefundsPayable,
    /// 2500 (liability): what is owed to a foreign operator for the foreign PINs card holders
    /// converted their balance into (FOREIGN_CONVERT), at the catalogue's won price.
    ForeignPartnerPayable { partner_id: u32 },
    /// 4100 (income): merchant commission (merchant discount).
    CommissionRevenue,
    /// 4200 (income): value left on expired cards.
    BreakageRevenue,
    /// 4300 (income): a channel price above the face value.
    SalesPremium,
    /// 4400 (income): per-second charging sessions (calls) debited from cards, per service
    /// category (2 telephone call, 3 phone information, ...).
    ServiceRevenue { category: u8 },
    /// 5100 (expense): the commission a consignment partner keeps on the cards it sells.
    DistributionCommission { partner_id: u32 },
    /// 5200 (expense): a channel price below the face value.
    SalesDiscount,
}

/// Which side an account's balance normally sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormalSide {
    Debit,
    Credit,
}

impl Account {
    pub fn code(&self) -> u16 {
        match self {
            Account::CardStockControl => 1100,
            Account::ChannelReceivable { .. } => 1200,
            Account::FundingClearing { .. } => 1300,
            Account::SuspenseActivatedUnsold => 1400,
            Account::CardUnsold { .. } => 2000,
            Account::CardLiability { .. } => 2100,
            Account::Holds => 2200,
            Account::MerchantPayable { .. } => 2300,
            Account::RefundsPayable => 2400,
            Account::ForeignPartnerPayable { .. } => 2500,
            Account::CommissionRevenue => 4100,
            Account::BreakageRevenue => 4200,
            Account::SalesPremium => 4300,
            Account::ServiceRevenue { .. } => 4400,
            Account::DistributionCommission { .. } => 5100,
            Account::SalesDiscount => 5200,
        }
    }

    pub fn normal_side(&self) -> NormalSide {
        if matches!(self.code(), 1000..2000 | 5000..6000) {
            NormalSide::Debit
        } else {
            NormalSide::Credit
        }
    }

    /// `code name[/sub-ledger]`, e.g. `2100 card-liability/10000`.
    pub fn name(&self) -> String {
        let code = self.code();
        match self {
            Account::CardStockControl => format!("{code} card-stock-control"),
            Account::ChannelReceivable { channel_id } => {
                format!("{code} channel-receivable/{channel_id}")
            }
            Account::FundingClearing { means } => format!("{code} funding-clearing/{means}"),
            Account::SuspenseActivatedUnsold => format!("{code} suspense-activated-unsold"),
            Account::CardUnsold { face_value_won } => {
                format!("{code} card-unsold/{face_value_won}")
            }
            Account::CardLiability { face_value_won } => {
                format!("{code} card-liability/{face_value_won}")
            }
            Account::Holds => format!("{code} holds"),
            Account::MerchantPayable { merchant_id } => {
                format!("{code} merchant-payable/{merchant_id}")
            }
            Account::RefundsPayable => format!("{code} refunds-payable"),
            Account::ForeignPartnerPayable { partner_id } => {
                format!("{code} foreign-partner-payable/{partner_id}")
            }
            Account::CommissionRevenue => format!("{code} commission-revenue"),
            Account::BreakageRevenue => format!("{code} breakage-revenue"),
            Account::SalesPremium => format!("{code} sales-premium"),
            Account::ServiceRevenue { category } => format!("{code} service-revenue/{category}"),
            Account::DistributionCommission { partner_id } => {
                format!("{code} distribution-commission/{partner_id}")
            }
            Account::SalesDiscount => format!("{code} sales-discount"),
        }
    }
}

/// Debit `debit`, credit `credit`, by `amount_won` (never zero: zero postings are dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Posting {
    pub debit: Account,
    pub credit: Account,
    pub amount_won: u64,
}

/// Debits and credits of one account.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sides {
    pub debits_won: u128,
    pub credits_won: u128,
}

impl Sides {
    /// Balance on the account's normal side (negative: the account is on its wrong side).
    pub fn balance_won(&self, side: NormalSide) -> i128 {
        let (debits, credits) = (self.debits_won as i128, self.credits_won as i128);
        match side {
            NormalSide::Debit => debits - credits,
            NormalSide::Credit => credits - debits,
        }
    }
}

/// Accounts and their debits and credits, in chart order.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub accounts: BTreeMap<Account, Sides>,
}

impl Ledger {
    pub fn post(&mut self, posting: &Posting) -> Result<()> {
        let debit = self.accounts.entry(posting.debit).or_default();
        debit.debits_won = debit
            .debits_won
            .checked_add(u128::from(posting.amount_won))
            .ok_or(ExportError::Overflow("ledger debits"))?;
        let credit = self.accounts.entry(posting.credit).or_default();
        credit.credits_won = credit
            .credits_won
            .checked_add(u128::from(posting.amount_won))
            .ok_or(ExportError::Overflow("ledger credits"))?;
        Ok(())
    }

    /// Adds another ledger's movements to this one.
    pub fn absorb(&mut self, other: &Ledger) -> Result<()> {
        for (account, sides) in &other.accounts {
            let mine = self.accounts.entry(*account).or_default();
            mine.debits_won = mine
                .debits_won
                .checked_add(sides.debits_won)
                .ok_or(ExportError::Overflow("ledger debits"))?;
            mine.credits_won = mine
                .credits_won
                .checked_add(sides.credits_won)
                .ok_or(ExportError::Overflow("ledger credits"))?;
        }
        Ok(())
    }

    /// The balance on the normal side of every account matching `filter`, summed.
    pub fn balance_where(&self, filter: impl Fn(&Account) -> bool) -> i128 {
        self.accounts
            .iter()
            .filter(|(account, _)| filter(account))
            .map(|(account, sides)| sides.balance_won(account.normal_side()))
            .sum()
    }

    pub fn sides(&self, account: &Account) -> Sides {
        self.accounts.get(account).copied().unwrap_or_default()
    }

    pub fn trial_balance(&self) -> TrialBalance {
        let debits_won = self.accounts.values().map(|sides| sides.debits_won).sum();
        let credits_won = self.accounts.values().map(|sides| sides.credits_won).sum();
        let wrong_side = self
            .accounts
            .iter()
            .filter(|(account, sides)| sides.balance_won(account.normal_side()) < 0)
            .map(|(account, _)| *account)
            .collect();
        TrialBalance { debits_won, credits_won, wrong_side }
    }
}

/// Totals of a ledger: they must be equal, and no account may sit on its wrong side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrialBalance {
    pub debits_won: u128,
    pub credits_won: u128,
    pub wrong_side: Vec<Account>,
}

impl TrialBalance {
    pub fn balances(&self) -> bool {
        self.debits_won == self.credits_won
    }

    /// Ok when debits equal credits and every account is on its normal side.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !self.balances() {
            return Err(format!(
                "debits {} won != credits {} won",
                self.debits_won, self.credits_won
            ));
        }
        if !self.wrong_side.is_empty() {
            let names: Vec<String> = self.wrong_side.iter().map(Account::name).collect();
            return Err(format!("accounts on their wrong side: {}", names.join(", ")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postings_balance_and_wrong_sides_are_named() {
        let mut ledger = Ledger::default();
        let liability = Account::CardLiability { face_value_won: 10_000 };
        ledger
            .post(&Posting {
                debit: Account::FundingClearing { means: 4 },
                credit: liability,
                amount_won: 10_000,
            })
            .unwrap();
        ledger
            .post(&Posting {
                debit: liability,
                credit: Account::MerchantPayable { merchant_id: 7 },
                amount_won: 1_500,
            })
            .unwrap();
        let trial = ledger.trial_balance();
        assert_eq!((trial.debits_won, trial.credits_won), (11_500, 11_500));
        assert_eq!(trial.check(), Ok(()));
        assert_eq!(ledger.sides(&liability).balance_won(liability.normal_side()), 8_500);
        ledger
            .post(&Posting {
                debit: Account::MerchantPayable { merchant_id: 7 },
                credit: Account::CommissionRevenue,
                amount_won: 2_000,
            })
            .unwrap();
        let trial = ledger.trial_balance();
        assert!(trial.balances());
        assert_eq!(
            trial.check(),
            Err("accounts on their wrong side: 2300 merchant-payable/7".into())
        );
        assert_eq!(Account::SalesDiscount.normal_side(), NormalSide::Debit);
        assert_eq!(Account::BreakageRevenue.normal_side(), NormalSide::Credit);
    }
}
