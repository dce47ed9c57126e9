//! The per-application shared region, service side: created with `shared_memory`,
//! handed to the application as an fd, unlinked and unmapped when dropped.
//!
//! The region's layout is `tas_proto::shm::Layout` (documented byte by byte in
//! `docs/abi.md`). The service writes the header and initialises every queue before the
//! application sees the region; afterwards it only touches it through queue endpoints
//! ([`AppRegion::to_fp_consumer`] and friends) and the payload rings.

#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use shared_memory::{Shmem, ShmemConf, ShmemError};
use tas_proto::queue::ShmQueue;
use tas_proto::shm::{Layout, LayoutError, RegionHeader};

/// Why a region could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The configured geometry is out of range.
    #[error("invalid region geometry {0:?}: check the app region settings (queue entries and buffer sizes must be powers of two)")]
    Layout(LayoutError),
    /// The shared-memory object could not be created or mapped.
    #[error("cannot create shared memory {os_id}: {source} (is /dev/shm mounted and large enough?)")]
    Create {
        /// The object's name.
        os_id: String,
        /// What failed.
        source: ShmemError,
    },
    /// The object was created but could not be opened, chowned or chmodded.
    #[error("cannot prepare shared memory /dev/shm{os_id} for uid {uid}: {source} (tasd needs CAP_CHOWN to serve other users' applications)")]
    Prepare {
        /// The object's name.
        os_id: String,
        /// The application's uid.
        uid: u32,
        /// What failed.
        source: io::Error,
    },
}

/// One application's shared region.
pub struct AppRegion {
    shmem: Shmem,
    layout: Layout,
    fd: OwnedFd,
    /// One flag per service-side endpoint (to_fp consumers, to_app producers, sp
    /// producer, request consumer), so that each exists at most once.
    taken: Box<[AtomicBool]>,
}

impl std::fmt::Debug for AppRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRegion")
            .field("os_id", &self.shmem.get_os_id())
            .field("len", &self.shmem.len())
            .field("layout", &self.layout)
            .finish()
    }
}

// SAFETY: the region is shared memory, valid at the same address from every thread until
// the AppRegion is dropped. AppRegion's own fields are immutable after `create` (layout,
// fd, the mapping's address), except the `taken` flags, which are atomics. Accesses to
// the memory go through queue endpoints (atomics and volatile copies) or raw-pointer
// copies whose coordination is the queue/ring protocol's job, never through references.
unsafe impl Send for AppRegion {}
// SAFETY: as for Send; `&AppRegion` gives no unsynchronised access to anything.
unsafe impl Sync for AppRegion {}

/// A service-side queue endpoint that keeps its region mapped. Dereferences to
/// [`ShmQueue`].
#[derive(Debug)]
pub struct RegionQueue {
    queue: ShmQueue,
    _region: Arc<AppRegion>,
}

impl std::ops::Deref for RegionQueue {
    type Target = ShmQueue;
    fn deref(&self) -> &ShmQueue {
        &self.queue
    }
}

impl std::ops::DerefMut for RegionQueue {
    fn deref_mut(&mut self) -> &mut ShmQueue {
        &mut self.queue
    }
}

