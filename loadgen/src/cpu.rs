//! CPU accounting of a run: the generator's own CPU time (user + system, all its threads) and,
//! with `--server-pid`, the switch's, sampled at the start and the end of the measured window
//! from `/proc/PID/stat`. On a small machine the generator shares the cores with the switch, so
//! what it costs per operation bounds what the switch can be shown to do; the switch's CPU per
//! operation is what an optimisation of the switch should move.
//!
//! `/proc` is read rather than `getrusage` so both processes are measured the same way and no
//! `unsafe` FFI is needed; its resolution is one clock tick (10 ms), a fraction of a percent of
//! a window of seconds.

use std::time::Instant;

/// Clock ticks per second of `/proc/PID/stat` times: the kernel's `USER_HZ`, fixed at 100 on the
/// architectures we run on (it is what `sysconf(_SC_CLK_TCK)` answers on Linux).
const CLOCK_TICKS_PER_S: u64 = 100;
const US_PER_TICK: u64 = 1_000_000 / CLOCK_TICKS_PER_S;

/// User plus system CPU time, in clock ticks, of a `/proc/PID/stat` line: fields 14 (utime) and
/// 15 (stime). The second field, the command name in parentheses, may itself hold spaces and
/// parentheses, so fields are counted after the *last* `)`.
pub(crate) fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // After the comm: field 3 (state) is index 0, so utime (14) is index 11 and stime (15) 12.
    let mut fields = after_comm.split_ascii_whitespace().skip(11);
    let utime_ticks: u64 = fields.next()?.parse().ok()?;
    let stime_ticks: u64 = fields.next()?.parse().ok()?;
    utime_ticks.checked_add(stime_ticks)
}

/// CPU time (user + system, every thread, µs) of a process so far: `None` for this process, else
/// the pid. Errors name the file read.
pub(crate) fn process_cpu_us(pid: Option<u32>) -> Result<u64, String> {
    let path = match pid {
        None => "/proc/self/stat".to_owned(),
        Some(pid) => format!("/proc/{pid}/stat"),
    };
    let stat =
        std::fs::read_to_string(&path).map_err(|error| format!("reading {path}: {error}"))?;
    let ticks =
        parse_stat_cpu_ticks(&stat).ok_or_else(|| format!("{path}: no CPU times in {stat:?}"))?;
    Ok(ticks.saturating_mul(US_PER_TICK))
}

/// One sample of both processes' CPU time.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    loadgen_cpu_us: Option<u64>,
    server_cpu_us: Option<u64>,
}

/// The CPU the generator and the switch used over the measured window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CpuFigures {
    /// Wall time between the two samples.
    pub window_s: Option<f64>,
    pub loadgen_cpu_s: Option<f64>,
    pub server_cpu_s: Option<f64>,
}

impl CpuFigures {
    /// CPU microseconds per operation of `cpu_s` over `ops` operations.
    pub(crate) fn us_per_op(cpu_s: Option<f64>, ops: u64) -> Option<f64> {
        cpu_s.filter(|_| ops > 0).map(|cpu_s| cpu_s * 1e6 / ops as f64)
    }
}

/// Samples at the start of the window and at its end. A process whose `/proc` file cannot be
/// read at either instant (not Linux, or the switch is gone) is reported as unknown.
#[derive(Debug)]
pub(crate) struct CpuWindow {
    server_pid: Option<u32>,
    from: Option<Sample>,
    to: Option<Sample>,
}

impl CpuWindow {
    /// Fails when `server_pid` cannot be read now, so a mistyped pid stops the run before it
    /// starts instead of leaving the report without the switch's figures.
    pub(crate) fn new(server_pid: Option<u32>) -> Result<CpuWindow, String> {
        if server_pid.is_some() {
            process_cpu_us(server_pid)?;
        }
        Ok(CpuWindow { server_pid, from: None, to: None })
    }

    fn sample(&self) -> Sample {
        let server_cpu_us = self.server_pid.and_then(|pid| match process_cpu_us(Some(pid)) {
            Ok(cpu_us) => Some(cpu_us),
            Err(error) => {
                eprintln!("run: --server-pid {pid}: {error}; the switch's CPU is not reported");
                None
            }
        });
        Sample { at: Instant::now(), loadgen_cpu_us: process_cpu_us(None).ok(), server_cpu_us }
    }

    pub(crate) fn started(&self) -> bool {
        self.from.is_some()
    }

    pub(crate) fn finished(&self) -> bool {
        self.to.is_some()
    }

    /// Takes the window's first sample (once).
    pub(crate) fn start(&mut self) {
        if self.from.is_none() {
            self.from = Some(self.sample());
        }
    }

    /// Takes the window's last sample (once, and only after the first).
    pub(crate) fn finish(&mut self) {
        if self.from.is_some() && self.to.is_none() {
            self.to = Some(self.sample());
        }
    }

    pub(crate) fn figures(&self) -> CpuFigures {
        let (Some(from), Some(to)) = (self.from, self.to) else {
            return CpuFigures::default();
        };
        let seconds = |from_us: Option<u64>, to_us: Option<u64>| {
            Some(to_us?.saturating_sub(from_us?) as f64 / 1e6)
        };
        CpuFigures {
            window_s: Some(to.at.saturating_duration_since(from.at).as_secs_f64()),
            loadgen_cpu_s: seconds(from.loadgen_cpu_us, to.loadgen_cpu_us),
            server_cpu_s: seconds(from.server_cpu_us, to.server_cpu_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        // Fields 14 and 15 are 1500 and 250 ticks.
        let tail = "S 1 1234 1234 0 -1 4194560 100 0 0 0 1500 250 0 0 20 0 9 0 123 456 789";
        assert_eq!(parse_stat_cpu_ticks(&format!("1234 (pinswitch) {tail}")), Some(1750));
        assert_eq!(parse_stat_cpu_ticks(&format!("1234 (my (odd) name) {tail}")), Some(1750));
        assert_eq!(parse_stat_cpu_ticks(&format!("1234 (a) b) c) {tail}")), Some(1750));
        assert_eq!(parse_stat_cpu_ticks(&format!("1234 ( ) {tail}\n")), Some(1750));
        assert_eq!(parse_stat_cpu_ticks("1234 (short) S 1 2 3"), None);
        assert_eq!(parse_stat_cpu_ticks("no parenthesis at all"), None);
        assert_eq!(parse_stat_cpu_ticks(&format!("1234 (x) {}", tail.replace("1500", "-1"))), None);
    }

    #[test]
    fn this_process_has_a_cpu_time_and_a_window_measures_it() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        assert!(process_cpu_us(None).is_ok());
        assert!(CpuWindow::new(Some(u32::MAX)).is_err());
        let own_pid = std::process::id();
        let mut window = CpuWindow::new(Some(own_pid)).expect("own pid readable");
        window.finish();
        assert!(!window.finished(), "a window ends only after it started");
        assert_eq!(window.figures(), CpuFigures::default());
        window.start();
        window.finish();
        let figures = window.figures();
        assert!(figures.window_s.is_some_and(|window_s| window_s >= 0.0));
        assert!(figures.loadgen_cpu_s.is_some_and(|cpu_s| cpu_s >= 0.0));
        assert!(figures.server_cpu_s.is_some_and(|cpu_s| cpu_s >= 0.0));
    }

    #[test]
    fn cpu_per_op_needs_operations() {
        assert_eq!(CpuFigures::us_per_op(Some(1.5), 300_000), Some(5.0));
        assert_eq!(CpuFigures::us_per_op(Some(1.5), 0), None);
        assert_eq!(CpuFigures::us_per_op(None, 10), None);
    }
}
