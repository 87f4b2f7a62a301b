//! The ISO 20022 files against their official schemas (vendored in `schemas/`, validated by the
//! compact validator in `xsd/mod.rs`): the pain.001.001.09 payout files exactly as a period renders
//! them, with and without a payer BIC and with text that needs escaping, must be valid; so must a
//! bank's camt.054.001.08 deposit notice of the kind `pinswitch-exporter deposits` reads, which the
//! reader must then parse. Each file mutated the way a writer bug would (elements out of order, a
//! mandatory one left out, an unknown code, a bad amount or date, a name too long, text where only
//! elements go) must be invalid, with the reason and the element's path.

mod xsd;

use std::collections::BTreeMap;

use pinswitch_exporter::deposits::parse_camt054;
use pinswitch_exporter::facts::{MerchantKind, MerchantLine, Origin, PayoutLine, PeriodFacts};
use pinswitch_exporter::ledger::Ledger;
use pinswitch_exporter::render::{self, ClosedPeriod, Transfer};
use pinswitch_exporter::{Cutoff, ExportConfig, parse_date};
use xsd::Schema;

const PAIN001_XSD: &str = include_str!("../schemas/pain.001.001.09.xsd");
const CAMT054_XSD: &str = include_str!("../schemas/camt.054.001.08.xsd");

fn schema(xsd: &str) -> Schema {
    Schema::load(xsd)
        .unwrap_or_else(|why| panic!("the schema uses what the validator does not support: {why}"))
}

/// A closed period with two merchants to pay and one balance refund, rendered as the exporter
/// writes it; returns every pain.001 file by name.
fn rendered_pain001(config: &ExportConfig) -> BTreeMap<String, String> {
    let day = parse_date("2026-05-01").unwrap();
    let cutoff = Cutoff { utc_offset_hours: 9, cutoff_hour: 0 };
    let at = |seq: u64| Origin {
        time_ms: cutoff.start_ms(day) as u64 + 36_000_000 + seq * 1000,
        shard: 0,
        seq,
        op_id: u128::from(seq) << 64,
    };
    let sale = |seq, merchant_id, amount_won| MerchantLine {
        origin: at(seq),
        kind: MerchantKind::Sale,
        payment_op_id: u128::from(seq) << 64,
        merchant_id,
        category: 1,
        card: 0xabc,
        amount_won,
        commission_won: (amount_won * 25 / 1000) as i64,
        rate_per_mille: 25,
    };
    let facts = PeriodFacts {
        records: 3,
        merchant: vec![sale(1, 77, 12_000), sale(2, 78, 3_000_000)],
        payouts: vec![PayoutLine {
            origin: at(3),
            account_ref: 42,
            card: 0xdef,
            amount_won: 8_500,
            after_close: false,
        }],
        ..PeriodFacts::default()
    };
    let period =
        ClosedPeriod { day, facts, carry_in: BTreeMap::new(), ledger_after: Ledger::default() };
    let files: BTreeMap<String, String> = render::render(&period, false, cutoff, config)
        .into_iter()
        .filter(|(name, _)| name.ends_with(".pain.001.xml"))
        .collect();
    assert_eq!(
        files.keys().map(String::as_str).collect::<Vec<_>>(),
        ["payouts-merchants.pain.001.xml", "payouts-refunds.pain.001.xml"]
    );
    files
}

#[test]
fn rendered_payout_files_are_valid_pain001() {
    let pain001 = schema(PAIN001_XSD);
    let mut with_bic = ExportConfig::default();
    with_bic.payer.name = "Pinswitch & Co. <\"Seoul\"> 'KR'".into();
    with_bic.payer.agent_bic = "KOEXKRSE".into();
    with_bic.merchants.accounts.insert("77".into(), "004-123456-01".into());
    for config in [ExportConfig::default(), with_bic] {
        for (name, document) in rendered_pain001(&config) {
            assert_eq!(pain001.validate(&document), Ok(()), "{name}:\n{document}");
        }
    }
    // The writer itself with the longest ids and names the fields allow.
    let transfer = Transfer {
        end_to_end_id: "E".repeat(35),
        amount_won: 999_999_999_999,
        creditor_name: "N".repeat(140),
        creditor_account: "A".repeat(34),
        remittance: "R".repeat(140),
    };
    let document = render::pain001(
        &"M".repeat(35),
        "2026-05-02T00:00:00+09:00",
        "2026-05-02",
        &ExportConfig::default(),
        &[transfer],
    );
    assert_eq!(pain001.validate(&document), Ok(()), "{document}");
}

/// `document` with `from` replaced by `to` (which must occur) is invalid for a reason containing
/// `why`.
fn assert_invalid(schema: &Schema, document: &str, from: &str, to: &str, why: &str) {
    assert!(document.contains(from), "{from:?} not in the document");
    let mutated = document.replacen(from, to, 1);
    match schema.validate(&mutated) {
        Ok(()) => panic!("accepted with {from:?} -> {to:?}"),
        Err(errors) => assert!(
            errors.iter().any(|error| error.contains(why)),
            "{from:?} -> {to:?}: {errors:?} does not say {why:?}"
        ),
    }
}

