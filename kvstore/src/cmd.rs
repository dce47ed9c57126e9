//! The commands: a table (names, arity, flags, docs — COMMAND reports it) and their
//! execution against the store. Sans I/O: a command reads its arguments, the store and the
//! shared state, and queues its reply.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::resp::out::Out;
use crate::server::shared::{ClientInfo, Shared, ThreadStats};
use crate::store::{self, glob, Cond, ExpireCond, Policy, StoreError, Ttl};

/// The version this server reports as `redis_version` (the Redis feature level it
/// implements for strings, so clients enable the matching behaviour).
pub const REDIS_VERSION: &str = "7.0.15";

/// A command's arguments: byte ranges into a buffer that is either the receive ring (in
/// place) or an owned, reference-counted assembly buffer.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    buf: &'a [u8],
    ranges: &'a [(usize, usize)],
    owner: Option<&'a Bytes>,
}

impl<'a> Args<'a> {
    /// Arguments over `buf`; `owner`, if given, is `buf` as shared bytes, so large values
    /// can be kept by reference instead of copied.
    pub fn new(buf: &'a [u8], ranges: &'a [(usize, usize)], owner: Option<&'a Bytes>) -> Args<'a> {
        Args { buf, ranges, owner }
    }

    /// Number of arguments (the command name included).
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True if there is none.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Argument `i`.
    pub fn get(&self, i: usize) -> &'a [u8] {
        let (s, e) = self.ranges[i];
        &self.buf[s..e]
    }

    /// Argument `i` as a value to store: a slice of the owned buffer when it is most of it
    /// (a large value assembled from several reads: no copy), else a copy (a value parsed
    /// in place from the receive ring, whose bytes are reused once consumed).
    pub fn value(&self, i: usize) -> Bytes {
        let (s, e) = self.ranges[i];
        match self.owner {
            Some(o) if (e - s) * 2 >= o.len() => o.slice(s..e),
            _ => Bytes::copy_from_slice(&self.buf[s..e]),
        }
    }
}

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Go on.
    Continue,
    /// Send the replies, then close (QUIT).
    Close,
}

/// One connection's command-visible state.
#[derive(Debug)]
pub struct Session {
    /// What CLIENT LIST shows (shared with other threads).
    pub info: Arc<ClientInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum C {
    Get, Set, SetNx, SetEx, PSetEx, GetSet, GetDel, GetEx, MGet, MSet, MSetNx, Del, Unlink, Exists,
    Incr, Decr, IncrBy, DecrBy, IncrByFloat, Append, StrLen, SetRange, GetRange, Substr,
    Expire, PExpire, ExpireAt, PExpireAt, Ttl, PTtl, Persist, ExpireTime, PExpireTime,
    Type, Keys, Scan, DbSize, FlushDb, FlushAll, RandomKey, Touch,
    Ping, Echo, Hello, Select, Info, Config, Command, Client, Quit, Time,
}

/// A command's static description (COMMAND reports it; dispatch checks the arity).
#[derive(Debug)]
pub struct Spec {
    /// The command.
    pub cmd: C,
    /// Its name, lowercase.
    pub name: &'static str,
    /// Arity as Redis counts it: N exactly, -N at least N (the name included).
    pub arity: i32,
    /// Flags (COMMAND's second field); `denyoom` commands check maxmemory first.
    pub flags: &'static [&'static str],
    /// First key, last key (-1: the last argument), step.
    pub keys: (i32, i32, i32),
    /// Group (COMMAND DOCS).
    pub group: &'static str,
    /// One-line summary (COMMAND DOCS).
    pub summary: &'static str,
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "fast"];
const WDF: &[&str] = &["write", "denyoom", "fast"];
const R: &[&str] = &["readonly"];
const RF: &[&str] = &["readonly", "fast"];
const A: &[&str] = &["fast"];
const ADM: &[&str] = &["admin", "noscript"];

macro_rules! spec {
    ($c:ident, $n:literal, $a:literal, $f:expr, $k:expr, $g:literal, $s:literal) => {
        Spec { cmd: C::$c, name: $n, arity: $a, flags: $f, keys: $k, group: $g, summary: $s }
    };
}

