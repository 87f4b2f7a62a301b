//! The upgrade path: today's binaries take over a data directory written by the release before
//! formats were numbered (commit 664341c). `tests/data/upgrade/664341c/` was made by
//! `tests/data/upgrade/make.sh` with that release's own binaries: two shards whose journals
//! (64 KiB segments) lie behind a snapshot of each shard in image format 0, `keys.bin` version
//! 2, the exporter's state with shadow files version 3, and `cards.txt`, what that release's
//! `card show` said of each of its six cards at the end. Each start runs on a copy, once with
//! the snapshots and once without them (a snapshot only shortens recovery, so both must give
//! the same cards): the old records replay in engine format 1, each shard journals its upgrade
//! to format 2, new sales draw keyed approval codes, a restart replays both formats (and reads
//! the image format 1 snapshot the new binary wrote), and today's exporter follows on from the
//! old state, whose shadow engines must take the upgrade record to answer as the switch did.

use std::path::{Path, PathBuf};

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{Category, ResultCode, Sale, new_op_id};
use pinswitch_tests::{Switch, code, fresh_dir, one, run_binary, switch_binary};

const EXPORTER: &str = env!("CARGO_BIN_EXE_pinswitch-exporter");
const PASSWORD: &[u8] = b"4321";
const RELEASE: &str = "664341c";

/// The release's directory: `data/`, `switch.toml`, `cards.txt`.
fn release_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/upgrade").join(RELEASE)
}

/// A copy of `from` at `to`, directories 0700 and files 0600 as the switch makes them (a
/// checkout gives 0755 and 0644), as a restore from a backup would lay it down.
fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).expect("create the copy");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    for entry in std::fs::read_dir(from).expect("read the release's directory") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
    }
}

/// One line of `cards.txt`: a card as the old release last showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Card {
    pin: String,
    state: String,
    balance_won: u64,
    tries_left: u8,
}

fn release_cards() -> Vec<Card> {
    let text = std::fs::read_to_string(release_dir().join("cards.txt")).expect("cards.txt");
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 4, "odd line {line:?}");
            Card {
                pin: fields[0].to_owned(),
                state: fields[1].to_owned(),
                balance_won: fields[2].parse().expect("a balance"),
                tries_left: fields[3].parse().expect("tries left"),
            }
        })
        .collect()
}

/// What today's `card show` says of `pin`.
fn show(switch: &Switch, pin: &str) -> Card {
    let server = switch_binary(EXPORTER);
    let server = server.to_str().expect("utf-8");
    let (ok, text) = run_binary(server, &["card", "show", pin, "--connect", &switch.address]);
    assert!(ok, "card show {pin}: {text}");
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name).map(|rest| rest.split_whitespace().next()))
            .flatten()
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_owned()
    };
    Card {
        pin: pin.to_owned(),
        state: field("state "),
        balance_won: field("balance ").parse().expect("a balance"),
        tries_left: field("password ").parse().expect("tries left"),
    }
}

/// `(snapshot seq, records replayed)` of each shard's "recovered" line, by shard.
fn recovered(switch: &Switch) -> Vec<(u64, u64)> {
    switch.recovered(2).iter().map(|report| (report.snapshot_seq, report.replayed)).collect()
}

