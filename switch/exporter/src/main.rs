//! `pinswitch-exporter`: the settlement exporter's own binary. It reads the switch's data
//! directory (journals, `shards.count`, `keys.bin`) and never links the switch: settlement is
//! never on the hot path, in the process table and in the dependency graph alike. The commands
//! are in `cli/`, the logic in this crate's library (EXPORT.md).

#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    match cli::main() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("pinswitch-exporter: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