/// Every command, in the order of [`C`].
pub static SPECS: &[Spec] = &[
    spec!(Get, "get", 2, RF, (1, 1, 1), "string", "Returns the string value of a key."),
    spec!(Set, "set", -3, W, (1, 1, 1), "string", "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist."),
    spec!(SetNx, "setnx", 3, WDF, (1, 1, 1), "string", "Set the string value of a key only when the key doesn't exist."),
    spec!(SetEx, "setex", 4, W, (1, 1, 1), "string", "Sets the string value and expiration time of a key."),
    spec!(PSetEx, "psetex", 4, W, (1, 1, 1), "string", "Sets both string value and expiration time in milliseconds of a key."),
    spec!(GetSet, "getset", 3, WDF, (1, 1, 1), "string", "Returns the previous string value of a key after setting it to a new value."),
    spec!(GetDel, "getdel", 2, WF, (1, 1, 1), "string", "Returns the string value of a key after deleting the key."),
    spec!(GetEx, "getex", -2, WF, (1, 1, 1), "string", "Returns the string value of a key after setting its expiration time."),
    spec!(MGet, "mget", -2, RF, (1, -1, 1), "string", "Atomically returns the string values of one or more keys."),
    spec!(MSet, "mset", -3, W, (1, -1, 2), "string", "Sets the string values of one or more keys."),
    spec!(MSetNx, "msetnx", -3, W, (1, -1, 2), "string", "Sets the string values of one or more keys only when all keys don't exist."),
    spec!(Del, "del", -2, &["write"], (1, -1, 1), "generic", "Deletes one or more keys."),
    spec!(Unlink, "unlink", -2, WF, (1, -1, 1), "generic", "Asynchronously deletes one or more keys."),
    spec!(Exists, "exists", -2, RF, (1, -1, 1), "generic", "Determines whether one or more keys exist."),
    spec!(Incr, "incr", 2, WDF, (1, 1, 1), "string", "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist."),
    spec!(Decr, "decr", 2, WDF, (1, 1, 1), "string", "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist."),
    spec!(IncrBy, "incrby", 3, WDF, (1, 1, 1), "string", "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist."),
    spec!(DecrBy, "decrby", 3, WDF, (1, 1, 1), "string", "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist."),
    spec!(IncrByFloat, "incrbyfloat", 3, WDF, (1, 1, 1), "string", "Increment the floating point value of a key by a number. Uses 0 as initial value if the key doesn't exist."),
    spec!(Append, "append", 3, WDF, (1, 1, 1), "string", "Appends a string to the value of a key. Creates the key if it doesn't exist."),
    spec!(StrLen, "strlen", 2, RF, (1, 1, 1), "string", "Returns the length of a string value."),
    spec!(SetRange, "setrange", 4, W, (1, 1, 1), "string", "Overwrites a part of a string value with another by an offset. Creates the key if it doesn't exist."),
    spec!(GetRange, "getrange", 4, R, (1, 1, 1), "string", "Returns a substring of the string stored at a key."),
    spec!(Substr, "substr", 4, R, (1, 1, 1), "string", "Returns a substring from a string value."),
    spec!(Expire, "expire", -3, WF, (1, 1, 1), "generic", "Sets the expiration time of a key in seconds."),
    spec!(PExpire, "pexpire", -3, WF, (1, 1, 1), "generic", "Sets the expiration time of a key in milliseconds."),
    spec!(ExpireAt, "expireat", -3, WF, (1, 1, 1), "generic", "Sets the expiration time of a key to a Unix timestamp."),
    spec!(PExpireAt, "pexpireat", -3, WF, (1, 1, 1), "generic", "Sets the expiration time of a key to a Unix milliseconds timestamp."),
    spec!(Ttl, "ttl", 2, RF, (1, 1, 1), "generic", "Returns the expiration time in seconds of a key."),
    spec!(PTtl, "pttl", 2, RF, (1, 1, 1), "generic", "Returns the expiration time in milliseconds of a key."),
    spec!(Persist, "persist", 2, WF, (1, 1, 1), "generic", "Removes the expiration time of a key."),
    spec!(ExpireTime, "expiretime", 2, RF, (1, 1, 1), "generic", "Returns the expiration time of a key as a Unix timestamp."),
    spec!(PExpireTime, "pexpiretime", 2, RF, (1, 1, 1), "generic", "Returns the expiration time of a key as a Unix milliseconds timestamp."),
    spec!(Type, "type", 2, RF, (1, 1, 1), "generic", "Determines the type of value stored at a key."),
    spec!(Keys, "keys", 2, R, (0, 0, 0), "generic", "Returns all key names that match a pattern."),
    spec!(Scan, "scan", -2, R, (0, 0, 0), "generic", "Iterates over the key names in the database."),
    spec!(DbSize, "dbsize", 1, RF, (0, 0, 0), "server", "Returns the number of keys in the database."),
    spec!(FlushDb, "flushdb", -1, &["write"], (0, 0, 0), "server", "Remove all keys from the current database."),
    spec!(FlushAll, "flushall", -1, &["write"], (0, 0, 0), "server", "Removes all keys from all databases."),
    spec!(RandomKey, "randomkey", 1, R, (0, 0, 0), "generic", "Returns a random key name from the database."),
    spec!(Touch, "touch", -2, RF, (1, -1, 1), "generic", "Returns the number of existing keys out of those specified after updating the time they were last accessed."),
    spec!(Ping, "ping", -1, A, (0, 0, 0), "connection", "Returns the server's liveliness response."),
    spec!(Echo, "echo", 2, A, (0, 0, 0), "connection", "Returns the given string."),
    spec!(Hello, "hello", -1, A, (0, 0, 0), "connection", "Handshakes with the Redis server."),
    spec!(Select, "select", 2, A, (0, 0, 0), "connection", "Changes the selected database."),
    spec!(Info, "info", -1, &["loading", "stale"], (0, 0, 0), "server", "Returns information and statistics about the server."),
    spec!(Config, "config", -2, ADM, (0, 0, 0), "server", "A container for server configuration commands."),
    spec!(Command, "command", -1, &["loading", "stale"], (0, 0, 0), "server", "Returns detailed information about all commands."),
    spec!(Client, "client", -2, &["noscript"], (0, 0, 0), "connection", "A container for client connection commands."),
    spec!(Quit, "quit", -1, A, (0, 0, 0), "connection", "Closes the connection."),
    spec!(Time, "time", 1, A, (0, 0, 0), "server", "Returns the server time."),
];