/// `pinswitch-exporter ARGS --data DIR` (the state in DIR/export): its output, which must
/// say it succeeded.
fn exporter(args: &[&str], data: &Path) -> String {
    let mut all = args.to_vec();
    all.extend(["--data", data.to_str().expect("utf-8")]);
    let (ok, text) = run_binary(EXPORTER, &all);
    assert!(ok, "pinswitch-exporter {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todays_binaries_take_over_a_data_directory_of_the_previous_release() {
    let server = switch_binary(EXPORTER);
    let config = release_dir().join("switch.toml");
    let config = config.to_str().expect("utf-8");
    let cards = release_cards();
    assert_eq!(cards.len(), 6);
    for with_snapshots in [true, false] {
        let dir = fresh_dir(&format!("upgrade-{with_snapshots}"));
        copy_tree(&release_dir().join("data"), &dir);
        if !with_snapshots {
            for shard in ["shard-000", "shard-001"] {
                for entry in std::fs::read_dir(dir.join(shard)).expect("a shard directory") {
                    let path = entry.expect("an entry").path();
                    if path.extension().is_some_and(|extension| extension == "snap") {
                        std::fs::remove_file(path).expect("remove a snapshot");
                    }
                }
            }
        }

        let mut switch = Switch::start(&server, &dir, &["--config", config]);
        // The release took a snapshot at record 6 of each shard (snapshot_every_records = 6)
        // and wrote 10 and 9 records.
        let first = recovered(&switch);
        let expected_first =
            if with_snapshots { vec![(6, 4), (6, 3)] } else { vec![(0, 10), (0, 9)] };
        assert_eq!(first, expected_first);
        for card in &cards {
            assert_eq!(&show(&switch, &card.pin), card, "as the release left it");
        }

        // New sales on the two cards that still pay: approved under format 2's keyed codes.
        let client = Client::connect(&switch.address).await.expect("connect");
        let mut expected = cards.clone();
        // Both cards live on shard 0 (the release's keys place them there).
        for index in [0, 2] {
            let pin: u64 = cards[index].pin.replace('-', "").parse().expect("a PIN");
            let sale = Sale {
                op_id: new_op_id(),
                pin,
                password: PASSWORD.to_vec(),
                amount_won: 500,
                merchant_id: 7,
                category: Category::TelephoneCall as u8,
            };
            let result = one(client.sale(&[sale]).await).await;
            assert_eq!(code(&result), ResultCode::Approved, "{result:?}");
            assert!((100_000..1_000_000).contains(&result.approval_code), "{result:?}");
            expected[index].balance_won -= 500;
            assert_eq!(result.balance_won, expected[index].balance_won);
        }
        drop(client);
        switch.stop();

        // A restart replays the old records in format 1, the upgrade, and the new sales in
        // format 2 (the sales' replies, approval codes included, must come out the same).
        let mut switch = Switch::start(&server, &dir, &["--config", config]);
        // Whichever snapshot the restart read (one a stop interrupted is not there), each
        // shard's journal ends one UPGRADE (and on shard 0 two sales) after the release's end.
        let second = recovered(&switch);
        let last_seq: Vec<u64> = second.iter().map(|(seq, replayed)| seq + replayed).collect();
        assert_eq!(last_seq, vec![10 + 1 + 2, 9 + 1], "{second:?}");
        for shard in ["shard-000", "shard-001"] {
            for entry in std::fs::read_dir(dir.join(shard)).expect("a shard directory") {
                let path = entry.expect("an entry").path();
                let name = path.file_name().expect("a name").to_string_lossy().to_string();
                let Some(seq) =
                    name.strip_prefix("snapshot-").and_then(|n| n.strip_suffix(".snap"))
                else {
                    continue;
                };
                let seq: u64 = seq.parse().expect("a seq");
                let header = std::fs::read(&path).expect("read a snapshot");
                let image_format = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
                // The release's snapshots at record 6 say 0 there; today's say today's.
                let today = pinswitch_core::SNAPSHOT_IMAGE_FORMAT;
                assert_eq!(image_format, if seq > 6 { today } else { 0 }, "{name}");
            }
        }
        for card in &expected {
            assert_eq!(&show(&switch, &card.pin), card, "after the restart");
        }
        switch.stop();

        // Today's exporter resumes the release's state (shadow files version 3) and follows
        // the upgrade record and the new sales; its shadow engines answer as the switch did.
        let run = exporter(&["run"], &dir);
        assert!(run.contains("applied "), "{run}");
        let status = exporter(&["status"], &dir);
        assert!(status.contains("reconciled"), "{status}");
        assert!(status.contains("0 differ"), "{status}");
        // And it reads back the state it wrote (shadow files version 5).
        let shadows = std::fs::read_dir(dir.join("export/shadows")).expect("shadows");
        for shadow in shadows {
            let bytes = std::fs::read(shadow.expect("a shadow").path()).expect("read a shadow");
            assert_eq!(&bytes[..8], b"PSEXPSH5");
            let image_format = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
            assert_eq!(image_format, pinswitch_core::SNAPSHOT_IMAGE_FORMAT);
        }
        let again = exporter(&["run"], &dir);
        assert!(again.contains("applied 0 records"), "{again}");
    }
}