#[test]
fn mutated_pain001_is_invalid() {
    let pain001 = schema(PAIN001_XSD);
    let files = rendered_pain001(&ExportConfig::default());
    let document = &files["payouts-merchants.pain.001.xml"];
    assert_eq!(pain001.validate(document), Ok(()));
    let header =
        "<MsgId>PSW-M-20260501</MsgId>\n      <CreDtTm>2026-05-02T00:00:00+09:00</CreDtTm>";
    let cases: &[(&str, &str, &str)] = &[
        // Element order: CreDtTm before MsgId.
        (
            header,
            "<CreDtTm>2026-05-02T00:00:00+09:00</CreDtTm>\n      <MsgId>PSW-M-20260501</MsgId>",
            "/Document/CstmrCdtTrfInitn/GrpHdr: expected MsgId",
        ),
        // A mandatory element left out.
        ("<PmtMtd>TRF</PmtMtd>", "", "expected PmtMtd"),
        // A code outside its enumeration, a bad currency code and a bad amount.
        (
            "<ChrgBr>SLEV</ChrgBr>",
            "<ChrgBr>XXXX</ChrgBr>",
            "/PmtInf/ChrgBr: \"XXXX\" is not one of the values",
        ),
        ("Ccy=\"KRW\"", "Ccy=\"krw\"", "/InstdAmt/@Ccy: \"krw\" does not match the pattern"),
        ("Ccy=\"KRW\"", "", "attribute Ccy is required"),
        ("<InstdAmt Ccy=\"KRW\">", "<InstdAmt Ccy=\"KRW\">-", "below the minimum"),
        (
            "<NbOfTxs>2</NbOfTxs>",
            "<NbOfTxs>two</NbOfTxs>",
            "does not match the pattern of Max15NumericText",
        ),
        ("<Dt>2026-05-02</Dt>", "<Dt>2026-05-32</Dt>", "is not a valid xs:date"),
        ("<BtchBookg>true</BtchBookg>", "<BtchBookg>yes</BtchBookg>", "is not a valid xs:boolean"),
        // A value longer than its type allows, an element the type does not have, text in
        // element-only content, a second branch of a choice, an element repeated.
        (
            "<EndToEndId>SET-77-20260501</EndToEndId>",
            &format!("<EndToEndId>{}</EndToEndId>", "X".repeat(36)),
            "has 36 characters",
        ),
        ("<PmtMtd>TRF</PmtMtd>", "<PmtMtd>TRF</PmtMtd><Foo>1</Foo>", "unexpected Foo"),
        ("<PmtId>", "<PmtId>stray", "in element-only content"),
        (
            "<Dt>2026-05-02</Dt>",
            "<Dt>2026-05-02</Dt><DtTm>2026-05-02T09:00:00</DtTm>",
            "/ReqdExctnDt: unexpected DtTm",
        ),
        ("<PmtMtd>TRF</PmtMtd>", "<PmtMtd>TRF</PmtMtd><PmtMtd>TRF</PmtMtd>", "unexpected PmtMtd"),
        // Another version's namespace.
        (
            "pain.001.001.09\"",
            "pain.001.001.03\"",
            "namespace must be urn:iso:std:iso:20022:tech:xsd:pain.001.001.09",
        ),
    ];
    for (from, to, why) in cases {
        assert_invalid(&pain001, document, from, to, why);
    }
}

/// A bank's notice of three credits and a debit to the "deposit without bankbook" account.
const NOTICE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.054.001.08">
  <BkToCstmrDbtCdtNtfctn>
    <GrpHdr>
      <MsgId>KB-20260501-0001</MsgId>
      <CreDtTm>2026-05-01T10:00:00+09:00</CreDtTm>
    </GrpHdr>
    <Ntfctn>
      <Id>N-0001</Id>
      <CreDtTm>2026-05-01T10:00:00+09:00</CreDtTm>
      <Acct>
        <Id><Othr><Id>004-999999-01</Id></Othr></Id>
        <Ccy>KRW</Ccy>
      </Acct>
      <Ntry>
        <Amt Ccy="KRW">10000</Amt>
        <CdtDbtInd>CRDT</CdtDbtInd>
        <Sts><Cd>BOOK</Cd></Sts>
        <BookgDt><Dt>2026-05-01</Dt></BookgDt>
        <ValDt><Dt>2026-05-01</Dt></ValDt>
        <AcctSvcrRef>B-1</AcctSvcrRef>
        <BkTxCd><Prtry><Cd>DEPOSIT</Cd></Prtry></BkTxCd>
        <NtryDtls><TxDtls><Refs><EndToEndId>ORD-1</EndToEndId></Refs></TxDtls></NtryDtls>
      </Ntry>
      <Ntry>
        <Amt Ccy="KRW">20000</Amt>
        <CdtDbtInd>CRDT</CdtDbtInd>
        <Sts><Cd>BOOK</Cd></Sts>
        <BookgDt><Dt>2026-05-01</Dt></BookgDt>
        <AcctSvcrRef>B-2</AcctSvcrRef>
        <BkTxCd><Prtry><Cd>DEPOSIT</Cd></Prtry></BkTxCd>
        <NtryDtls><TxDtls><RmtInf><Ustrd>ORD-2</Ustrd></RmtInf></TxDtls></NtryDtls>
      </Ntry>
      <Ntry>
        <Amt Ccy="KRW">7000</Amt>
        <CdtDbtInd>DBIT</CdtDbtInd>
        <Sts><Cd>BOOK</Cd></Sts>
        <AcctSvcrRef>B-3</AcctSvcrRef>
        <BkTxCd><Prtry><Cd>FEE</Cd></Prtry></BkTxCd>
      </Ntry>
      <Ntry>
        <Amt Ccy="KRW">5000</Amt>
        <CdtDbtInd>CRDT</CdtDbtInd>
        <Sts><Cd>PDNG</Cd></Sts>
        <AcctSvcrRef>B-4</AcctSvcrRef>
        <BkTxCd><Prtry><Cd>DEPOSIT</Cd></Prtry></BkTxCd>
      </Ntry>
    </Ntfctn>
  </BkToCstmrDbtCdtNtfctn>