/// The command named `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    if name.len() > 16 {
        return None;
    }
    let mut buf = [0u8; 16];
    for (d, s) in buf.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    let n = &buf[..name.len()];
    let c = match n {
        b"get" => C::Get,
        b"set" => C::Set,
        b"incr" => C::Incr,
        b"mset" => C::MSet,
        b"mget" => C::MGet,
        b"ping" => C::Ping,
        b"del" => C::Del,
        b"setnx" => C::SetNx,
        b"setex" => C::SetEx,
        b"psetex" => C::PSetEx,
        b"getset" => C::GetSet,
        b"getdel" => C::GetDel,
        b"getex" => C::GetEx,
        b"msetnx" => C::MSetNx,
        b"unlink" => C::Unlink,
        b"exists" => C::Exists,
        b"decr" => C::Decr,
        b"incrby" => C::IncrBy,
        b"decrby" => C::DecrBy,
        b"incrbyfloat" => C::IncrByFloat,
        b"append" => C::Append,
        b"strlen" => C::StrLen,
        b"setrange" => C::SetRange,
        b"getrange" => C::GetRange,
        b"substr" => C::Substr,
        b"expire" => C::Expire,
        b"pexpire" => C::PExpire,
        b"expireat" => C::ExpireAt,
        b"pexpireat" => C::PExpireAt,
        b"ttl" => C::Ttl,
        b"pttl" => C::PTtl,
        b"persist" => C::Persist,
        b"expiretime" => C::ExpireTime,
        b"pexpiretime" => C::PExpireTime,
        b"type" => C::Type,
        b"keys" => C::Keys,
        b"scan" => C::Scan,
        b"dbsize" => C::DbSize,
        b"flushdb" => C::FlushDb,
        b"flushall" => C::FlushAll,
        b"randomkey" => C::RandomKey,
        b"touch" => C::Touch,
        b"echo" => C::Echo,
        b"hello" => C::Hello,
        b"select" => C::Select,
        b"info" => C::Info,
        b"config" => C::Config,
        b"command" => C::Command,
        b"client" => C::Client,
        b"quit" => C::Quit,
        b"time" => C::Time,
        _ => return None,
    };
    Some(&SPECS[c as usize])
}

const E_INT: &str = "ERR value is not an integer or out of range";
const E_SYNTAX: &str = "ERR syntax error";

fn int(a: &[u8]) -> Result<i64, &'static str> {
    store::parse_i64(a).ok_or(E_INT)
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

fn lossy(a: &[u8]) -> String {
    String::from_utf8_lossy(a).into_owned()
}

/// Parse a memory size as Redis does: `100`, `1k` (1000), `1kb` (1024), `m`/`mb`, `g`/`gb`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mul)
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b < 1024.0 {
        format!("{bytes}B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.2}K", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2}M", b / 1024.0 / 1024.0)
    } else {
        format!("{:.2}G", b / 1024.0 / 1024.0 / 1024.0)
    }
}

/// Execute one command and queue its reply. `args` is not empty.
pub fn execute(args: &Args<'_>, s: &mut Session, sh: &Shared, ts: &ThreadStats, now: u64, out: &mut Out) -> After {
    let name = args.get(0);
    let Some(spec) = lookup(name) else {
        let mut msg = format!("ERR unknown command '{}', with args beginning with: ", trunc(name));
        for i in 1..args.len().min(16) {
            let _ = write!(msg, "'{}' ", trunc(args.get(i)));
        }
        out.error(&msg);
        return After::Continue;
    };
    let n = args.len() as i32;
    if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
        out.error(&format!("ERR wrong number of arguments for '{}' command", spec.name));
        return After::Continue;
    }
    ThreadStats::add(&ts.commands, 1);
    s.info.last_cmd.store(spec.cmd as usize, Ordering::Relaxed);
    s.info.last_active.store(s.info.created.elapsed().as_millis() as u64, Ordering::Relaxed);
    if spec.flags.contains(&"denyoom") {
        if let Err(e) = sh.store.make_room(now) {
            out.error(&e.to_string());
            return After::Continue;
        }
    }
    match run(spec.cmd, args, s, sh, ts, now, out) {
        Ok(a) => a,
        Err(msg) => {
            out.error(&msg);
            After::Continue
        }
    }
}

fn trunc(a: &[u8]) -> String {
    let mut s = lossy(&a[..a.len().min(128)]);
    s.retain(|c| c != '\r' && c != '\n');
    s
}

type Res = Result<After, String>;
const GO: Res = Ok(After::Continue);

fn err(e: impl ToString) -> String {
    e.to_string()
}

/// SET's options after the value (also GETEX's and SET-like commands' expiry parsing).
struct SetOpts {
    cond: Cond,
    ttl: Ttl,
    get: bool,
}

fn expire_ms(unit_ms: i64, v: &[u8], absolute: bool, now: u64, cmd: &str) -> Result<u64, String> {
    let n = int(v).map_err(err)?;
    let bad = || format!("ERR invalid expire time in '{cmd}' command");
    if n <= 0 {
        return Err(bad());
    }
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    let at = if absolute { ms } else { ms.checked_add(now as i64).ok_or_else(bad)? };
    Ok(at as u64)
}

fn set_opts(args: &Args<'_>, from: usize, now: u64, cmd: &str, allow_cond: bool) -> Result<SetOpts, String> {
    let mut o = SetOpts { cond: Cond::Always, ttl: Ttl::Persist, get: false };
    let mut have_ttl = false;
    let mut keep = false;
    let mut i = from;
    while i < args.len() {
        let a = args.get(i);
        let next = if i + 1 < args.len() { Some(args.get(i + 1)) } else { None };
        if allow_cond && eq(a, "NX") && o.cond == Cond::Always {
            o.cond = Cond::Nx;
        } else if allow_cond && eq(a, "XX") && o.cond == Cond::Always {
            o.cond = Cond::Xx;
        } else if allow_cond && eq(a, "GET") && !o.get {
            o.get = true;
        } else if eq(a, "KEEPTTL") && allow_cond && !have_ttl && !keep {
            keep = true;
            o.ttl = Ttl::Keep;
        } else if (eq(a, "EX") || eq(a, "PX") || eq(a, "EXAT") || eq(a, "PXAT")) && !have_ttl && !keep && next.is_some() {
            let (unit, abs) = if eq(a, "EX") {
                (1000, false)
            } else if eq(a, "PX") {
                (1, false)
            } else if eq(a, "EXAT") {
                (1000, true)
            } else {
                (1, true)
            };
            o.ttl = Ttl::At(expire_ms(unit, next.unwrap_or_default(), abs, now, cmd)?);
            have_ttl = true;
            i += 1;
        } else if !allow_cond && eq(a, "PERSIST") && !have_ttl {
            o.ttl = Ttl::Persist;
            keep = true;
        } else {
            return Err(E_SYNTAX.into());
        }
        i += 1;
    }
    if !allow_cond && !have_ttl && !keep {
        o.ttl = Ttl::Keep;
    }
    Ok(o)
}

