//! The running configuration and its changes while tasd runs: `tasctl config set`
//! (the control API's `SetConfig`) and SIGHUP (re-read the file, keep the flags).
//!
//! Keys that can change live ([`crate::config::KEYS`] with `live`): `log_level` (the log
//! filter, swapped in place), `time_wait_ms` and `arp_reply` (sent to the slow-path
//! thread). Every other key needs a restart: `SetConfig` refuses it and names it; SIGHUP
//! applies what it can and logs which changed keys wait for a restart, and which keys of
//! the file a command-line flag overrides (flags win, on reload as at start).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::config::{Config, FileConfig, KeyInfo};
use crate::grpc::Query;

/// Swaps the log filter (a `tracing_subscriber::reload` handle behind a closure).
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Where the configuration came from and how to change it.
pub struct LiveConfig {
    current: Mutex<Config>,
    file: Option<PathBuf>,
    flags: FileConfig,
    log: Option<LogReload>,
    slow: Sender<Query>,
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConfig").field("file", &self.file).finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Keys changed now.
    pub applied: Vec<&'static str>,
    /// Keys that changed but need a restart (not applied).
    pub need_restart: Vec<&'static str>,
    /// Keys the file sets that a command-line flag sets too (the flag wins).
    pub overridden: Vec<&'static str>,
}

/// The ARP policy as the slow path applies it: `auto` answers only when the kernel does
/// not own the address (then the kernel answers).
pub fn resolve_arp_reply(setting: Option<bool>, ip: Ipv4Addr) -> bool {
    setting.unwrap_or_else(|| !crate::service::kernel_owns(ip))
}

impl LiveConfig {
    /// The configuration `current`, read from `file` (if any) overlaid with `flags`.
    pub fn new(current: Config, file: Option<PathBuf>, flags: FileConfig, log: Option<LogReload>, slow: Sender<Query>) -> Self {
        LiveConfig { current: Mutex::new(current), file, flags, log, slow }
    }

    /// The running configuration.
    pub fn current(&self) -> Config {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The configuration file, if tasd was started with one.
    pub fn file(&self) -> Option<&PathBuf> {
        self.file.as_ref()
    }

    /// Set one key (TOML spelling). Refuses keys that need a restart, naming them.
    pub fn set(&self, key: &str, value: &str) -> Result<Applied, String> {
        let cur = self.current();
        let new = cur.with_key(key, value).map_err(|e| e.to_string())?;
        let changed = cur.changed_keys(&new);
        if let Some(k) = changed.iter().find(|k| !k.live) {
            return Err(format!(
                "{} cannot change while tasd runs: put it in the configuration file and restart tasd (systemctl restart tasd); live keys: {}",
                k.key,
                live_keys()
            ));
        }
        self.apply(&cur, new, &changed)?;
        Ok(Applied { applied: changed.iter().map(|k| k.key).collect(), need_restart: Vec::new(), overridden: Vec::new() })
    }

    /// SIGHUP: read the file again, overlay the command-line flags, apply the live keys.
    pub fn reload(&self) -> Result<Applied, String> {
        let Some(path) = &self.file else {
            return Err("tasd was started without --config: nothing to reload".into());
        };
        let file = FileConfig::load(path).map_err(|e| e.to_string())?;
        let flag_keys = self.flags.set_keys();
        let overridden = file.set_keys().into_iter().filter(|k| flag_keys.contains(k)).collect();
        let new = file.merge(self.flags.clone()).validate().map_err(|e| e.to_string())?;
        let cur = self.current();
        let changed = cur.changed_keys(&new);
        let (live, restart): (Vec<KeyInfo>, Vec<KeyInfo>) = changed.into_iter().partition(|k| k.live);
        // Keep the running values of the keys that need a restart.
        let mut merged = cur.clone();
        for k in &live {
            let value = new.entries().into_iter().find(|(e, _)| e.key == k.key).map(|(_, v)| v).unwrap_or_default();
            merged = merged.with_key(k.key, &value).map_err(|e| e.to_string())?;
        }
        self.apply(&cur, merged, &live)?;
        Ok(Applied {
            applied: live.iter().map(|k| k.key).collect(),
            need_restart: restart.iter().map(|k| k.key).collect(),
            overridden,
        })
    }

    fn apply(&self, cur: &Config, new: Config, changed: &[KeyInfo]) -> Result<(), String> {
        if changed.is_empty() {
            return Ok(());
        }
        if new.log_level != cur.log_level {
            match &self.log {
                Some(f) => f(&new.log_level)?,
                None => return Err("this tasd cannot change its log filter while running".into()),
            }
        }
        if new.time_wait_ms != cur.time_wait_ms || new.arp_reply != cur.arp_reply {
            let arp = resolve_arp_reply(new.arp_reply, new.ip);
            self.slow
                .try_send(Query::SetLive { time_wait: Duration::from_millis(new.time_wait_ms), arp_reply: arp })
                .map_err(|_| "the slow path is busy or shutting down; try again".to_string())?;
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }
}

/// The keys that can change while tasd runs, comma separated.
pub fn live_keys() -> String {
    crate::config::KEYS.iter().filter(|k| k.live).map(|k| k.key).collect::<Vec<_>>().join(", ")
}
