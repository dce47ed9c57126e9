//! Configuration: the command line and a TOML file with the same keys (the command line
//! wins). Example file:
//!
//! ```toml
//! port = 6379
//! threads = 1
//! backend = "tas"            # or "kernel"
//! maxmemory = "100mb"        # 0: no limit
//! maxmemory-policy = "allkeys-lru"
//! maxmemory-samples = 5
//! hz = 10
//! maxclients = 10000
//! pin = [1]                  # CPU of each thread
//! socket = "/run/tas/tasd.sock"
//! ```

use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

use crate::cmd::parse_size;
use crate::store::Policy;

/// Which TCP stack serves the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The TAS service, through libtas.
    Tas,
    /// The kernel's sockets, through epoll.
    Kernel,
}

/// `tas-kv`'s command line.
#[derive(Debug, Parser)]
#[command(name = "tas-kv", version, about = "A Redis-protocol key-value server on the TAS native API (or the kernel's sockets)")]
pub struct Cli {
    /// TCP port to listen on [default: 6379].
    #[arg(long)]
    pub port: Option<u16>,
    /// Server threads, each with its own libtas context or epoll loop [default: 1].
    #[arg(long)]
    pub threads: Option<usize>,
    /// TCP stack: tas (libtas, needs a running tasd) or kernel [default: tas].
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Memory limit for keys and values, e.g. 100mb, 1gb; 0 for none [default: 0].
    #[arg(long)]
    pub maxmemory: Option<String>,
    /// What to do at the limit: noeviction, allkeys-lru, volatile-lru, allkeys-random,
    /// volatile-random, volatile-ttl [default: noeviction].
    #[arg(long)]
    pub maxmemory_policy: Option<String>,
    /// Pin thread i to the i-th CPU of this comma-separated list.
    #[arg(long, value_delimiter = ',')]
    pub pin: Option<Vec<usize>>,
    /// tasd's app socket [default: $TAS_SOCKET, else /run/tas/tasd.sock].
    #[arg(long, env = "TAS_SOCKET")]
    pub socket: Option<PathBuf>,
    /// A TOML file with the same keys (maxmemory-policy, maxmemory-samples, hz and
    /// maxclients too).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The TOML file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    port: Option<u16>,
    threads: Option<usize>,
    backend: Option<Backend>,
    maxmemory: Option<toml::Value>,
    maxmemory_policy: Option<String>,
    maxmemory_samples: Option<usize>,
    hz: Option<u64>,
    maxclients: Option<u64>,
    pin: Option<Vec<usize>>,
    socket: Option<PathBuf>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP port.
    pub port: u16,
    /// Server threads.
    pub threads: usize,
    /// TCP stack.
    pub backend: Backend,
    /// Memory limit in bytes (0: none).
    pub maxmemory: u64,
    /// Eviction policy.
    pub maxmemory_policy: Policy,
    /// Keys sampled per eviction.
    pub maxmemory_samples: usize,
    /// Active expiry cycles per second.
    pub hz: u64,
    /// Most clients at once.
    pub maxclients: u64,
    /// CPU per thread.
    pub pin: Vec<usize>,
    /// tasd's app socket (None: libtas's default lookup).
    pub socket: Option<PathBuf>,
    /// The configuration file, if any.
    pub config_file: Option<String>,
}

impl Config {
    /// Merge the command line over the file it names (if any) over the defaults.
    pub fn load(cli: Cli) -> Result<Config, String> {
        let file = match &cli.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read the configuration file {}: {e}", p.display()))?;
                toml::from_str::<FileConfig>(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let FileConfig { port, threads, backend, maxmemory, maxmemory_policy, maxmemory_samples, hz, maxclients, pin, socket } = file;
        let maxmemory = match (cli.maxmemory, maxmemory) {
            (Some(s), _) => parse_size(&s).ok_or_else(|| format!("--maxmemory {s}: not a size (use e.g. 100mb, 1gb, or 0)"))?,
            (None, Some(toml::Value::Integer(n))) if n >= 0 => n as u64,
            (None, Some(toml::Value::String(s))) => parse_size(&s).ok_or_else(|| format!("maxmemory = {s:?}: not a size (use e.g. \"100mb\")"))?,
            (None, Some(v)) => return Err(format!("maxmemory = {v}: give a size such as \"100mb\" or a number of bytes")),
            (None, None) => 0,
        };
        let policy_name = cli.maxmemory_policy.or(maxmemory_policy).unwrap_or_else(|| "noeviction".into());
        let maxmemory_policy = Policy::parse(&policy_name).ok_or_else(|| {
            let names: Vec<&str> = Policy::ALL.iter().map(|(_, n)| *n).collect();
            format!("maxmemory-policy {policy_name}: unknown; use one of {}", names.join(", "))
        })?;
        let threads = cli.threads.or(threads).unwrap_or(1);
        if threads == 0 || threads > 256 {
            return Err(format!("threads = {threads}: use 1 to 256"));
        }
        let cfg = Config {
            port: cli.port.or(port).unwrap_or(6379),
            threads,
            backend: cli.backend.or(backend).unwrap_or(Backend::Tas),
            maxmemory,
            maxmemory_policy,
            maxmemory_samples: maxmemory_samples.unwrap_or(5).clamp(1, 64),
            hz: hz.unwrap_or(10).clamp(1, 500),
            maxclients: maxclients.unwrap_or(10_000).max(1),
            pin: cli.pin.or(pin).unwrap_or_default(),
            socket: cli.socket.or(socket),
            config_file: cli.config.map(|p| p.display().to_string()),
        };
        if cfg.port == 0 {
            return Err("port 0: give the port to listen on".into());
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_command_line() {
        let dir = std::env::temp_dir().join(format!("tas-kv-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("kv.toml");
        std::fs::write(&f, "port = 7000\nthreads = 2\nbackend = \"kernel\"\nmaxmemory = \"100mb\"\nmaxmemory-policy = \"allkeys-lru\"\npin = [0, 1]\n").unwrap();
        let cli = Cli::parse_from(["tas-kv", "--config", f.to_str().unwrap(), "--port", "7001"]);
        let c = Config::load(cli).unwrap();
        assert_eq!((c.port, c.threads, c.backend, c.maxmemory), (7001, 2, Backend::Kernel, 100 << 20));
        assert_eq!(c.maxmemory_policy, Policy::AllKeysLru);
        assert_eq!(c.pin, vec![0, 1]);
        std::fs::write(&f, "prot = 1\n").unwrap();
        let e = Config::load(Cli::parse_from(["tas-kv", "--config", f.to_str().unwrap()])).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = Config::load(Cli::parse_from(["tas-kv", "--maxmemory", "lots"])).unwrap_err();
        assert!(e.contains("not a size"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