fn hit(ts: &ThreadStats, found: bool) {
    ThreadStats::add(if found { &ts.hits } else { &ts.misses }, 1);
}

fn reply_value(out: &mut Out, v: Option<Bytes>) {
    match v {
        Some(v) => out.bulk_shared(v),
        None => out.null(),
    }
}

fn reply_store<T>(out: &mut Out, r: Result<T, StoreError>, f: impl FnOnce(&mut Out, T)) -> Res {
    match r {
        Ok(v) => {
            f(out, v);
            GO
        }
        Err(e) => Err(err(e)),
    }
}

#[allow(clippy::too_many_arguments)]
fn run(cmd: C, args: &Args<'_>, s: &mut Session, sh: &Shared, ts: &ThreadStats, now: u64, out: &mut Out) -> Res {
    let st = &sh.store;
    match cmd {
        C::Get => {
            // Small values are copied into the reply under the map's snapshot (no reference
            // count touched); larger ones are queued by reference.
            let found = st.read(args.get(1), now, |e| out.bulk_shared_ref(&e.value)).is_some();
            hit(ts, found);
            if !found {
                out.null();
            }
        }
        C::Set => {
            let o = set_opts(args, 3, now, "set", true)?;
            let (written, old) = st.set(args.get(1), args.value(2), o.cond, o.ttl, o.get, now);
            if o.get {
                reply_value(out, old);
            } else if written {
                out.ok();
            } else {
                out.null();
            }
        }
        C::SetNx => {
            let (w, _) = st.set(args.get(1), args.value(2), Cond::Nx, Ttl::Persist, false, now);
            out.int(w as i64);
        }
        C::SetEx | C::PSetEx => {
            let unit = if cmd == C::SetEx { 1000 } else { 1 };
            let name = if cmd == C::SetEx { "setex" } else { "psetex" };
            let at = expire_ms(unit, args.get(2), false, now, name)?;
            st.set(args.get(1), args.value(3), Cond::Always, Ttl::At(at), false, now);
            out.ok();
        }
        C::GetSet => {
            let (_, old) = st.set(args.get(1), args.value(2), Cond::Always, Ttl::Persist, true, now);
            reply_value(out, old);
        }
        C::GetDel => {
            let v = st.remove(args.get(1), now);
            hit(ts, v.is_some());
            reply_value(out, v);
        }
        C::GetEx => {
            let o = set_opts(args, 2, now, "getex", false)?;
            let key = args.get(1);
            let v = st.get(key, now);
            hit(ts, v.is_some());
            if v.is_some() {
                match o.ttl {
                    Ttl::Keep => {}
                    Ttl::Persist => {
                        st.persist(key, now);
                    }
                    Ttl::At(at) => {
                        st.expire_at(key, at, ExpireCond::Always, now);
                    }
                }
            }
            reply_value(out, v);
        }
        C::MGet => {
            out.array(args.len() - 1);
            for i in 1..args.len() {
                let found = st.read(args.get(i), now, |e| out.bulk_shared_ref(&e.value)).is_some();
                hit(ts, found);
                if !found {
                    out.null();
                }
            }
        }
        C::MSet | C::MSetNx => {
            if args.len() & 1 == 0 {
                return Err(format!("ERR wrong number of arguments for '{}' command", if cmd == C::MSet { "mset" } else { "msetnx" }));
            }
            if cmd == C::MSet {
                for i in (1..args.len()).step_by(2) {
                    st.set(args.get(i), args.value(i + 1), Cond::Always, Ttl::Persist, false, now);
                }
                out.ok();
            } else {
                let pairs: Vec<(&[u8], Bytes)> = (1..args.len()).step_by(2).map(|i| (args.get(i), args.value(i + 1))).collect();
                out.int(st.msetnx(&pairs, now) as i64);
            }
        }
        C::Del | C::Unlink => {
            let n = (1..args.len()).filter(|&i| st.del(args.get(i), now)).count();
            out.int(n as i64);
        }
        C::Exists | C::Touch => {
            let n = (1..args.len()).filter(|&i| st.exists(args.get(i), now)).count();
            out.int(n as i64);
        }
        C::Incr | C::Decr | C::IncrBy | C::DecrBy => {
            let d = match cmd {
                C::Incr => 1,
                C::Decr => -1,
                C::IncrBy => int(args.get(2)).map_err(err)?,
                _ => {
                    let d = int(args.get(2)).map_err(err)?;
                    d.checked_neg().ok_or_else(|| err("ERR decrement would overflow"))?
                }
            };
            return reply_store(out, st.incr_by(args.get(1), d, now), |o, n| o.int(n));
        }
        C::IncrByFloat => {
            let d = store::parse_f64(args.get(2)).ok_or_else(|| err(StoreError::NotFloat))?;
            return reply_store(out, st.incr_by_float(args.get(1), d, now), |o, v| o.bulk(&v));
        }
        C::Append => {
            return reply_store(out, st.append(args.get(1), args.get(2), now), |o, n| o.int(n as i64));
        }
        C::StrLen => {
            let n = st.read(args.get(1), now, |e| e.value.len()).unwrap_or(0);
            out.int(n as i64);
        }
        C::SetRange => {
            let off = int(args.get(2)).map_err(err)?;
            if off < 0 {
                return Err("ERR offset is out of range".into());
            }
            return reply_store(out, st.setrange(args.get(1), off as usize, args.get(3), now), |o, n| o.int(n as i64));
        }
        C::GetRange | C::Substr => {
            let (mut a, mut b) = (int(args.get(2)).map_err(err)?, int(args.get(3)).map_err(err)?);
            let v = st.get(args.get(1), now).unwrap_or_default();
            let len = v.len() as i64;
            if (a < 0 && b < 0 && a > b) || len == 0 {
                out.bulk(b"");
                return GO;
            }
            if a < 0 {
                a += len;
            }
            if b < 0 {
                b += len;
            }
            a = a.max(0);
            b = b.max(0).min(len - 1);
            if a > b {
                out.bulk(b"");
            } else {
                out.bulk_shared(v.slice(a as usize..=b as usize));
            }
        }
        C::Expire | C::PExpire | C::ExpireAt | C::PExpireAt => {
            let (unit, abs, name) = match cmd {
                C::Expire => (1000i64, false, "expire"),
                C::PExpire => (1, false, "pexpire"),
                C::ExpireAt => (1000, true, "expireat"),
                _ => (1, true, "pexpireat"),
            };
            let n = int(args.get(2)).map_err(err)?;
            let bad = || format!("ERR invalid expire time in '{name}' command");
            let ms = n.checked_mul(unit).ok_or_else(bad)?;
            let at = if abs { ms } else { ms.checked_add(now as i64).ok_or_else(bad)? };
            let mut cond = ExpireCond::Always;
            for i in 3..args.len() {
                let a = args.get(i);
                let c = if eq(a, "NX") {
                    ExpireCond::Nx
                } else if eq(a, "XX") {
                    ExpireCond::Xx
                } else if eq(a, "GT") {
                    ExpireCond::Gt
                } else if eq(a, "LT") {
                    ExpireCond::Lt
                } else {
                    return Err(format!("ERR Unsupported option {}", lossy(a)));
                };
                if cond != ExpireCond::Always && cond != c {
                    return Err("ERR NX and XX, GT or LT options at the same time are not compatible".into());
                }
                cond = c;
            }
            let at = if at <= 0 { 0 } else { at as u64 };
            out.int(st.expire_at(args.get(1), at, cond, now) as i64);
        }
        C::Ttl => {
            let t = st.pttl(args.get(1), now);
            out.int(if t < 0 { t } else { (t + 500) / 1000 });
        }
        C::PTtl => out.int(st.pttl(args.get(1), now)),
        C::ExpireTime => {
            let t = st.expire_time(args.get(1), now);
            out.int(if t < 0 { t } else { (t + 500) / 1000 });
        }
        C::PExpireTime => out.int(st.expire_time(args.get(1), now)),
        C::Persist => out.int(st.persist(args.get(1), now) as i64),
        C::Type => out.simple(if st.exists(args.get(1), now) { "string" } else { "none" }),
        C::Keys => {
            let keys = st.keys(Some(args.get(1)), now);
            out.array(keys.len());
            for k in keys {
                out.bulk_shared(k);
            }
        }
        C::Scan => {
            let cursor: u64 = std::str::from_utf8(args.get(1)).ok().and_then(|c| c.parse().ok()).ok_or_else(|| err("ERR invalid cursor"))?;
            let mut pattern = None;
            let mut count = 10usize;
            let mut only_none = false;
            let mut i = 2;
            while i < args.len() {
                let a = args.get(i);
                if i + 1 >= args.len() {
                    return Err(E_SYNTAX.into());
                }
                if eq(a, "MATCH") {
                    pattern = Some(args.get(i + 1));
                } else if eq(a, "COUNT") {
                    let c = int(args.get(i + 1)).map_err(err)?;
                    if c < 1 {
                        return Err(E_SYNTAX.into());
                    }
                    count = c as usize;
                } else if eq(a, "TYPE") {
                    only_none = !eq(args.get(i + 1), "string");
                } else {
                    return Err(E_SYNTAX.into());
                }
                i += 2;
            }
            let pattern = pattern.filter(|p| *p != b"*");
            let mut keys = Vec::new();
            let next = st.scan(cursor, pattern, count, now, &mut keys);
            if only_none {
                keys.clear();
            }
            out.array(2);
            out.bulk(next.to_string().as_bytes());
            out.array(keys.len());
            for k in keys {
                out.bulk_shared(k);
            }
        }
        C::DbSize => out.int(st.len() as i64),
        C::FlushDb | C::FlushAll => {
            if args.len() > 2 || (args.len() == 2 && !eq(args.get(1), "ASYNC") && !eq(args.get(1), "SYNC")) {
                return Err(E_SYNTAX.into());
            }
            st.flush(now);
            out.ok();
        }
        C::RandomKey => reply_value(out, st.random_key(now)),
        C::Ping => match args.len() {
            1 => out.simple("PONG"),
            2 => out.bulk(args.get(1)),
            _ => return Err("ERR wrong number of arguments for 'ping' command".into()),
        },
        C::Echo => out.bulk(args.get(1)),
        C::Select => {
            let db = int(args.get(1)).map_err(|_| err(E_INT))?;
            if db != 0 {
                return Err("ERR DB index is out of range".into());
            }
            out.ok();
        }
        C::Hello => return hello(args, s, out),
        C::Info => {
            let text = info(args, sh);
            out.verbatim(&text);
        }
        C::Config => return config(args, sh, out),
        C::Command => return command(args, out),
        C::Client => return client(args, s, sh, out),
        C::Quit => {
            out.ok();
            return Ok(After::Close);
        }
        C::Time => {
            out.array(2);
            out.bulk((now / 1000).to_string().as_bytes());
            let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_micros());
            out.bulk(micros.to_string().as_bytes());
        }
    }
    GO
}

