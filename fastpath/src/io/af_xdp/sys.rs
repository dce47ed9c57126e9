//! Thin, typed wrappers over the system calls AF_XDP needs: mmap, setsockopt,
//! getsockopt. Everything that touches raw pointers for the kernel lives here or in
//! `ring.rs`/`umem.rs`.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// An owned memory mapping, unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone (nothing else unmaps it) and raw memory
// has no thread affinity; whoever hands out references into it enforces aliasing rules.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Private anonymous memory, populated up front (no page faults on the fast path).
    pub(crate) fn anonymous(len: usize) -> io::Result<Self> {
        Self::map(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    }

    /// As [`Self::anonymous`], backed by huge pages: fails unless huge pages are reserved
    /// (`/proc/sys/vm/nr_hugepages`). `len` must be a multiple of the huge page size.
    pub(crate) fn anonymous_huge(len: usize) -> io::Result<Self> {
        Self::map(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | libc::MAP_HUGETLB,
            -1,
            0,
        )
    }

    /// A ring of an AF_XDP socket, at one of the `XDP_*PGOFF*` offsets.
    pub(crate) fn socket_ring(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Self> {
        Self::map(
            len,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            offset as i64,
        )
    }

    fn map(len: usize, flags: libc::c_int, fd: libc::c_int, offset: i64) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a fresh mapping chosen by the kernel (addr = NULL) cannot overlap any
        // memory Rust knows about; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self { ptr, len })
    }

    /// Start of the mapping (page-aligned).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range this value mapped; no reference into it
        // outlives the value (they borrow from the owner of the mapping).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Plain C structs made of integers only: all-zero bytes are a valid value, and any bytes
/// the kernel writes are too.
pub(crate) trait Plain: Copy {}
impl Plain for u32 {}
impl Plain for libc::c_int {}
impl Plain for libc::xdp_umem_reg {}
impl Plain for libc::xdp_mmap_offsets {}
impl Plain for libc::xdp_statistics {}
impl Plain for libc::xdp_options {}
impl Plain for libc::sockaddr_xdp {}
impl Plain for libc::rlimit {}

/// An all-zero value of a plain struct.
pub(crate) fn zeroed<T: Plain>() -> T {
    // SAFETY: `Plain` types consist of integers only, for which zero bytes are valid.
    unsafe { MaybeUninit::<T>::zeroed().assume_init() }
}

/// `setsockopt(fd, level, name, value, sizeof value)`.
pub(crate) fn setsockopt<T: Plain>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a valid, initialized T for the duration of the call and the
    // length passed is its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(fd, level, name)` into a zeroed T; returns the value and the length the
/// kernel wrote (older kernels write shorter versions of some structs).
pub(crate) fn getsockopt<T: Plain>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<(T, usize)> {
    let mut value = zeroed::<T>();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`, which is that large;
    // any bytes are a valid `Plain` value.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok((value, len as usize))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raise RLIMIT_MEMLOCK to infinity; best effort (needs CAP_SYS_RESOURCE to go above the
/// hard limit). Returns the soft limit in force afterwards, in bytes (`u64::MAX` =
/// unlimited).
pub(crate) fn raise_memlock_limit() -> u64 {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: passes a valid rlimit by pointer; the kernel only reads it.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0;
    if raised {
        return u64::MAX;
    }
    let mut now = zeroed::<libc::rlimit>();
    // SAFETY: the kernel writes one rlimit into `now`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut now) } != 0 {
        return 0;
    }
    if now.rlim_cur < now.rlim_max {
        // Unprivileged processes may still raise the soft limit up to the hard one.
        let to_hard = libc::rlimit {
            rlim_cur: now.rlim_max,
            rlim_max: now.rlim_max,
        };
        // SAFETY: passes a valid rlimit by pointer; the kernel only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &to_hard) } == 0 {
            now = to_hard;
        }
    }
    if now.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        now.rlim_cur
    }
}
