//! The running configuration and its changes while tasd runs: `tasctl config set`
//! (the control API's `SetConfig`) and SIGHUP (re-read the file, keep the flags).
//!
//! Keys that can change live ([`crate::config::KEYS`] with `live`): `log_level` (the log
//! filter, swapped in place), `time_wait_ms` and `arp_reply` (sent to the slow-path
//! thread), `fp_active` and the `fp_scale_*` marks (stored in the fast path's
//! [`tas_fastpath::shard::ScaleState`]). Every other key needs a restart: `SetConfig` refuses it and names it; SIGHUP
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
    /// The fast path's thread scaling (tasd with more than one fast-path shard).
    scale: std::sync::OnceLock<std::sync::Arc<tas_fastpath::shard::ScaleState>>,
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
        LiveConfig { current: Mutex::new(current), file, flags, log, slow, scale: std::sync::OnceLock::new() }
    }

    /// The running configuration.
    pub fn current(&self) -> Config {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Apply `fp_active` and the `fp_scale_*` marks to `scale` from now on.
    pub fn set_scale(&self, scale: std::sync::Arc<tas_fastpath::shard::ScaleState>) {
        let _ = self.scale.set(scale);
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
        if let Some(sc) = self.scale.get() {
            if new.scale_params() != cur.scale_params() {
                sc.set_params(new.scale_params());
            }
            if new.fp_active != cur.fp_active {
                sc.set_forced(new.fp_active as usize);
            }
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }
}

/// The keys that can change while tasd runs, comma separated.
pub fn live_keys() -> String {
    crate::config::KEYS.iter().filter(|k| k.live).map(|k| k.key).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    fn setup(file_text: &str, flags: FileConfig) -> (LiveConfig, crossbeam_channel::Receiver<Query>, Arc<StdMutex<Vec<String>>>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("tas-live-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tasd.toml");
        std::fs::write(&path, file_text).unwrap();
        let cfg = FileConfig::load(&path).unwrap().merge(flags.clone()).validate().unwrap();
        let (tx, rx) = crossbeam_channel::bounded(8);
        let levels = Arc::new(StdMutex::new(Vec::new()));
        let seen = levels.clone();
        let log: LogReload = Box::new(move |l: &str| {
            seen.lock().unwrap().push(l.to_string());
            Ok(())
        });
        (LiveConfig::new(cfg, Some(path.clone()), flags, Some(log), tx), rx, levels, path)
    }

    const BASE: &str = "interface = \"eth1\"\nip = \"10.0.0.1/24\"\n";

    #[test]
    fn set_applies_live_keys_and_refuses_the_others() {
        let (live, rx, levels, _) = setup(BASE, FileConfig::default());
        let a = live.set("log_level", "debug").unwrap();
        assert_eq!(a.applied, ["log_level"]);
        assert_eq!(*levels.lock().unwrap(), ["debug"]);
        assert!(rx.try_recv().is_err(), "the slow path has nothing to do for the log level");
        live.set("time_wait_ms", "2000").unwrap();
        match rx.try_recv() {
            Ok(Query::SetLive { time_wait, .. }) => assert_eq!(time_wait, Duration::from_millis(2000)),
            other => panic!("{other:?}"),
        }
        let e = live.set("fp_cores", "2").unwrap_err();
        assert!(e.contains("fp_cores cannot change while tasd runs") && e.contains("time_wait_ms"), "{e}");
        assert_eq!(live.current().fp_cores, 1);
        assert!(live.set("bogus", "1").unwrap_err().contains("unknown configuration key"));
    }

    #[test]
    fn reload_applies_the_file_and_reports_restarts_and_overrides() {
        let flags = FileConfig { log_level: Some("warn".into()), ..FileConfig::default() };
        let (live, rx, levels, path) = setup(BASE, flags);
        std::fs::write(&path, format!("{BASE}time_wait_ms = 500\nqueue_entries = 64\nlog_level = \"trace\"\n")).unwrap();
        let r = live.reload().unwrap();
        assert_eq!(r.applied, ["time_wait_ms"]);
        assert_eq!(r.need_restart, ["queue_entries"]);
        assert_eq!(r.overridden, ["log_level"]);
        assert!(levels.lock().unwrap().is_empty(), "--log-level wins over the file");
        assert!(matches!(rx.try_recv(), Ok(Query::SetLive { .. })));
        let c = live.current();
        assert_eq!((c.time_wait_ms, c.queue_entries, c.log_level.as_str()), (500, 1024, "warn"));
        std::fs::write(&path, "fp_cores = \"many\"\n").unwrap();
        assert!(live.reload().unwrap_err().contains("fp_cores"));
        assert_eq!(live.current().time_wait_ms, 500, "a bad file changes nothing");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
