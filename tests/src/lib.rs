//! Shared helpers for the end-to-end tests: start the real `pinswitch` binary on a fresh data
//! directory, learn its address from its "listening on" line, and stop it gracefully or with
//! SIGKILL; find the switch binary for the exporter's tests, which belong to another package.
//! Tests wait on the process's own output, never on sleeps.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a switch may take to recover and listen before a test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running switch process.
/// What one shard's "recovered" line at start says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub snapshot_seq: u64,
    pub replayed: u64,
    pub cards: u64,
}

pub struct Switch {
    child: Option<Child>,
    pub address: String,
    pub data_dir: PathBuf,
    /// Standard-output lines after the "listening on" one.
    output: mpsc::Receiver<String>,
    /// Standard-output lines up to and including the "listening on" one.
    startup: Vec<String>,
}

impl Switch {
    /// Starts `binary serve` on `data_dir` (created if absent) on a free loopback port.
    pub fn start(binary: &Path, data_dir: &Path, extra: &[&str]) -> Switch {
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--data")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--shards", "2"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("spawning pinswitch");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, address) = mpsc::channel();
        let (later_lines, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut announced = false;
            let mut startup = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !announced {
                    let address = line
                        .split("listening on ")
                        .nth(1)
                        .map(|rest| rest.split_whitespace().next().unwrap_or_default().to_string());
                    startup.push(line);
                    if let Some(address) = address {
                        let _ = lines.send((address, std::mem::take(&mut startup)));
                        announced = true;
                    }
                } else {
                    let _ = later_lines.send(line);
                }
            }
        });
        let (address, startup) =
            address.recv_timeout(START_TIMEOUT).expect("pinswitch did not start listening");
        Switch { child: Some(child), address, data_dir: data_dir.to_path_buf(), output, startup }
    }

    /// The shards' "recovered" lines of this start, by shard id: each of the `shards` shards
    /// must have exactly one.
    pub fn recovered(&self, shards: usize) -> Vec<Recovered> {
        let mut found: Vec<Option<Recovered>> = vec![None; shards];
        for line in self.startup_lines() {
            // "pinswitch: shard N recovered: snapshot at record S, R records replayed, C cards
            // (journal scan A ms, snapshot decode B ms, replay D ms)"
            let Some(rest) = line.strip_prefix("pinswitch: shard ") else { continue };
            let Some((shard, rest)) = rest.split_once(" recovered: snapshot at record ") else {
                continue;
            };
            let (counts, timings) = rest.split_once(" cards (").unwrap_or((rest, ""));
            let numbers = |text: &str| -> Vec<u64> {
                text.split(|c: char| !c.is_ascii_digit())
                    .filter(|part| !part.is_empty())
                    .map(|part| part.parse().expect("a number"))
                    .collect()
            };
            let numbers_of_timings = numbers(timings);
            let numbers = numbers(counts);
            assert!(
                counts.contains(" records replayed, ")
                    && numbers.len() == 3
                    && timings.starts_with("journal scan ")
                    && timings.ends_with(" ms)")
                    && numbers_of_timings.len() == 3,
                "odd line {line:?}"
            );
            let shard: usize = shard.parse().expect("a shard id");
            assert!(shard < found.len(), "shard {shard} of {shards}: {line:?}");
            assert!(
                found[shard].is_none(),
                "shard {shard} recovered twice: {:?}",
                self.startup_lines()
            );
            found[shard] = Some(Recovered {
                snapshot_seq: numbers[0],
                replayed: numbers[1],
                cards: numbers[2],
            });
        }
        found
            .into_iter()
            .enumerate()
            .map(|(shard, report)| {
                report.unwrap_or_else(|| {
                    panic!("no recovered line for shard {shard}: {:?}", self.startup_lines())
                })
            })
            .collect()
    }

    /// The standard-output lines printed up to and including the "listening on" one (the
    /// shards' "recovered" lines among them), in order.
    pub fn startup_lines(&self) -> &[String] {
        &self.startup
    }

    /// Sends a signal by name (e.g. "HUP") to the switch.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("the switch is running");
        let status = Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .expect("sending a signal");
        assert!(status.success());
    }

    /// Waits for the next standard-output line containing `needle` (earlier ones are skipped)
    /// and returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        loop {
            let line = self
                .output
                .recv_timeout(START_TIMEOUT)
                .unwrap_or_else(|_| panic!("no line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// SIGKILL: no chance to flush anything, exactly like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("killing pinswitch");
            child.wait().expect("reaping pinswitch");
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("sending SIGTERM");
            assert!(status.success());
            let exit = child.wait().expect("reaping pinswitch");
            assert!(exit.success(), "pinswitch exited with {exit}");
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("polling pinswitch").is_none(),
            None => false,
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `pinswitch` binary for the tests of another package (the exporter's end-to-end tests, given
/// `env!("CARGO_BIN_EXE_pinswitch-exporter")`). Cargo hands a test the binaries of its own package
/// only, and the exporter may not depend on the server, so the switch is looked for beside
/// `own_binary`, in the same target directory. `cargo test --workspace` builds the binaries of
/// every package it tests, the switch's too, before it runs a test; `cargo test -p
/// pinswitch-exporter` builds only the exporter's, so a switch binary that is missing, or older
/// than a source file it is built from, is a panic naming the command that builds it, never a test
/// run against an old switch.
pub fn switch_binary(own_binary: &str) -> PathBuf {
    let binary = Path::new(own_binary).with_file_name("pinswitch");
    let build = "build it with `cargo build -p pinswitch-server --bin pinswitch`, or run \
                 `cargo test --workspace`, which builds it before any test runs";
    let Ok(built) = std::fs::metadata(&binary).and_then(|meta| meta.modified()) else {
        panic!("the switch binary {} is not built: {build}", binary.display())
    };
    if let Some(source) = source_newer_than(&binary.with_extension("d"), built) {
        panic!(
            "the switch binary {} is older than {}: {build}",
            binary.display(),
            source.display()
        );
    }
    binary
}

/// A source file newer than `built` among those a dep-info file (cargo writes `NAME.d` beside
/// each binary: `NAME: source source …`) lists: cargo's own list, so a file cargo does not build
/// from never counts. A source dated in the future (a clock step, an unpacked archive) says
/// nothing about the binary and does not count either.
fn source_newer_than(dep_info: &Path, built: std::time::SystemTime) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dep_info).ok()?;
    let (_, sources) = text.lines().next()?.split_once(": ")?;
    let now = std::time::SystemTime::now();
    // Make escapes a space in a path as "\ ".
    let sources = sources.replace("\\ ", "\0");
    sources
        .split(' ')
        .filter(|source| !source.is_empty())
        .map(|source| source.replace('\0', " "))
        .map(PathBuf::from)
        .find(|source| {
            std::fs::metadata(source)
                .and_then(|meta| meta.modified())
                .is_ok_and(|modified| modified > built && modified <= now)
        })
}

/// A fresh, empty directory for one test's data.
pub fn fresh_dir(name: &str) -> TestDir {
    let dir = std::env::temp_dir().join(format!("pinswitch-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a test directory");
    TestDir(dir)
}

/// A test's data directory, removed when the test ends (pass or fail) together with the files
/// beside it that share its name (`dir.with_extension("toml")` and the like): journal segments
/// are preallocated, so every leftover directory keeps 64 MiB or more of disk per shard.
pub struct TestDir(PathBuf);

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let (Some(parent), Some(name)) =
            (self.0.parent(), self.0.file_name().and_then(|name| name.to_str()))
        else {
            return;
        };
        let prefix = format!("{name}.");
        if let Ok(entries) = std::fs::read_dir(parent) {
            for entry in entries.flatten() {
                if entry.file_name().to_str().is_some_and(|file| file.starts_with(&prefix)) {
                    let _ = std::fs::remove_file(entry.path())
                        .or_else(|_| std::fs::remove_dir_all(entry.path()));
                }
            }
        }
    }
}

