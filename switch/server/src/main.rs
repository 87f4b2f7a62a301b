//! `pinswitch`: the switch binary and its operator CLI. `pinswitch serve` recovers the data
//! directory and serves the binary protocol over TCP; `pinswitch card …` talks to a running
//! switch through the same protocol (via the client library) as any gateway would.

#![forbid(unsafe_code)]

mod access;
mod adapter_listener;
mod cli;
mod clock;
mod config;
mod conn;
mod diameter;
mod http;
mod iso8583;
mod keys;
mod metrics;
mod native;
mod push;
mod quic;
mod retention;
mod runtime;
mod shard_loop;
mod tls;

fn main() -> std::process::ExitCode {
    match cli::main() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("pinswitch: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
