//! `libtas_preload.so`: an LD_PRELOAD shim that runs the AF_INET/SOCK_STREAM sockets of
//! unmodified programs on tasd, through libtas's native API. Every other descriptor and
//! address family passes to libc untouched.
//!
//! ```sh
//! LD_PRELOAD=target/release/libtas_preload.so TAS_SOCKET=/run/tas/tasd.sock redis-server
//! ```
//!
//! Environment: `TAS_SOCKET` (the service's app socket), `TAS_PRELOAD_FALLBACK=fail` (fail
//! `socket()` instead of falling back to kernel sockets when tasd is not reachable),
//! `TAS_PRELOAD_DISABLE` (kernel sockets, no attach), `TAS_SPIN_US` (busy-poll time before
//! a blocking call sleeps), `TAS_PRELOAD_MOVE_AFTER` (calls in a row by one thread on another
//! thread's connection before it moves to the caller's context; 0: never),
//! `TAS_PRELOAD_DEBUG` (a line per such move, statistics at exit). See
//! docs/compatibility.md for what works.
#![deny(unsafe_code)]

mod interpose;
pub mod shim;
pub mod sys;