/// Deterministic PRNG for tests (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// The result code of an `OpResult`.
pub fn code(result: &pinswitch_protocol::OpResult) -> pinswitch_protocol::ResultCode {
    pinswitch_protocol::ResultCode::from_u16(result.code).expect("known code")
}

/// The single result of a one-event call.
pub async fn one<T>(results: Result<Vec<T>, pinswitch_protocol::client::ClientError>) -> T {
    let mut results = results.expect("request succeeds");
    assert_eq!(results.len(), 1);
    results.remove(0)
}

/// Runs `binary` with `args` to its end: whether it succeeded, and its stdout then stderr.
pub fn run_binary(binary: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(binary).args(args).output().expect("running the binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `pinswitch tls init` into `certs` with one client certificate per name, then the `[tls]`
/// section for mutual TLS with them and `[access] plain = "off"`, as configuration lines (the
/// caller adds `[[access.identities]]`).
pub fn mutual_tls_config(binary: &str, certs: &Path, clients: &[&str]) -> Vec<String> {
    let certs_arg = certs.to_string_lossy().to_string();
    let mut args = vec!["tls", "init", "--dir", certs_arg.as_str()];
    for client in clients {
        args.extend(["--client", client]);
    }
    let (ok, out) = run_binary(binary, &args);
    assert!(ok, "tls init: {out}");
    let pem = |name: &str| certs.join(name).to_string_lossy().to_string();
    vec![
        "[tls]".to_string(),
        format!("cert_pem = {:?}", pem("switch.pem")),
        format!("key_pem = {:?}", pem("switch.key")),
        format!("client_ca_pem = {:?}", pem("ca.pem")),
        "[access]".to_string(),
        "plain = \"off\"".to_string(),
    ]
}

/// The client's TLS for identity `name` of a `mutual_tls_config` directory (`None`: no client
/// certificate).
pub fn tls_client(certs: &Path, name: Option<&str>) -> pinswitch_protocol::tls::TlsClient {
    let cert =
        name.map(|name| (certs.join(format!("{name}.pem")), certs.join(format!("{name}.key"))));
    pinswitch_protocol::tls::TlsClient::from_pem_files(
        &certs.join("ca.pem"),
        cert.as_ref().map(|(cert, key)| (cert.as_path(), key.as_path())),
        "localhost",
    )
    .expect("the client's TLS files")
}

/// The `[[access.identities]]` table of `name` with `roles`, plus `extra` lines of it.
pub fn identity_lines(name: &str, roles: &[&str], extra: &[String]) -> Vec<String> {
    let mut lines = vec![
        "[[access.identities]]".to_string(),
        format!("name = {name:?}"),
        format!("roles = {roles:?}"),
    ];
    lines.extend_from_slice(extra);
    lines
}

impl Switch {
    /// Writes `config` (lines) to `dir/switch.toml` and starts a switch on `dir/data` with it
    /// and `extra` arguments.
    pub fn start_with_config(
        binary: &Path,
        dir: &Path,
        config: &[String],
        extra: &[&str],
    ) -> Switch {
        let path = dir.join("switch.toml");
        std::fs::write(&path, config.join("\n")).expect("writing the config");
        let path = path.to_string_lossy().to_string();
        let mut args = vec!["--config", path.as_str()];
        args.extend_from_slice(extra);
        Switch::start(binary, &dir.join("data"), &args)
    }
}

/// The password every test card is activated with.
pub const TEST_PASSWORD: &[u8] = b"pass1234";

/// Issues `count` cards of `face_value_won` and activates them with [`TEST_PASSWORD`]; returns
/// their PINs. Panics unless every card was issued and activated.
pub async fn issue_active_cards(
    client: &pinswitch_protocol::client::Client,
    count: usize,
    face_value_won: u64,
) -> Vec<u64> {
    use pinswitch_protocol::{CardActivate, CardIssue, new_op_id};
    let issue: Vec<CardIssue> =
        (0..count).map(|_| CardIssue { op_id: new_op_id(), face_value_won }).collect();
    let issued = client.card_issue(&issue).await.expect("issue");
    assert!(issued.iter().all(|result| result.code == 0), "{issued:?}");
    let pins: Vec<u64> = issued.iter().map(|result| result.pin).collect();
    let activate: Vec<CardActivate> = pins
        .iter()
        .map(|pin| CardActivate { op_id: new_op_id(), pin: *pin, password: TEST_PASSWORD.to_vec() })
        .collect();
    let activated = client.card_activate(&activate).await.expect("activate");
    assert!(activated.iter().all(|result| result.code == 0), "{activated:?}");
    pins
}

/// A SALE of `amount_won` at merchant 1, with [`TEST_PASSWORD`].
pub fn test_sale(
    op_id: u128,
    pin: u64,
    amount_won: u64,
    category: pinswitch_protocol::Category,
) -> pinswitch_protocol::Sale {
    pinswitch_protocol::Sale {
        op_id,
        pin,
        password: TEST_PASSWORD.to_vec(),
        amount_won,
        merchant_id: 1,
        category: category as u8,
    }
}

impl Switch {
    /// The operators' HTTP address from the start-up lines ("pinswitch: HTTP on ADDR ...").
    pub fn http_address(&self) -> String {
        self.startup_lines()
            .iter()
            .find_map(|line| line.strip_prefix("pinswitch: HTTP on "))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no HTTP line: {:?}", self.startup_lines()))
    }
}

/// Sends `request` (a whole HTTP/1.1 request) to `address` and returns the status code and
/// the body of the answer (the switch closes after one).
pub fn http_request(address: &str, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connecting to the HTTP port");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    stream.write_all(request).expect("sending the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("reading the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an answer with a head");
    let code = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status");
    (code, body.to_string())
}

/// GET `path` from the switch's HTTP port.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    http_request(address, format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
}

/// The sum of every sample of metric `name` whose labels contain each of `labels` (such as
/// `type="SALE"`), over all shards.
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let matches = (rest.is_empty() || rest.starts_with('{'))
                && labels.iter().all(|label| rest.contains(label));
            matches.then(|| value.parse::<u64>().ok()).flatten()
        })
        .sum()
}

/// Writes `text` as the switch configuration beside `dir` (`dir.toml`, removed with it) and
/// returns its path for `--config`.
pub fn config_beside(dir: &TestDir, text: &str) -> String {
    let path = dir.with_extension("toml");
    std::fs::write(&path, text).expect("writing the config");
    path.to_str().expect("a UTF-8 path").to_string()
}