</Document>
"#;

#[test]
fn a_valid_camt054_notice_is_read_and_mutations_are_invalid() {
    let camt054 = schema(CAMT054_XSD);
    assert_eq!(camt054.validate(NOTICE), Ok(()));
    let credits = parse_camt054(NOTICE).unwrap();
    let read: Vec<(&str, u64, &str, &str, &str)> = credits
        .iter()
        .map(|credit| {
            (
                credit.entry_ref.as_str(),
                credit.amount_won,
                credit.end_to_end_id.as_str(),
                credit.remittance.as_str(),
                credit.booking_date.as_str(),
            )
        })
        .collect();
    assert_eq!(
        read,
        [("B-1", 10_000, "ORD-1", "", "2026-05-01"), ("B-2", 20_000, "", "ORD-2", "2026-05-01")],
        "booked KRW credits only"
    );

    let cases: &[(&str, &str, &str)] = &[
        // The status as a bare code is camt.054.001.02; from .04 on it is a choice.
        ("<Sts><Cd>BOOK</Cd></Sts>", "<Sts>BOOK</Sts>", "expected one of Cd | Prtry"),
        // The bank transaction code is mandatory, the account too.
        (
            "<BkTxCd><Prtry><Cd>DEPOSIT</Cd></Prtry></BkTxCd>\n        <NtryDtls>",
            "<NtryDtls>",
            "expected BkTxCd",
        ),
        (
            "      <Acct>\n        <Id><Othr><Id>004-999999-01</Id></Othr></Id>\n        <Ccy>KRW</Ccy>\n      </Acct>\n",
            "",
            "expected Acct",
        ),
        // Order inside an entry: the amount comes before the indicator.
        (
            "<Amt Ccy=\"KRW\">10000</Amt>\n        <CdtDbtInd>CRDT</CdtDbtInd>",
            "<CdtDbtInd>CRDT</CdtDbtInd>\n        <Amt Ccy=\"KRW\">10000</Amt>",
            "expected Amt",
        ),
        (
            "<CdtDbtInd>CRDT</CdtDbtInd>",
            "<CdtDbtInd>CREDIT</CdtDbtInd>",
            "is not one of the values of CreditDebitCode",
        ),
        ("10000</Amt>", "10000.123456</Amt>", "more fraction digits"),
        (
            "<CreDtTm>2026-05-01T10:00:00+09:00</CreDtTm>\n    </GrpHdr>",
            "</GrpHdr>",
            "expected CreDtTm",
        ),
    ];
    for (from, to, why) in cases {
        assert_invalid(&camt054, NOTICE, from, to, why);
    }
}

#[test]
fn the_validator_refuses_schemas_beyond_its_subset() {
    let wrap = |body: &str| {
        format!(
            r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified" targetNamespace="urn:x"><xs:element name="Document" type="D"/>{body}</xs:schema>"#
        )
    };
    assert!(Schema::load(&wrap(r#"<xs:complexType name="D"><xs:sequence><xs:element name="A" type="xs:string"/></xs:sequence></xs:complexType>"#)).is_ok());
    for unsupported in [
        r#"<xs:complexType name="D"><xs:all><xs:element name="A" type="xs:string"/></xs:all></xs:complexType>"#,
        r#"<xs:complexType name="D"><xs:sequence><xs:choice><xs:element name="A" type="xs:string"/></xs:choice></xs:sequence></xs:complexType>"#,
        r#"<xs:complexType name="D"><xs:sequence><xs:element name="A" type="xs:int"/></xs:sequence></xs:complexType>"#,
        r#"<xs:complexType name="D"><xs:sequence><xs:element name="A" type="T"/></xs:sequence></xs:complexType><xs:simpleType name="T"><xs:restriction base="xs:string"><xs:whiteSpace value="collapse"/></xs:restriction></xs:simpleType>"#,
        r#"<xs:complexType name="D"><xs:sequence><xs:element name="A" type="Missing"/></xs:sequence></xs:complexType>"#,
    ] {
        assert!(Schema::load(&wrap(unsupported)).is_err(), "{unsupported}");
    }
}
