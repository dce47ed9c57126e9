//! Loading and attaching the XDP program (`fastpath/bpf/redirect.bpf.c`), and its maps.

use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use libbpf_rs::libbpf_sys;
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle, ObjectBuilder};

use super::{ifindex, AfXdpError, XdpMode, XskSocket};

/// The compiled program, checked in beside its source (rebuild with `fastpath/bpf/build.sh`).
/// libelf reads the ELF headers in place, so keep the bytes 8-aligned.
static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../bpf/redirect.bpf.o"));

#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

/// Name of the XDP function in the object.
const PROGRAM: &str = "tas_redirect";

/// Entries of the XSKMAP (`xsks` in the C source): rx queues 0..64 can be served.
pub const MAX_QUEUES: u32 = 64;

/// Indices of the `stats` map (`enum stat_index` in the C source).
const STAT_REDIRECTED: u32 = 0;
const STAT_PASSED: u32 = 1;
const STAT_NO_SOCKET: u32 = 2;

/// Value of the `config` map (`struct service_config` in the C source).
#[repr(C)]
struct ServiceConfig {
    /// IPv4 address, network byte order in memory.
    ip: [u8; 4],
    flags: u32,
}

impl ServiceConfig {
    fn to_bytes(&self) -> [u8; size_of::<ServiceConfig>()] {
        let mut b = [0; 8];
        b[..4].copy_from_slice(&self.ip);
        b[4..].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }
}

/// Packet counts of the XDP program, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XdpStats {
    /// Redirected to an AF_XDP socket.
    pub redirected: u64,
    /// Not for the service (other protocol, address or port): passed to the kernel.
    pub passed: u64,
    /// For an owned port, but no socket registered for the rx queue it arrived on:
    /// passed to the kernel (which answers with a RST). Non-zero means a queue is not
    /// served: bind a socket per rx queue.
    pub no_socket: u64,
}

/// The loaded XDP program attached to an interface, with its maps.
///
/// The attachment is a BPF link: dropping this value, or the death of the process in any
/// way (even SIGKILL), detaches the program and the interface is back to the kernel alone.
pub struct XdpProgram {
    /// The link; closing its last fd detaches the program. Declared first so it is
    /// dropped (detached) before the maps and program go.
    link: OwnedFd,
    xsks: MapHandle,
    config: MapHandle,
    owned_ports: MapHandle,
    stats: MapHandle,
    /// Keeps the program and maps loaded (the link also holds the program).
    _object: libbpf_rs::Object,
    ifname: String,
    ifindex: u32,
    mode: XdpMode,
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram")
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("mode", &self.mode)
            .field("link_fd", &self.link.as_raw_fd())
            .finish()
    }
}

