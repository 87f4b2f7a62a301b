//! The load generator end to end against a real switch: `prepare` issues and activates cards,
//! `run --validate` drives a gateway mix (authorize, capture, void, reverse, refund, sale,
//! recharge) and checks every reply and every balance, the reports are written, and a later
//! `validate` re-checks the cards file. Needs the `pinswitch` binary next to this one, which
//! `cargo test --workspace` (the README's test command) builds before running any test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn loadgen() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pinswitch-loadgen"))
}

fn switch_binary() -> PathBuf {
    let path = loadgen().with_file_name("pinswitch");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (or build pinswitch) first",
        path.display()
    );
    path
}

/// The switch on a fresh data directory and a free port; killed on drop.
struct Switch {
    child: Child,
    address: String,
}

impl Switch {
    fn start(data_dir: &Path) -> Switch {
        let mut child = Command::new(switch_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--data"])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning pinswitch");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            let line =
                lines.next().expect("pinswitch exited before listening").expect("stdout line");
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().expect("address").to_string();
            }
        };
        // Keep draining stdout so the switch never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Switch { child, address }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(loadgen()).args(args).output().expect("running pinswitch-loadgen")
}

#[test]
fn prepare_run_validate_and_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let switch = Switch::start(&dir.path().join("data"));
    let cards = dir.path().join("cards.bin");
    let cards = cards.to_str().expect("utf-8");
    let prepared = run(&[
        "prepare",
        "--connect",
        &switch.address,
        "--cards",
        "500",
        "--face-value",
        "50000",
        "--load-won",
        "100000",
        "--cards-file",
        cards,
    ]);
    assert!(prepared.status.success(), "prepare: {}", String::from_utf8_lossy(&prepared.stderr));

    let report = dir.path().join("run.json");
    let svg = dir.path().join("run.svg");
    let hdr = dir.path().join("run.hlog");
    let ran = run(&[
        "run",
        "--connect",
        &switch.address,
        "--cards-file",
        cards,
        "--workload",
        "mix:sale=4,gateway=4,recharge=1",
        "--dist",
        "zipf:0.9",
        "--connections",
        "2",
        "--in-flight",
        "4",
        "--batch",
        "16",
        "--duration",
        "2",
        "--seed",
        "7",
        "--validate",
        "--report",
        report.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
        "--hdr",
        hdr.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "run: {stdout}\n{}", String::from_utf8_lossy(&ran.stderr));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(json["validated"], serde_json::Value::Bool(true), "{json}");
    assert!(json["ops"].as_u64().expect("ops") > 100, "{json}");
    for field in ["seconds", "ops_per_s", "p50_us", "p99_us", "p999_us", "max_us"] {
        assert!(json[field].is_number(), "{field} in {json}");
    }
    assert!(json["errors_by_code"].is_object());
    let picture = std::fs::read_to_string(&svg).expect("svg");
    assert!(picture.starts_with("<svg") || picture.starts_with("<?xml"), "an SVG document");
    assert!(std::fs::metadata(&hdr).expect("hdr log").len() > 0);

    // The cards file now holds the expected balances; a separate validate agrees.
    let validated = run(&["validate", "--connect", &switch.address, "--cards-file", cards]);
    assert!(validated.status.success(), "validate: {}", String::from_utf8_lossy(&validated.stdout));
}

/// The `calls` workload against a real switch: 200 concurrent calls over 100 cards, two
/// connections, open loop at 2,000 events a second (so about 300 simulated seconds of calls),
/// every ended call's debits checked against the production mobile tariff, and every card's
/// balance and held amount read back; then the cards file alone validates too.
#[test]
fn calls_keep_their_concurrency_and_every_won_is_accounted_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    let switch = Switch::start(&dir.path().join("data"));
    let cards = dir.path().join("cards.bin");
    let cards = cards.to_str().expect("utf-8");
    let prepared = run(&[
        "prepare",
        "--connect",
        &switch.address,
        "--cards",
        "100",
        "--face-value",
        "50000",
        "--load-won",
        "400000",
        "--cards-file",
        cards,
    ]);
    assert!(prepared.status.success(), "prepare: {}", String::from_utf8_lossy(&prepared.stderr));

    let report = dir.path().join("calls.json");
    let ran = run(&[
        "run",
        "--connect",
        &switch.address,
        "--cards-file",
        cards,
        "--workload",
        "calls",
        "--calls",
        "200",
        "--update-interval-s",
        "60",
        "--call-length",
        "exp:120",
        "--tariff",
        "10,12,6,0",
        "--connections",
        "2",
        "--in-flight",
        "2",
        "--batch",
        "16",
        "--rate",
        "2000",
        "--duration",
        "2",
        "--seed",
        "11",
        "--validate",
        "--report",
        report.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "run: {stdout}\n{}", String::from_utf8_lossy(&ran.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(json["validated"], serde_json::Value::Bool(true), "{json}");
    assert_eq!(json["errors"], 0, "{json}");
    assert_eq!(json["reply_anomalies"], 0, "{json}");
    let calls = &json["calls"];
    let count = |field: &str| calls[field].as_u64().unwrap_or_else(|| panic!("{field} in {calls}"));
    // The ramp started all 200 calls; the window started, updated and ended more.
    assert_eq!(count("ramp_sessions_started"), 200, "{calls}");
    assert!(
        count("sessions_started") > 50 && count("updates") > 50 && count("ends") > 50,
        "{calls}"
    );
    // Every call started was ended, in the window or after it, and none is left live.
    assert_eq!(
        count("ramp_sessions_started") + count("sessions_started"),
        count("ends") + count("drained_ends"),
        "{calls}"
    );
    assert_eq!(calls["left_live"], 0, "{calls}");
    // Every ended call was debited exactly what the tariff prices its seconds at.
    assert_eq!(count("calls_checked"), count("ends") + count("drained_ends"), "{calls}");
    assert_eq!(count("tariff_mismatches"), 0, "{calls}");
    assert!(calls["simulated_s"].as_f64().expect("simulated_s") > 60.0, "{calls}");
    for message in ["SESSION_START", "SESSION_UPDATE", "SESSION_END"] {
        assert!(
            json["by_message"][message]["p99_us"].as_u64().expect("p99") > 0,
            "{message} in {json}"
        );
    }
    assert!(stdout.contains("started/s"), "{stdout}");

    // The cards file now expects the debited balances; a separate validate agrees.
    let validated = run(&["validate", "--connect", &switch.address, "--cards-file", cards]);
    assert!(validated.status.success(), "validate: {}", String::from_utf8_lossy(&validated.stdout));
}
