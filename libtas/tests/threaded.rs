//! Blocking calls against a fake fast path running on its own thread, with real eventfds
//! for the wake-ups in both directions: a 100 MB `send_all`, a long `recv_blocking`
//! stream ending in FIN, and `wait` sleeping until the service posts.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventfd, layout, FakeService};
use libtas::{Context, Error};
use tas_proto::shm::{ConnHandle, ControlRequest, Doorbell, FpEvent, SpEvent};

fn signal(fd: &OwnedFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Sleep on the core's doorbell eventfd after announcing it on the to_fp queue.
fn fp_sleep(svc: &mut FakeService, doorbell: &OwnedFd) {
    if svc.to_fp[0].prepare_sleep() {
        let mut p = libc::pollfd { fd: doorbell.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 200) };
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a u64 from a non-blocking eventfd.
        unsafe { libc::read(doorbell.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
    svc.to_fp[0].woke();
}

struct Setup {
    svc: FakeService,
    ctx: Context,
    app_efd: OwnedFd,
    doorbell: Arc<OwnedFd>,
}

fn setup(rx: u32, tx: u32) -> Setup {
    let svc = FakeService::new(layout(1, 64, 4, rx, tx));
    let app_efd = eventfd();
    let app_dup = app_efd.try_clone().unwrap();
    let doorbell = Arc::new(eventfd());
    // SAFETY: initialised region, the only context.
    let ctx = unsafe {
        Context::from_parts(svc.mapping(), Some(app_dup), vec![Some(doorbell.clone())], "10.0.0.1".parse().unwrap())
    }
    .unwrap();
    Setup { svc, ctx, app_efd, doorbell }
}

fn connect(s: &mut Setup) -> libtas::ConnId {
    let c = s.ctx.connect_start("10.0.0.2:9".parse().unwrap()).unwrap();
    let token = match s.svc.requests()[..] {
        [ControlRequest::Connect { token, .. }] => token,
        ref r => panic!("{r:?}"),
    };
    s.svc.post_sp(SpEvent::Connected { token, handle: ConnHandle { conn: 0, core: 0, flow: 1 }, local_port: 1234 });
    s.ctx.poll();
    c
}

fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

#[test]
fn send_all_100_mb() {
    const TOTAL: u64 = 100 << 20;
    let mut s = setup(4096, 256 << 10);
    let c = connect(&mut s);
    let Setup { mut svc, mut ctx, app_efd, doorbell } = s;
    let tx_size = svc.layout.tx_buf_size as u64;
    let tx_base = svc.layout.tx_offset(0);
    let fp = std::thread::spawn(move || {
        let mut pos = 0u64;
        let mut idle = Instant::now();
        let mut chunk = vec![0u8; tx_size as usize];
        let mut freed = 0u32;
        while pos < TOTAL || freed > 0 {
            for d in svc.doorbells(0) {
                match d {
                    Doorbell::TxAdded { conn: 0, bytes, .. } => {
                        // Read and check what the app queued.
                        let n = bytes as usize;
                        let off = (pos % tx_size) as usize;
                        let first = n.min(tx_size as usize - off);
                        // SAFETY: both ranges lie inside slot 0's tx ring.
                        unsafe {
                            let ring = svc.base().as_ptr().add(tx_base);
                            std::ptr::copy_nonoverlapping(ring.add(off), chunk.as_mut_ptr(), first);
                            std::ptr::copy_nonoverlapping(ring, chunk.as_mut_ptr().add(first), n - first);
                        }
                        for (i, b) in chunk[..n].iter().enumerate() {
                            assert_eq!(*b, byte_at(pos + i as u64), "byte {} differs", pos + i as u64);
                        }
                        pos += n as u64;
                        freed += bytes;
                    }
                    d => panic!("unexpected doorbell {d:?}"),
                }
            }
            if freed > 0 && svc.to_app[0].free().unwrap() > 0 {
                idle = Instant::now();
                if svc.post_fp(0, FpEvent::TxFreed { conn: 0, bytes: std::mem::take(&mut freed) }) {
                    signal(&app_efd);
                }
            } else if freed == 0 && idle.elapsed() > Duration::from_micros(100) {
                fp_sleep(&mut svc, &doorbell);
            }
        }
        pos
    });
    let data: Vec<u8> = (0..TOTAL).map(byte_at).collect();
    let t = Instant::now();
    for chunk in data.chunks(7 << 20) {
        ctx.send_all(c, chunk, Some(Duration::from_secs(60))).unwrap();
    }
    assert_eq!(fp.join().unwrap(), TOTAL);
    eprintln!("100 MB in {:?}", t.elapsed());
}

#[test]
fn recv_blocking_stream_with_fin() {
    const TOTAL: u64 = 8 << 20;
    let mut s = setup(16 << 10, 4096);
    let c = connect(&mut s);
    let Setup { mut svc, mut ctx, app_efd, doorbell } = s;
    let rx_size = svc.layout.rx_buf_size as u64;
    let fp = std::thread::spawn(move || {
        let mut sent = 0u64;
        let mut outstanding = 0u64; // written, not yet consumed by the app
        let mut idle = Instant::now();
        let mut step = 1usize;
        loop {
            for d in svc.doorbells(0) {
                match d {
                    Doorbell::RxConsumed { conn: 0, bytes, .. } => outstanding -= bytes as u64,
                    d => panic!("unexpected doorbell {d:?}"),
                }
            }
            if sent == TOTAL {
                if outstanding == 0 {
                    return;
                }
            } else if svc.to_app[0].free().unwrap() == 0 {
                std::thread::yield_now();
                continue;
            } else {
                // Varying segment sizes so the app sees every wrap offset.
                step = step % 3000 + 7;
                let n = (step as u64).min(rx_size - outstanding).min(TOTAL - sent);
                if n > 0 {
                    let data: Vec<u8> = (sent..sent + n).map(byte_at).collect();
                    svc.write_rx(0, &data);
                    sent += n;
                    outstanding += n;
                    idle = Instant::now();
                    if svc.post_fp(0, FpEvent::RxData { conn: 0, bytes: n as u32, fin: sent == TOTAL }) {
                        signal(&app_efd);
                    }
                    continue;
                }
            }
            if idle.elapsed() > Duration::from_micros(100) {
                fp_sleep(&mut svc, &doorbell);
            }
        }
    });
    let mut got = 0u64;
    let mut buf = vec![0u8; 5000];
    loop {
        let n = ctx.recv_blocking(c, &mut buf, Some(Duration::from_secs(60))).unwrap();
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, byte_at(got + i as u64));
        }
        got += n as u64;
    }
    assert_eq!(got, TOTAL);
    fp.join().unwrap();
}

#[test]
fn wait_sleeps_until_woken_and_times_out() {
    let mut s = setup(4096, 4096);
    let c = connect(&mut s);
    let Setup { mut svc, mut ctx, app_efd, .. } = s;
    ctx.set_spin(Duration::from_micros(10));
    // Timeout with nothing to do.
    let t = Instant::now();
    ctx.wait(Some(Duration::from_millis(30)));
    assert!(t.elapsed() >= Duration::from_millis(25));
    assert_eq!(ctx.recv_blocking(c, &mut [0u8; 4], Some(Duration::from_millis(10))), Err(Error::TimedOut));
    // A post while the app sleeps: the producer sees the flag and writes the eventfd.
    let saw_sleeper = Arc::new(AtomicBool::new(false));
    let flag = saw_sleeper.clone();
    let th = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        svc.write_rx(0, b"wake");
        if svc.post_fp(0, FpEvent::RxData { conn: 0, bytes: 4, fin: false }) {
            flag.store(true, Ordering::SeqCst);
            signal(&app_efd);
        }
        svc
    });
    let t = Instant::now();
    let mut buf = [0u8; 8];
    assert_eq!(ctx.recv_blocking(c, &mut buf, Some(Duration::from_secs(10))), Ok(4));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(saw_sleeper.load(Ordering::SeqCst), "the app must have announced its sleep");
    let _svc = th.join().unwrap();
}

#[test]
fn doorbell_wakes_a_sleeping_fast_path() {
    let mut s = setup(4096, 4096);
    let c = connect(&mut s);
    s.svc.doorbells(0);
    assert!(s.svc.to_fp[0].prepare_sleep());
    s.ctx.send(c, b"x").unwrap();
    // The app saw the flag: the doorbell eventfd now reads 1.
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a u64 from a non-blocking eventfd.
    let n = unsafe { libc::read(s.doorbell.as_fd().as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    assert_eq!((n, v), (8, 1));
    s.svc.to_fp[0].woke();
    let _ = &s.app_efd;
}