impl XdpProgram {
    /// Load the program, set the service address, and attach it to `ifname` in `mode`
    /// (`Auto`: native, else generic). Nothing is redirected until ports are owned
    /// ([`Self::own_port`]) and sockets registered ([`Self::register_socket`]).
    pub fn load(
        ifname: &str,
        mode: XdpMode,
        service_ip: Ipv4Addr,
    ) -> Result<XdpProgram, AfXdpError> {
        let ifindex = ifindex(ifname)?;
        let open = ObjectBuilder::default()
            .open_memory(&OBJECT.0)
            .map_err(|e| bpf_error("opening the XDP object", e))?;
        let object = open
            .load()
            .map_err(|e| bpf_error("loading the XDP program", e))?;

        let map = |name: &str| -> Result<MapHandle, AfXdpError> {
            let m = object
                .maps()
                .find(|m| m.name() == name)
                .ok_or(AfXdpError::ObjectMismatch {
                    what: "map",
                    name: name.to_owned(),
                })?;
            MapHandle::try_from(&m).map_err(|e| bpf_error("duplicating a map fd", e))
        };
        let xsks = map("xsks")?;
        let config = map("config")?;
        let owned_ports = map("owned_ports")?;
        let stats = map("stats")?;

        let value = ServiceConfig {
            ip: service_ip.octets(),
            flags: 0,
        };
        config
            .update(&0u32.to_ne_bytes(), &value.to_bytes(), MapFlags::ANY)
            .map_err(|e| bpf_error("writing the service address into the XDP config map", e))?;

        let prog =
            object
                .progs()
                .find(|p| p.name() == PROGRAM)
                .ok_or(AfXdpError::ObjectMismatch {
                    what: "program",
                    name: PROGRAM.to_owned(),
                })?;
        let prog_fd = prog.as_fd().as_raw_fd();
        let (link, mode) = match mode {
            XdpMode::Native => (
                attach(prog_fd, ifname, ifindex, XdpMode::Native)?,
                XdpMode::Native,
            ),
            XdpMode::Generic => (
                attach(prog_fd, ifname, ifindex, XdpMode::Generic)?,
                XdpMode::Generic,
            ),
            XdpMode::Auto => match attach(prog_fd, ifname, ifindex, XdpMode::Native) {
                Ok(link) => (link, XdpMode::Native),
                Err(AfXdpError::NativeXdpUnsupported { .. }) => (
                    attach(prog_fd, ifname, ifindex, XdpMode::Generic)?,
                    XdpMode::Generic,
                ),
                Err(e) => return Err(e),
            },
        };
        Ok(XdpProgram {
            link,
            xsks,
            config,
            owned_ports,
            stats,
            _object: object,
            ifname: ifname.to_owned(),
            ifindex,
            mode,
        })
    }

    /// Change the service address whose segments are redirected (0.0.0.0: none).
    pub fn set_service_ip(&self, service_ip: Ipv4Addr) -> Result<(), AfXdpError> {
        write_service_ip(&self.config, service_ip)
    }

    /// Redirect TCP segments to `port` (of the service address) to the sockets.
    pub fn own_port(&self, port: u16) -> Result<(), AfXdpError> {
        self.owned_ports
            .update(&u32::from(port).to_ne_bytes(), &[1], MapFlags::ANY)
            .map_err(|e| bpf_error("marking a port owned in the XDP map", e))
    }

    /// Stop redirecting `port`: its segments go to the kernel again.
    pub fn release_port(&self, port: u16) -> Result<(), AfXdpError> {
        self.owned_ports
            .update(&u32::from(port).to_ne_bytes(), &[0], MapFlags::ANY)
            .map_err(|e| bpf_error("releasing a port in the XDP map", e))
    }

    /// Whether `port` is owned (reads the map).
    pub fn owns_port(&self, port: u16) -> Result<bool, AfXdpError> {
        let v = self
            .owned_ports
            .lookup(&u32::from(port).to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| bpf_error("reading the XDP owned-ports map", e))?;
        Ok(v.is_some_and(|v| v.first().copied().unwrap_or(0) != 0))
    }

    /// Send what arrives on rx queue `queue` to the AF_XDP socket `fd` (`XSKMAP[queue] = fd`).
    /// The socket must be bound to this interface and this queue, or the kernel drops the
    /// packets; [`Self::register`] takes both from the socket.
    pub fn register_socket(&self, queue: u32, fd: RawFd) -> Result<(), AfXdpError> {
        if queue >= MAX_QUEUES {
            return Err(AfXdpError::QueueOutOfRange {
                queue,
                max: MAX_QUEUES,
            });
        }
        self.xsks
            .update(
                &queue.to_ne_bytes(),
                &(fd as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|e| bpf_error("registering the AF_XDP socket in the XSKMAP", e))
    }

    /// [`Self::register_socket`] with the socket's own queue and fd.
    pub fn register(&self, socket: &XskSocket) -> Result<(), AfXdpError> {
        self.register_socket(socket.queue(), socket.fd())
    }

    /// Remove the socket of `queue`: its packets go to the kernel (counted as
    /// [`XdpStats::no_socket`]).
    pub fn unregister_socket(&self, queue: u32) -> Result<(), AfXdpError> {
        if queue >= MAX_QUEUES {
            return Err(AfXdpError::QueueOutOfRange {
                queue,
                max: MAX_QUEUES,
            });
        }
        match self.xsks.delete(&queue.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(bpf_error("removing a socket from the XSKMAP", e)),
        }
    }

    /// The mode actually attached (`Native` or `Generic`, never `Auto`).
    pub fn attached_mode(&self) -> XdpMode {
        self.mode
    }

    /// Interface the program is attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Its index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Verdict counters summed over CPUs (zero if the map cannot be read).
    pub fn stats(&self) -> XdpStats {
        let read = |index: u32| -> u64 {
            match self
                .stats
                .lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)
            {
                Ok(Some(per_cpu)) => per_cpu
                    .iter()
                    .filter_map(|v| v.get(..8)?.try_into().ok().map(u64::from_ne_bytes))
                    .sum(),
                _ => 0,
            }
        };
        XdpStats {
            redirected: read(STAT_REDIRECTED),
            passed: read(STAT_PASSED),
            no_socket: read(STAT_NO_SOCKET),
        }
    }
}