fn hello(args: &Args<'_>, s: &mut Session, out: &mut Out) -> Res {
    let mut proto = if out.resp3 { 3 } else { 2 };
    let mut i = 1;
    if args.len() > 1 {
        match int(args.get(1)) {
            Ok(2) => proto = 2,
            Ok(3) => proto = 3,
            _ => return Err("NOPROTO unsupported protocol version".into()),
        }
        i = 2;
    }
    while i < args.len() {
        let a = args.get(i);
        if eq(a, "AUTH") && i + 2 < args.len() {
            // No authentication is configured: the default user needs no password (as
            // redis-server without requirepass).
            i += 3;
        } else if eq(a, "SETNAME") && i + 1 < args.len() {
            set_name(s, args.get(i + 1))?;
            i += 2;
        } else {
            return Err(format!("ERR Syntax error in HELLO option '{}'", lossy(a)));
        }
    }
    out.resp3 = proto == 3;
    s.info.resp.store(proto as u8, Ordering::Relaxed);
    out.map(7);
    out.bulk(b"server");
    out.bulk(b"redis");
    out.bulk(b"version");
    out.bulk(REDIS_VERSION.as_bytes());
    out.bulk(b"proto");
    out.int(proto);
    out.bulk(b"id");
    out.int(s.info.id as i64);
    out.bulk(b"mode");
    out.bulk(b"standalone");
    out.bulk(b"role");
    out.bulk(b"master");
    out.bulk(b"modules");
    out.array(0);
    GO
}

