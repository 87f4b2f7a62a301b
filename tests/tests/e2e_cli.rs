//! The operator CLI, end to end: `pinswitch card issue` prints each new PIN once, and
//! `card activate`, `card load`, `card sale` and `card show` act on those PINs through the
//! protocol against a real switch. Exit codes follow the result: 0 approved, 1 declined. A
//! command retried with the op id it printed (`--op-id`) runs once.

use std::path::Path;
use std::process::{Command, Output};

use pinswitch_tests::{Switch, fresh_dir};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pinswitch"))
}

fn card(address: &str, args: &[&str]) -> Output {
    let output = Command::new(binary())
        .arg("card")
        .args(args)
        .args(["--connect", address])
        .output()
        .expect("running pinswitch card");
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf-8 output")
}

#[test]
fn operator_issues_activates_loads_sells_and_shows_a_card() {
    let data_dir = fresh_dir("e2e-cli");
    let mut switch = Switch::start(binary(), &data_dir, &[]);
    let address = switch.address.clone();

    let issued = card(&address, &["issue", "--product", "10000", "--count", "3"]);
    assert!(issued.status.success(), "{issued:?}");
    let pins: Vec<String> = stdout(&issued)
        .lines()
        .map(|line| line.split_whitespace().next().expect("a PIN per line").to_string())
        .collect();
    assert_eq!(pins.len(), 3, "{}", stdout(&issued));
    for pin in &pins {
        assert_eq!(pin.len(), 19, "xxxx-xxxx-xxxx-xxxx: {pin}");
        assert!(pinswitch_protocol::pin::is_valid(
            pinswitch_protocol::pin::parse(pin).expect("parses")
        ));
    }
    assert!(pins[0] != pins[1] && pins[1] != pins[2], "PINs are distinct");
    let unknown_product = card(&address, &["issue", "--product", "7000"]);
    assert!(!unknown_product.status.success());

    let pin = pins[0].as_str();
    let activated = card(&address, &["activate", pin, "--password", "4321"]);
    assert!(activated.status.success(), "{activated:?}");
    let loaded = card(&address, &["load", pin, "--amount", "20000"]);
    assert!(loaded.status.success(), "{loaded:?}");
    let sold = card(&address, &["sale", pin, "--password", "4321", "--amount", "1500"]);
    assert!(sold.status.success(), "{sold:?}");
    let declined = card(&address, &["sale", pin, "--password", "0000", "--amount", "1"]);
    assert!(!declined.status.success());
    assert!(stdout(&declined).contains("PASSWORD_INVALID (120)"), "{}", stdout(&declined));

    let shown = stdout(&card(&address, &["show", pin]));
    assert!(shown.contains("state     active"), "{shown}");
    assert!(shown.contains("balance   28500 won"), "{shown}");
    assert!(shown.contains("password  4 tries left"), "{shown}");
    let other = stdout(&card(&address, &["show", &pins[1]]));
    assert!(other.contains("state     issued") && other.contains("balance   10000 won"), "{other}");
    switch.stop();
}

/// The op id a command printed on stderr ("pinswitch: op id X (to retry ...").
fn printed_op_id(output: &Output) -> String {
    let stderr = String::from_utf8(output.stderr.clone()).expect("utf-8 output");
    let line = stderr
        .lines()
        .find_map(|line| line.strip_prefix("pinswitch: op id "))
        .unwrap_or_else(|| panic!("no op id printed: {stderr}"));
    line.split_whitespace().next().expect("the op id").to_string()
}

/// An operator whose command timed out sends it again with `--op-id` and learns what happened:
/// the same operation is answered from its record (replayed, not run again), the same op id
/// with another amount is refused, an op id that never reached the switch runs once, and the
/// bulk commands refuse `--op-id`.
#[test]
fn a_command_retried_with_its_op_id_runs_once() {
    let data_dir = fresh_dir("e2e-cli-retry");
    let mut switch = Switch::start(binary(), &data_dir, &[]);
    let address = switch.address.clone();
    let issued = card(&address, &["issue", "--product", "10000"]);
    let pin = stdout(&issued).split_whitespace().next().expect("a PIN").to_string();
    let activated = card(&address, &["activate", &pin, "--password", "4321"]);
    assert!(activated.status.success(), "{activated:?}");

    let loaded = card(&address, &["load", &pin, "--amount", "20000"]);
    assert!(loaded.status.success() && !stdout(&loaded).contains("replayed"), "{loaded:?}");
    let op_id = printed_op_id(&loaded);
    let again = card(&address, &["load", &pin, "--amount", "20000", "--op-id", &op_id]);
    assert!(again.status.success(), "{again:?}");
    assert!(stdout(&again).contains("balance 30000 won (replayed"), "{}", stdout(&again));
    assert_eq!(printed_op_id(&again), op_id);
    let other_amount = card(&address, &["load", &pin, "--amount", "5000", "--op-id", &op_id]);
    assert!(!other_amount.status.success());
    assert!(stdout(&other_amount).contains("OP_ID_REUSED (150)"), "{}", stdout(&other_amount));

    // An op id the switch never saw (the first attempt was lost before it arrived): it runs,
    // once. Dashes as in a UUID are allowed.
    let hex = format!("{:032x}", pinswitch_protocol::new_op_id());
    let unseen =
        format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
    let unseen = unseen.as_str();
    let first = card(&address, &["load", &pin, "--amount", "10000", "--op-id", unseen]);
    assert!(first.status.success() && !stdout(&first).contains("replayed"), "{first:?}");
    let second = card(&address, &["load", &pin, "--amount", "10000", "--op-id", unseen]);
    assert!(stdout(&second).contains("balance 40000 won (replayed"), "{}", stdout(&second));
    let shown = stdout(&card(&address, &["show", &pin]));
    assert!(shown.contains("balance   40000 won"), "{shown}");

    let bulk = card(&address, &["issue", "--product", "10000", "--op-id", unseen]);
    assert!(!bulk.status.success());
    let stderr = String::from_utf8(bulk.stderr.clone()).expect("utf-8");
    assert!(stderr.contains("--op-id is for commands that send one"), "{stderr}");
    let malformed = card(&address, &["load", &pin, "--amount", "1", "--op-id", "12345"]);
    assert!(!malformed.status.success());
    switch.stop();
}