fn write_service_ip(config: &MapHandle, service_ip: Ipv4Addr) -> Result<(), AfXdpError> {
    let value = ServiceConfig {
        ip: service_ip.octets(),
        flags: 0,
    };
    config
        .update(&0u32.to_ne_bytes(), &value.to_bytes(), MapFlags::ANY)
        .map_err(|e| bpf_error("writing the service address into the XDP config map", e))
}

/// Attach with a BPF link in one explicit mode. libbpf-rs 0.27's `attach_xdp` passes no
/// flags (the kernel picks native when the driver has it) and so cannot ask for generic
/// mode; `bpf_link_create` with the XDP mode flag can.
fn attach(
    prog_fd: RawFd,
    ifname: &str,
    ifindex: u32,
    mode: XdpMode,
) -> Result<OwnedFd, AfXdpError> {
    let flags = match mode {
        XdpMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
        XdpMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        XdpMode::Auto => 0,
    };
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: size_of::<libbpf_sys::bpf_link_create_opts>() as libbpf_sys::size_t,
        flags,
        ..Default::default()
    };
    // SAFETY: `opts` is a properly sized, zero-initialized options struct that libbpf only
    // reads during the call; the fds are plain integers (libbpf validates nothing else).
    let rc =
        unsafe { libbpf_sys::bpf_link_create(prog_fd, ifindex as i32, libbpf_sys::BPF_XDP, &opts) };
    if rc >= 0 {
        // SAFETY: a non-negative return is a new link fd that nothing else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(rc) });
    }
    let errno = -rc;
    let ifname = ifname.to_owned();
    Err(match errno {
        libc::EPERM | libc::EACCES => AfXdpError::PermissionDenied {
            op: "attaching the XDP program",
        },
        libc::EBUSY | libc::EEXIST => AfXdpError::XdpBusy { ifname },
        libc::ENODEV => AfXdpError::InterfaceNotFound { ifname },
        // EOPNOTSUPP: no native XDP in the driver; ERANGE/EINVAL: the driver refuses this
        // configuration (veth: MTU too large); 524 = ENOTSUPP (kernel-internal).
        libc::EOPNOTSUPP | libc::EINVAL | libc::ERANGE | libc::E2BIG | 524
            if mode == XdpMode::Native =>
        {
            AfXdpError::NativeXdpUnsupported {
                ifname,
                source: std::io::Error::from_raw_os_error(errno),
            }
        }
        _ => AfXdpError::Sys {
            op: "attaching the XDP program",
            ifname,
            source: std::io::Error::from_raw_os_error(errno),
        },
    })
}

/// A libbpf error, with permission problems told apart.
fn bpf_error(op: &'static str, source: libbpf_rs::Error) -> AfXdpError {
    // libbpf-rs maps EPERM and EACCES to PermissionDenied. EACCES is also the verifier's
    // rejection, which only a privileged loader can get, so a root process sees `Bpf`.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if source.kind() == ErrorKind::PermissionDenied && !root {
        return AfXdpError::PermissionDenied { op };
    }
    AfXdpError::Bpf { op, source }
}