fn set_name(s: &mut Session, name: &[u8]) -> Result<(), String> {
    if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err("ERR Client names cannot contain spaces, newlines or special characters.".into());
    }
    *s.info.name.lock().unwrap_or_else(|e| e.into_inner()) = lossy(name);
    Ok(())
}

/// CLIENT LIST's line for one client.
pub fn client_line(c: &ClientInfo) -> String {
    let name = c.name.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (lib_name, lib_ver) = c.lib.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let age = c.created.elapsed();
    let idle = age.as_millis() as u64 - c.last_active.load(Ordering::Relaxed).min(age.as_millis() as u64);
    let cmd = SPECS.get(c.last_cmd.load(Ordering::Relaxed)).map_or("NULL", |s| s.name);
    format!(
        "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={} thread={}",
        c.id, c.addr, c.laddr, name, age.as_secs(), idle / 1000, cmd, c.resp.load(Ordering::Relaxed), lib_name, lib_ver, c.thread
    )
}

fn client(args: &Args<'_>, s: &mut Session, sh: &Shared, out: &mut Out) -> Res {
    let sub = args.get(1);
    if eq(sub, "SETNAME") && args.len() == 3 {
        set_name(s, args.get(2))?;
        out.ok();
    } else if eq(sub, "GETNAME") && args.len() == 2 {
        let name = s.info.name.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if name.is_empty() {
            out.null();
        } else {
            out.bulk(name.as_bytes());
        }
    } else if eq(sub, "ID") && args.len() == 2 {
        out.int(s.info.id as i64);
    } else if eq(sub, "LIST") {
        let mut ids: Option<Vec<u64>> = None;
        let mut i = 2;
        while i < args.len() {
            if eq(args.get(i), "TYPE") && i + 1 < args.len() {
                if !eq(args.get(i + 1), "normal") {
                    ids = Some(Vec::new());
                }
                i += 2;
            } else if eq(args.get(i), "ID") && i + 1 < args.len() {
                let mut v = Vec::new();
                for j in i + 1..args.len() {
                    v.push(int(args.get(j)).ok().filter(|n| *n > 0).ok_or_else(|| err("ERR Invalid client ID"))? as u64);
                }
                ids = Some(v);
                i = args.len();
            } else {
                return Err(E_SYNTAX.into());
            }
        }
        let mut text = String::new();
        for c in sh.clients() {
            if ids.as_ref().is_none_or(|v| v.contains(&c.id)) {
                text.push_str(&client_line(&c));
                text.push('\n');
            }
        }
        out.verbatim(&text);
    } else if eq(sub, "INFO") && args.len() == 2 {
        out.verbatim(&(client_line(&s.info) + "\n"));
    } else if eq(sub, "SETINFO") && args.len() == 4 {
        let v = lossy(args.get(3));
        if v.contains(|c: char| c == ' ' || c.is_control()) {
            return Err("ERR lib-name or lib-ver cannot contain spaces, newlines or special characters.".into());
        }
        let mut lib = s.info.lib.lock().unwrap_or_else(|e| e.into_inner());
        if eq(args.get(2), "LIB-NAME") {
            lib.0 = v;
        } else if eq(args.get(2), "LIB-VER") {
            lib.1 = v;
        } else {
            return Err(format!("ERR Unrecognized option '{}'", lossy(args.get(2))));
        }
        out.ok();
    } else if (eq(sub, "NO-EVICT") || eq(sub, "NO-TOUCH")) && args.len() == 3 {
        out.ok();
    } else {
        return Err(format!("ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.", lossy(sub)));
    }
    GO
}

