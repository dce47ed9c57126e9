//! `tas-kv`: the Redis-protocol key-value server.
//!
//! ```text
//! tas-kv --port 6379 --threads 1 --backend tas|kernel --maxmemory 100mb [--config FILE]
//! ```
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tas_kvstore::config::{Cli, Config};

fn main() -> ExitCode {
    let cfg = match Config::load(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tas-kv: {e}");
            return ExitCode::from(2);
        }
    };
    let running = match tas_kvstore::server::start(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tas-kv: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "tas-kv: ready: port {} backend {:?} threads {} maxmemory {} policy {} pinned {:?}",
        cfg.port,
        cfg.backend,
        cfg.threads,
        cfg.maxmemory,
        cfg.maxmemory_policy.name(),
        cfg.pin
    );
    match running.join() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tas-kv: {e}");
            ExitCode::FAILURE
        }
    }
}
