//! The operator CLI, end to end: `pinswitch card issue` prints each new PIN once, and
//! `card activate`, `card load`, `card sale` and `card show` act on those PINs through the
//! protocol against a real switch. Exit codes follow the result: 0 approved, 1 declined.

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