/// CONFIG GET's parameters with their current values.
fn config_params(sh: &Shared) -> Vec<(&'static str, String)> {
    let st = &sh.store;
    vec![
        ("maxmemory", st.maxmemory().to_string()),
        ("maxmemory-policy", st.policy().name().to_string()),
        ("maxmemory-samples", st.samples().to_string()),
        ("save", sh.runtime.save.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        ("appendonly", "no".into()),
        ("port", sh.info.port.to_string()),
        ("bind", "*".into()),
        ("databases", "1".into()),
        ("hz", sh.runtime.hz.load(Ordering::Relaxed).to_string()),
        ("timeout", "0".into()),
        ("tcp-keepalive", "0".into()),
        ("maxclients", sh.runtime.maxclients.load(Ordering::Relaxed).to_string()),
        ("proto-max-bulk-len", crate::resp::parse::MAX_BULK.to_string()),
        ("io-threads", sh.info.threads.to_string()),
        ("threads", sh.info.threads.to_string()),
        ("backend", sh.info.backend.to_string()),
    ]
}

fn config(args: &Args<'_>, sh: &Shared, out: &mut Out) -> Res {
    let sub = args.get(1);
    if eq(sub, "GET") && args.len() >= 3 {
        let params = config_params(sh);
        let mut hits: Vec<&(&str, String)> = Vec::new();
        for i in 2..args.len() {
            let pat = args.get(i).to_ascii_lowercase();
            for p in &params {
                if glob::matches(&pat, p.0.as_bytes()) && !hits.iter().any(|h| h.0 == p.0) {
                    hits.push(p);
                }
            }
        }
        out.map(hits.len());
        for (k, v) in hits {
            out.bulk(k.as_bytes());
            out.bulk(v.as_bytes());
        }
    } else if eq(sub, "SET") && args.len() >= 4 && args.len() & 1 == 0 {
        // Validate everything first, then apply (CONFIG SET of several pairs is atomic).
        let mut apply: Vec<Box<dyn FnOnce()>> = Vec::new();
        for i in (2..args.len()).step_by(2) {
            let key = lossy(args.get(i)).to_ascii_lowercase();
            let val = lossy(args.get(i + 1));
            let bad = || format!("ERR CONFIG SET failed (possibly related to argument '{key}') - argument couldn't be parsed into an integer");
            match key.as_str() {
                "maxmemory" => {
                    let v = parse_size(&val).ok_or_else(bad)?;
                    apply.push(Box::new(move || sh.store.set_maxmemory(v)));
                }
                "maxmemory-policy" => {
                    let p = Policy::parse(&val).ok_or_else(|| format!("ERR CONFIG SET failed (possibly related to argument '{key}') - argument(s) must be one of the following: noeviction, allkeys-lru, volatile-lru, allkeys-random, volatile-random, volatile-ttl"))?;
                    apply.push(Box::new(move || sh.store.set_policy(p)));
                }
                "maxmemory-samples" => {
                    let v: usize = val.parse().ok().filter(|v| (1..=64).contains(v)).ok_or_else(bad)?;
                    apply.push(Box::new(move || sh.store.set_samples(v)));
                }
                "hz" => {
                    let v: u64 = val.parse().ok().filter(|v| (1..=500).contains(v)).ok_or_else(bad)?;
                    apply.push(Box::new(move || sh.runtime.hz.store(v, Ordering::Relaxed)));
                }
                "maxclients" => {
                    let v: u64 = val.parse().ok().filter(|v| *v >= 1).ok_or_else(bad)?;
                    apply.push(Box::new(move || sh.runtime.maxclients.store(v, Ordering::Relaxed)));
                }
                "save" => apply.push(Box::new(move || *sh.runtime.save.lock().unwrap_or_else(|e| e.into_inner()) = val)),
                "appendonly" if val.eq_ignore_ascii_case("no") => {}
                "timeout" | "tcp-keepalive" if val == "0" => {}
                _ => return Err(format!("ERR Unknown option or number of arguments for CONFIG SET - '{key}'")),
            }
        }
        for f in apply {
            f();
        }
        out.ok();
    } else if eq(sub, "RESETSTAT") && args.len() == 2 {
        out.ok();
    } else {
        return Err(format!("ERR unknown subcommand or wrong number of arguments for '{}'. Try CONFIG HELP.", lossy(sub)));
    }
    GO
}

fn command_info(out: &mut Out, s: &Spec) {
    out.array(10);
    out.bulk(s.name.as_bytes());
    out.int(s.arity as i64);
    out.set(s.flags.len());
    for f in s.flags {
        out.simple(f);
    }
    out.int(s.keys.0 as i64);
    out.int(s.keys.1 as i64);
    out.int(s.keys.2 as i64);
    out.set(0);
    out.set(0);
    out.array(0);
    out.array(0);
}

fn command_doc(out: &mut Out, s: &Spec) {
    out.bulk(s.name.as_bytes());
    out.map(4);
    out.bulk(b"summary");
    out.bulk(s.summary.as_bytes());
    out.bulk(b"since");
    out.bulk(b"1.0.0");
    out.bulk(b"group");
    out.bulk(s.group.as_bytes());
    out.bulk(b"complexity");
    out.bulk(b"O(1)");
}

fn command(args: &Args<'_>, out: &mut Out) -> Res {
    if args.len() == 1 {
        out.array(SPECS.len());
        for s in SPECS {
            command_info(out, s);
        }
        return GO;
    }
    let sub = args.get(1);
    if eq(sub, "COUNT") && args.len() == 2 {
        out.int(SPECS.len() as i64);
    } else if eq(sub, "LIST") {
        out.array(SPECS.len());
        for s in SPECS {
            out.bulk(s.name.as_bytes());
        }
    } else if eq(sub, "INFO") {
        if args.len() == 2 {
            out.array(SPECS.len());
            for s in SPECS {
                command_info(out, s);
            }
        } else {
            out.array(args.len() - 2);
            for i in 2..args.len() {
                match lookup(args.get(i)) {
                    Some(s) => command_info(out, s),
                    None => out.null(),
                }
            }
        }
    } else if eq(sub, "DOCS") {
        if args.len() == 2 {
            out.map(SPECS.len());
            for s in SPECS {
                command_doc(out, s);
            }
        } else {
            let found: Vec<&Spec> = (2..args.len()).filter_map(|i| lookup(args.get(i))).collect();
            out.map(found.len());
            for s in found {
                command_doc(out, s);
            }
        }
    } else {
        return Err(format!("ERR unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.", lossy(sub)));
    }
    GO
}

/// The INFO text for the sections asked for.
pub fn info(args: &Args<'_>, sh: &Shared) -> String {
    let mut want: Vec<String> = (1..args.len()).map(|i| lossy(args.get(i)).to_ascii_lowercase()).collect();
    if want.is_empty() || want.iter().any(|w| w == "default" || w == "all" || w == "everything") {
        want = ["server", "clients", "memory", "persistence", "stats", "replication", "keyspace"].map(String::from).to_vec();
    }
    let st = &sh.store;
    let mut t = String::new();
    let uptime = sh.started.elapsed().as_secs();
    for w in &want {
        match w.as_str() {
            "server" => {
                let _ = write!(
                    t,
                    "# Server\r\nredis_version:{REDIS_VERSION}\r\ntas_kv_version:{}\r\nredis_mode:standalone\r\nos:{} {}\r\narch_bits:64\r\nmultiplexing_api:{}\r\nbackend:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\nhz:{}\r\nthreads:{}\r\nthread_cpus:{}\r\nreattaches:{}\r\nexecutable:{}\r\nconfig_file:{}\r\n\r\n",
                    env!("CARGO_PKG_VERSION"),
                    std::env::consts::OS,
                    std::env::consts::ARCH,
                    if sh.info.backend == "tas" { "libtas" } else { "epoll" },
                    sh.info.backend,
                    std::process::id(),
                    sh.info.port,
                    uptime,
                    uptime / 86400,
                    sh.runtime.hz.load(Ordering::Relaxed),
                    sh.info.threads,
                    sh.info.pinned.iter().map(|p| p.map_or("-".to_string(), |c| c.to_string())).collect::<Vec<_>>().join(","),
                    sh.reattaches.load(Ordering::Relaxed),
                    std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default(),
                    sh.info.config_file.clone().unwrap_or_default(),
                );
            }
            "clients" => {
                let per_thread: Vec<String> = sh.threads.iter().map(|ts| ts.connections.load(Ordering::Relaxed).to_string()).collect();
                let _ = write!(
                    t,
                    "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:0\r\nbackend:{}\r\nconnections_per_thread:{}\r\n\r\n",
                    sh.client_count(),
                    sh.runtime.maxclients.load(Ordering::Relaxed),
                    sh.info.backend,
                    per_thread.join(","),
                );
            }
            "memory" => {
                let used = st.used_memory();
                let rss = rss_bytes();
                let max = st.maxmemory();
                let _ = write!(
                    t,
                    "# Memory\r\nused_memory:{used}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\nused_memory_rss_human:{}\r\nmaxmemory:{max}\r\nmaxmemory_human:{}\r\nmaxmemory_policy:{}\r\nmaxmemory_samples:{}\r\nmem_allocator:libc\r\n\r\n",
                    human(used),
                    human(rss),
                    human(max),
                    st.policy().name(),
                    st.samples(),
                );
            }
            "persistence" => t.push_str("# Persistence\r\nloading:0\r\nrdb_changes_since_last_save:0\r\nrdb_bgsave_in_progress:0\r\naof_enabled:0\r\n\r\n"),
            "replication" => t.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n"),
            "stats" => {
                let _ = write!(
                    t,
                    "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\ntotal_net_input_bytes:{}\r\ntotal_net_output_bytes:{}\r\nrejected_connections:{}\r\nexpired_keys:{}\r\nevicted_keys:{}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\ncommands_per_thread:{}\r\n\r\n",
                    sh.total_connections.load(Ordering::Relaxed),
                    sh.sum(|t| &t.commands),
                    sh.sum(|t| &t.net_in),
                    sh.sum(|t| &t.net_out),
                    sh.rejected_connections.load(Ordering::Relaxed),
                    st.stats.expired_keys.load(Ordering::Relaxed),
                    st.stats.evicted_keys.load(Ordering::Relaxed),
                    sh.sum(|t| &t.hits),
                    sh.sum(|t| &t.misses),
                    sh.threads.iter().map(|ts| ts.commands.load(Ordering::Relaxed).to_string()).collect::<Vec<_>>().join(","),
                );
            }
            "keyspace" => {
                t.push_str("# Keyspace\r\n");
                if !st.is_empty() {
                    let _ = write!(t, "db0:keys={},expires={},avg_ttl=0\r\n", st.len(), st.expires());
                }
                t.push_str("\r\n");
            }
            _ => {}
        }
    }
    while t.ends_with("\r\n\r\n") {
        t.truncate(t.len() - 2);
    }
    t
}

/// Resident set size of this process, from /proc/self/statm (0 if unreadable).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_order_matches_the_enum() {
        for (i, s) in SPECS.iter().enumerate() {
            assert_eq!(s.cmd as usize, i, "{}", s.name);
            assert_eq!(lookup(s.name.as_bytes()).map(|x| x.name), Some(s.name));
            assert_eq!(lookup(s.name.to_uppercase().as_bytes()).map(|x| x.name), Some(s.name));
        }
        assert!(lookup(b"nosuch").is_none());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100mb"), Some(100 << 20));
        assert_eq!(parse_size("1gb"), Some(1 << 30));
        assert_eq!(parse_size("1k"), Some(1000));
        assert_eq!(parse_size("42"), Some(42));
        assert_eq!(parse_size("1tb"), None);
        assert_eq!(parse_size("x"), None);
    }
}