impl AppRegion {
    /// Create the region for application `app_id`, owned by `owner_uid` (mode 0600), with
    /// its header written and every queue initialised. Its name is
    /// `/tas-<service pid>-<sequence>-<app id>`; it disappears when the value is dropped.
    pub fn create(layout: Layout, app_id: u32, owner_uid: u32) -> Result<AppRegion, RegionError> {
        layout.check().map_err(RegionError::Layout)?;
        let size = layout.region_size();
        // A process-wide sequence number keeps two regions of one process (several attach
        // servers in a test binary) apart; the pid keeps services apart.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let os_id = format!("/tas-{}-{}-{}", std::process::id(), seq, app_id);
        let shmem = match ShmemConf::new().size(size).os_id(&os_id).create() {
            Err(ShmemError::MappingIdExists) => {
                // Left behind by a crashed service that had our pid: nobody can be using
                // it (the name includes a pid that is ours now). Remove it and retry once.
                let name = std::ffi::CString::new(os_id.as_str()).expect("no NUL in the name");
                // SAFETY: shm_unlink on a valid NUL-terminated name.
                unsafe { libc::shm_unlink(name.as_ptr()) };
                ShmemConf::new().size(size).os_id(&os_id).create()
            }
            r => r,
        }
        .map_err(|source| RegionError::Create { os_id: os_id.clone(), source })?;
        let prepare = |source| RegionError::Prepare { os_id: os_id.clone(), uid: owner_uid, source };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(format!("/dev/shm{os_id}"))
            .map_err(prepare)?;
        let fd = OwnedFd::from(file);
        // chmod first, while tasd still owns the object: after the chown only the new owner
        // (or CAP_FOWNER) may chmod, and an unprivileged tasd has CAP_CHOWN but not that.
        // SAFETY: fchmod/fchown on an fd we own; -1 (as gid_t) leaves the group as is.
        if unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) } != 0 {
            return Err(prepare(io::Error::last_os_error()));
        }
        // SAFETY: as above.
        if unsafe { libc::fchown(fd.as_raw_fd(), owner_uid, libc::gid_t::MAX) } != 0 {
            return Err(prepare(io::Error::last_os_error()));
        }
        let base = NonNull::new(shmem.as_ptr()).expect("a mapping is never at address 0");
        assert!(shmem.len() >= size && base.as_ptr() as usize & 4095 == 0);
        // SAFETY: the mapping is `size` bytes, page aligned, and nobody else has it yet.
        unsafe { std::ptr::write_volatile(base.as_ptr().cast::<RegionHeader>(), layout.header()) };
        let region = AppRegion {
            shmem,
            layout,
            fd,
            taken: (0..2 * layout.num_fp_queues as usize + 2).map(|_| AtomicBool::new(false)).collect(),
        };
        for off in region.queue_offsets() {
            // SAFETY: a temporary endpoint over a queue inside the mapping, used only to
            // zero its indices before any other endpoint exists.
            unsafe { ShmQueue::from_raw(base.add(off), layout.queue_entries) }.init();
        }
        Ok(region)
    }

    fn queue_offsets(&self) -> Vec<usize> {
        let l = &self.layout;
        let mut v: Vec<usize> =
            (0..l.num_fp_queues).flat_map(|i| [l.to_fp_offset(i), l.to_app_offset(i)]).collect();
        v.push(l.sp_queue_offset());
        v.push(l.req_queue_offset());
        v
    }

    /// Start of the mapping (the header).
    pub fn base(&self) -> NonNull<u8> {
        NonNull::new(self.shmem.as_ptr()).expect("a mapping is never at address 0")
    }

    /// Size of the mapping in bytes (at least `layout().region_size()`).
    pub fn len(&self) -> usize {
        self.shmem.len()
    }

    /// Never true (a region has at least a header); for API completeness.
    pub fn is_empty(&self) -> bool {
        self.shmem.len() == 0
    }

    /// The geometry.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The shared-memory object's name (`/tas-<pid>-<sequence>-<app id>`).
    pub fn os_id(&self) -> &str {
        self.shmem.get_os_id()
    }

    /// The fd of the shared-memory object, to pass to the application.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn endpoint(self: &Arc<Self>, flag: usize, offset: usize, what: &str) -> RegionQueue {
        assert!(
            !self.taken[flag].swap(true, Ordering::AcqRel),
            "the service-side endpoint {what} of this region was already taken"
        );
        assert!(offset + tas_proto::shm::queue_bytes(self.layout.queue_entries) <= self.len());
        // SAFETY: the queue lies inside the mapping (asserted), 64-byte aligned (layout
        // offsets are multiples of 64 on a page-aligned base), queue_entries is a power of
        // two (checked layout). The returned value holds an Arc of the region, so the
        // memory outlives it. The flag above makes this the only service-side endpoint
        // of this queue; the application holds the other one.
        let queue = unsafe { ShmQueue::from_raw(self.base().add(offset), self.layout.queue_entries) };
        RegionQueue { queue, _region: self.clone() }
    }

    /// The service's consumer endpoint of core `core`'s doorbell queue (app -> fast path).
    /// Each endpoint can be taken once; panics on a second call or an out-of-range core.
    pub fn to_fp_consumer(self: &Arc<Self>, core: u32) -> RegionQueue {
        assert!(core < self.layout.num_fp_queues);
        self.endpoint(2 * core as usize, self.layout.to_fp_offset(core), "to_fp consumer")
    }

    /// The service's producer endpoint of core `core`'s event queue (fast path -> app).
    pub fn to_app_producer(self: &Arc<Self>, core: u32) -> RegionQueue {
        assert!(core < self.layout.num_fp_queues);
        self.endpoint(2 * core as usize + 1, self.layout.to_app_offset(core), "to_app producer")
    }

    /// The service's producer endpoint of the slow-path event queue.
    pub fn sp_producer(self: &Arc<Self>) -> RegionQueue {
        let n = 2 * self.layout.num_fp_queues as usize;
        self.endpoint(n, self.layout.sp_queue_offset(), "sp producer")
    }

    /// The service's consumer endpoint of the application's control-request queue.
    pub fn req_consumer(self: &Arc<Self>) -> RegionQueue {
        let n = 2 * self.layout.num_fp_queues as usize + 1;
        self.endpoint(n, self.layout.req_queue_offset(), "request consumer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tas_proto::shm::{ControlRequest, Desc, REGION_MAGIC};

    fn layout() -> Layout {
        Layout { num_fp_queues: 2, queue_entries: 64, conn_slots: 4, rx_buf_size: 4096, tx_buf_size: 8192 }
    }

    #[test]
    fn create_writes_header_and_cleans_up() {
        // SAFETY: geteuid never fails.
        let uid = unsafe { libc::geteuid() };
        let r = AppRegion::create(layout(), 900_001, uid).unwrap();
        let path = format!("/dev/shm{}", r.os_id());
        assert!(r.os_id().starts_with(&format!("/tas-{}-", std::process::id())));
        let meta = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), uid);
        assert!(meta.len() as usize >= layout().region_size());
        // SAFETY: the header is at the page-aligned start of the mapping.
        let h = unsafe { std::ptr::read_volatile(r.base().as_ptr().cast::<RegionHeader>()) };
        assert_eq!(h.magic, REGION_MAGIC);
        assert_eq!(Layout::validate(&h, r.len()), Ok(layout()));
        drop(r);
        assert!(!std::path::Path::new(&path).exists(), "unlinked on drop");
    }

    #[test]
    fn endpoints_talk_and_are_unique() {
        // SAFETY: geteuid never fails.
        let r = Arc::new(AppRegion::create(layout(), 900_002, unsafe { libc::geteuid() }).unwrap());
        let mut req = r.req_consumer();
        // An application-side producer over the same memory.
        // SAFETY: inside the live mapping; the only app-side endpoint.
        let mut app = unsafe { ShmQueue::from_raw(r.base().add(r.layout().req_queue_offset()), 64) };
        app.resume_as_producer();
        assert!(app.push(ControlRequest::Abort { conn: 3 }.encode()));
        app.publish();
        let d: Desc = req.pop().unwrap().unwrap();
        assert_eq!(ControlRequest::decode(&d), Ok(ControlRequest::Abort { conn: 3 }));
        let _a = r.to_fp_consumer(1);
        let _b = r.to_app_producer(1);
        let _c = r.sp_producer();
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.to_fp_consumer(1)));
        assert!(again.is_err(), "a second endpoint must be refused");
        fn send_sync<T: Send + Sync>() {}
        send_sync::<AppRegion>();
    }

    #[test]
    fn bad_geometry() {
        let mut l = layout();
        l.queue_entries = 100;
        assert!(matches!(AppRegion::create(l, 900_003, 0), Err(RegionError::Layout(_))));
    }
}
