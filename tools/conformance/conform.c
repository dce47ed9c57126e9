/* Sockets conformance program for the LD_PRELOAD shim (docs/compatibility.md).
 *
 *   conform peer PORT                         kernel-side helper (namespace B)
 *   conform run PEER_IP PEER_PORT CLOSED_PORT LISTEN_PORT
 *
 * `run` exercises the socket calls against the peer and prints one line per check:
 * return values, errno names and hashes of the data. tools/tests/preload.rs runs it once
 * on the kernel's sockets and once under libtas_preload.so against tasd, and compares
 * the two outputs line by line. Only deterministic facts are printed (no timings). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

static struct sockaddr_in peer_addr, closed_addr;
static int listen_port;

static void say(const char *name, long r) {
    if (r < 0) printf("%s = -1 %s\n", name, strerrorname_np(errno) ? strerrorname_np(errno) : "?");
    else printf("%s = %ld\n", name, r);
    fflush(stdout);
}
#define CHECK(name, expr) do { errno = 0; long _r = (long)(expr); say(name, _r); } while (0)

static uint64_t fnv(const void *p, size_t n, uint64_t h) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 1099511628211ULL; }
    return h;
}
#define FNV0 1469598103934665603ULL
static unsigned char pat(size_t i) { return (unsigned char)((i * 7 + 3) % 251); }
/* Fields of the raw struct tcp_info by offset (include/uapi/linux/tcp.h, Linux 6.18). */
static uint32_t ti32(const unsigned char *b, int off) { uint32_t v; memcpy(&v, b + off, 4); return v; }
static uint64_t ti64(const unsigned char *b, int off) { uint64_t v; memcpy(&v, b + off, 8); return v; }

static int tcp(void) { return socket(AF_INET, SOCK_STREAM, 0); }
static int dial(void) {
    int fd = tcp();
    if (fd < 0 || connect(fd, (struct sockaddr *)&peer_addr, sizeof peer_addr) < 0) { perror("dial"); exit(2); }
    return fd;
}
static void put_n(int fd, const void *p, size_t n) {
    const char *s = p; size_t off = 0;
    while (off < n) { ssize_t k = write(fd, s + off, n - off); if (k <= 0) { perror("put"); exit(2); } off += k; }
}
static void put(int fd, const char *s) { put_n(fd, s, strlen(s)); }
static int wait_fd(int fd, short ev, int ms) {
    struct pollfd p = {fd, ev, 0};
    int r = poll(&p, 1, ms);
    return r <= 0 ? r : p.revents;
}
/* Read until EOF (or error); returns the count, hash in *h. */
static long drain(int fd, uint64_t *h) {
    char buf[65536]; long total = 0; *h = FNV0;
    for (;;) {
        ssize_t k = read(fd, buf, sizeof buf);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return k < 0 ? -1 : total;
        *h = fnv(buf, k, *h); total += k;
    }
}

/* ---------------------------------------------------------------- the peer (kernel) */

static void *peer_conn(void *arg) {
    int fd = (int)(intptr_t)arg;
    char line[128]; size_t n = 0;
    while (n < sizeof line - 1) { ssize_t k = read(fd, line + n, 1); if (k <= 0) { close(fd); return 0; } if (line[n++] == '\n') break; }
    line[n] = 0;
    char buf[65536];
    if (!strncmp(line, "ECHOINFO", 8)) {
        /* Echo until the client's FIN, then report this (kernel) end's TCP_INFO. */
        for (;;) { ssize_t k = read(fd, buf, sizeof buf); if (k <= 0) break; size_t off = 0; while (off < (size_t)k) { ssize_t w = write(fd, buf + off, k - off); if (w <= 0) break; off += w; } }
        unsigned char ti[512]; socklen_t l = sizeof ti; memset(ti, 0, sizeof ti);
        getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &l);
        dprintf(fd, "peer_bytes_acked=%llu\npeer_bytes_received=%llu\npeer_rcv_wnd=%u\npeer_snd_wnd=%u\npeer_total_retrans=%u\npeer_rtt=%u\npeer_min_rtt=%u\n",
                (unsigned long long)ti64(ti, 120), (unsigned long long)ti64(ti, 128), ti32(ti, 232), ti32(ti, 228), ti32(ti, 100), ti32(ti, 68), ti32(ti, 148));
    } else if (!strncmp(line, "ECHO", 4)) {
        for (;;) { ssize_t k = read(fd, buf, sizeof buf); if (k <= 0) break; size_t off = 0; while (off < (size_t)k) { ssize_t w = write(fd, buf + off, k - off); if (w <= 0) break; off += w; } }
    } else if (!strncmp(line, "HOLD", 4)) {
        while (read(fd, buf, sizeof buf) > 0) {}
    } else if (!strncmp(line, "CHUNKS", 6)) {
        size_t i = 0;
        for (int c = 0; c < 3; c++) { for (int j = 0; j < 10000; j++) buf[j] = pat(i++); write(fd, buf, 10000); usleep(50000); }
        while (read(fd, buf, sizeof buf) > 0) {}
    } else if (!strncmp(line, "FIN", 3)) {
        shutdown(fd, SHUT_WR);
        while (read(fd, buf, sizeof buf) > 0) {}
    } else if (!strncmp(line, "RST", 3)) {
        struct linger l = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    } else if (!strncmp(line, "DIAL", 4)) {
        /* Connect back to PORT and echo on that connection until EOF or error; report the
         * byte count and how it ended on this one. */
        int port = atoi(line + 5);
        struct sockaddr_in a; socklen_t al = sizeof a;
        getpeername(fd, (struct sockaddr *)&a, &al);
        a.sin_port = htons(port);
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&a, sizeof a) == 0) {
            long total = 0; int how = 0;
            for (;;) {
                ssize_t k = read(c, buf, sizeof buf);
                if (k < 0) { how = errno; break; }
                if (k == 0) break;
                total += k;
                size_t off = 0;
                while (off < (size_t)k) { ssize_t w = write(c, buf + off, k - off); if (w <= 0) break; off += w; }
            }
            dprintf(fd, "%ld %s\n", total, how ? strerrorname_np(how) : "eof");
        } else {
            dprintf(fd, "connect failed %d\n", errno);
        }
        close(c);
    } else if (!strncmp(line, "KNOCK", 5)) {
        /* Connect to PORT and close at once without sending (a port probe, a client
         * that gave up), COUNT times; report when done. */
        int port = 0, count = 1;
        sscanf(line + 6, "%d %d", &port, &count);
        struct sockaddr_in a; socklen_t al = sizeof a;
        getpeername(fd, (struct sockaddr *)&a, &al);
        a.sin_port = htons(port);
        int ok = 0;
        for (int i = 0; i < count; i++) {
            int c = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(c, (struct sockaddr *)&a, sizeof a) == 0) ok++;
            close(c);
        }
        dprintf(fd, "%d\n", ok);
        while (read(fd, buf, sizeof buf) > 0) {}
    } else if (!strncmp(line, "CALL", 4)) {
        int port = atoi(line + 5);
        struct sockaddr_in a; socklen_t al = sizeof a;
        getpeername(fd, (struct sockaddr *)&a, &al);
        a.sin_port = htons(port);
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&a, sizeof a) == 0) {
            size_t i = 0;
            for (int k = 0; k < 10; k++) { for (int j = 0; j < 10000; j++) buf[j] = pat(i++); write(c, buf, 10000); }
            shutdown(c, SHUT_WR);
            uint64_t h; long got = drain(c, &h);
            dprintf(fd, "%ld\n", got);
        } else {
            dprintf(fd, "connect failed %d\n", errno);
        }
        close(c);
    }
    close(fd);
    return 0;
}

static int run_peer(int port) {
    signal(SIGPIPE, SIG_IGN);
    int l = tcp(), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 128)) { perror("peer"); return 1; }
    printf("peer listening on %d\n", port); fflush(stdout);
    for (;;) {
        int c = accept(l, 0, 0);
        if (c < 0) continue;
        pthread_t t; pthread_create(&t, 0, peer_conn, (void *)(intptr_t)c); pthread_detach(t);
    }
}

/* ---------------------------------------------------------------- the checks */

static volatile int sigpipes;
static void on_sigpipe(int s) { (void)s; sigpipes++; }

static void t_basics(void) {
    int fd = tcp(), v = -1; socklen_t l = sizeof v;
    CHECK("socket.so_type", (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &l), v));
    CHECK("unconnected.recv", recv(fd, &v, 1, 0));
    CHECK("unconnected.send", send(fd, "x", 1, MSG_NOSIGNAL));
    struct sockaddr_in a; socklen_t al = sizeof a;
    CHECK("unconnected.getpeername", getpeername(fd, (struct sockaddr *)&a, &al));
    CHECK("unconnected.shutdown", shutdown(fd, SHUT_WR));
    CHECK("close", close(fd));
    CHECK("closed.close", close(fd));
    fd = tcp();
    CHECK("connect.refused", connect(fd, (struct sockaddr *)&closed_addr, sizeof closed_addr));
    close(fd);
}

static void t_nb_connect(void) {
    int fd = tcp(), v; socklen_t l = sizeof v;
    fcntl(fd, F_SETFL, O_NONBLOCK);
    CHECK("nbconnect.refused.connect", connect(fd, (struct sockaddr *)&closed_addr, sizeof closed_addr));
    CHECK("nbconnect.refused.poll", wait_fd(fd, POLLOUT, 5000) & (POLLOUT | POLLERR | POLLHUP));
    CHECK("nbconnect.refused.so_error", (getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &l), v));
    CHECK("nbconnect.refused.so_error_again", (getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &l), v));
    close(fd);
    fd = tcp();
    fcntl(fd, F_SETFL, O_NONBLOCK);
    CHECK("nbconnect.ok.connect", connect(fd, (struct sockaddr *)&peer_addr, sizeof peer_addr));
    CHECK("nbconnect.ok.poll", wait_fd(fd, POLLOUT, 5000) & (POLLOUT | POLLERR | POLLHUP));
    CHECK("nbconnect.ok.so_error", (getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &l), v));
    CHECK("nbconnect.ok.connect_again", connect(fd, (struct sockaddr *)&peer_addr, sizeof peer_addr));
    close(fd);
}

static void t_echo(void) {
    int fd = dial();
    put(fd, "ECHO\n");
    static unsigned char buf[100000];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = pat(i);
    CHECK("echo.write", write(fd, buf, sizeof buf));
    CHECK("echo.shutdown_wr", shutdown(fd, SHUT_WR));
    uint64_t h; long n = drain(fd, &h);
    CHECK("echo.bytes", n);
    CHECK("echo.hash_ok", h == fnv(buf, sizeof buf, FNV0));
    CHECK("echo.read_after_eof", read(fd, buf, 10));
    close(fd);
}

static void t_nonblocking(void) {
    int fd = dial(); char c;
    put(fd, "HOLD\n");
    CHECK("dontwait.recv", recv(fd, &c, 1, MSG_DONTWAIT));
    CHECK("getfl.blocking", fcntl(fd, F_GETFL) & O_NONBLOCK);
    CHECK("setfl.nonblock", fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK));
    CHECK("getfl.nonblocking", (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
    CHECK("nonblock.read", read(fd, &c, 1));
    int on = 0;
    CHECK("fionbio.off", ioctl(fd, FIONBIO, &on));
    CHECK("getfl.after_fionbio", fcntl(fd, F_GETFL) & O_NONBLOCK);
    CHECK("fd_cloexec.default", fcntl(fd, F_GETFD) & FD_CLOEXEC);
    CHECK("fd_cloexec.set", fcntl(fd, F_SETFD, FD_CLOEXEC));
    CHECK("fd_cloexec.get", fcntl(fd, F_GETFD) & FD_CLOEXEC);
    struct sockaddr_in a; socklen_t al = sizeof a;
    CHECK("getpeername", getpeername(fd, (struct sockaddr *)&a, &al));
    CHECK("getpeername.len", al);
    CHECK("getpeername.matches", a.sin_addr.s_addr == peer_addr.sin_addr.s_addr && a.sin_port == peer_addr.sin_port);
    al = sizeof a;
    CHECK("getsockname", getsockname(fd, (struct sockaddr *)&a, &al));
    CHECK("getsockname.port_nonzero", a.sin_port != 0);
    close(fd);
}

static void t_peek_waitall(void) {
    int fd = dial();
    put(fd, "CHUNKS\n");
    unsigned char buf[30000], want[30000];
    for (int i = 0; i < 30000; i++) want[i] = pat(i);
    CHECK("peek.poll", wait_fd(fd, POLLIN, 5000) & POLLIN);
    CHECK("peek.recv", recv(fd, buf, 5, MSG_PEEK));
    CHECK("peek.bytes_ok", memcmp(buf, want, 5) == 0);
    int n = -1;
    CHECK("fionread.positive", (ioctl(fd, FIONREAD, &n), n > 0));
    CHECK("waitall.recv", recv(fd, buf, sizeof buf, MSG_WAITALL));
    CHECK("waitall.bytes_ok", memcmp(buf, want, sizeof buf) == 0);
    close(fd);
}

static void t_vectors(void) {
    int fd = dial();
    put(fd, "ECHO\n");
    char a[1000], b[1500], c[500];
    memset(a, 'a', sizeof a); memset(b, 'b', sizeof b); memset(c, 'c', sizeof c);
    struct iovec w[3] = {{a, sizeof a}, {b, sizeof b}, {c, sizeof c}};
    CHECK("writev", writev(fd, w, 3));
    char r1[1200], r2[1800]; long got = 0; uint64_t h = FNV0;
    while (got < 3000) {
        struct iovec r[2] = {{r1, sizeof r1}, {r2, sizeof r2}};
        ssize_t k = readv(fd, r, 2);
        if (k <= 0) break;
        h = fnv(r1, k < (ssize_t)sizeof r1 ? k : (ssize_t)sizeof r1, h);
        if (k > (ssize_t)sizeof r1) h = fnv(r2, k - sizeof r1, h);
        got += k;
    }
    CHECK("readv.total", got);
    struct msghdr m = {0}; m.msg_iov = w; m.msg_iovlen = 3;
    CHECK("sendmsg", sendmsg(fd, &m, MSG_NOSIGNAL));
    got = 0;
    while (got < 3000) {
        struct iovec r[2] = {{r1, sizeof r1}, {r2, sizeof r2}};
        struct msghdr rm = {0}; rm.msg_iov = r; rm.msg_iovlen = 2;
        ssize_t k = recvmsg(fd, &rm, 0);
        if (k <= 0) break;
        got += k;
    }
    CHECK("recvmsg.total", got);
    close(fd);
}

static void t_shutdown_pipe(void) {
    int fd = dial(); char c;
    put(fd, "FIN\n");
    CHECK("peerfin.poll", wait_fd(fd, POLLIN | POLLRDHUP, 5000) & (POLLIN | POLLRDHUP | POLLHUP));
    CHECK("peerfin.read", read(fd, &c, 1));
    CHECK("peerfin.write_still_ok", write(fd, "x", 1));
    CHECK("shut_wr", shutdown(fd, SHUT_WR));
    CHECK("after_shut_wr.send_nosignal", send(fd, "x", 1, MSG_NOSIGNAL));
    sigpipes = 0;
    CHECK("after_shut_wr.write", write(fd, "x", 1));
    CHECK("after_shut_wr.sigpipes", sigpipes);
    close(fd);
}

static void t_reset(void) {
    int fd = dial(); char c;
    put(fd, "RST\n");
    CHECK("reset.poll", (wait_fd(fd, POLLIN, 5000) & POLLIN) != 0);
    CHECK("reset.read", read(fd, &c, 1));
    CHECK("reset.read_again", read(fd, &c, 1));
    CHECK("reset.send", send(fd, "x", 1, MSG_NOSIGNAL));
    close(fd);
}

static void t_options(void) {
    int fd = dial(), v; socklen_t l;
    put(fd, "HOLD\n");
#define OPT(name, lvl, opt, val) do { v = val; CHECK("setsockopt." name, setsockopt(fd, lvl, opt, &v, sizeof v)); \
        v = -1; l = sizeof v; CHECK("getsockopt." name, (getsockopt(fd, lvl, opt, &v, &l), v)); } while (0)
    OPT("tcp_nodelay", IPPROTO_TCP, TCP_NODELAY, 1);
    OPT("so_keepalive", SOL_SOCKET, SO_KEEPALIVE, 5);
    OPT("tcp_keepidle", IPPROTO_TCP, TCP_KEEPIDLE, 30);
    OPT("tcp_keepintvl", IPPROTO_TCP, TCP_KEEPINTVL, 5);
    OPT("tcp_keepcnt", IPPROTO_TCP, TCP_KEEPCNT, 4);
    OPT("so_reuseaddr", SOL_SOCKET, SO_REUSEADDR, 1);
    OPT("so_rcvbuf", SOL_SOCKET, SO_RCVBUF, 65536);
    OPT("so_sndbuf", SOL_SOCKET, SO_SNDBUF, 65536);
    OPT("tcp_cork_on", IPPROTO_TCP, TCP_CORK, 1);
    OPT("tcp_cork_off", IPPROTO_TCP, TCP_CORK, 0);
    v = 30; CHECK("setsockopt.keepidle_zero", (v = 0, setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, sizeof v)));
    CHECK("setsockopt.short_len", setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, 1));
    struct linger lg = {1, 5}; CHECK("setsockopt.so_linger", setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    memset(&lg, 0, sizeof lg); l = sizeof lg;
    CHECK("getsockopt.so_linger", (getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &l), lg.l_onoff * 100 + lg.l_linger));
    l = sizeof v; CHECK("getsockopt.so_error", (getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &l), v));
    struct timeval tmo = {0, 100000};
    CHECK("setsockopt.so_rcvtimeo", setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof tmo));
    CHECK("so_rcvtimeo.recv", recv(fd, &v, 1, 0));
    memset(&tmo, 0, sizeof tmo); l = sizeof tmo;
    CHECK("getsockopt.so_rcvtimeo", (getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tmo, &l), tmo.tv_sec * 1000000 + tmo.tv_usec));
    /* bounded by net.core.rmem_max/wmem_max, doubled, with a floor (as Linux) */
    OPT("so_rcvbuf_huge", SOL_SOCKET, SO_RCVBUF, 1 << 30);
    OPT("so_sndbuf_huge", SOL_SOCKET, SO_SNDBUF, 1 << 30);
    OPT("so_rcvbuf_tiny", SOL_SOCKET, SO_RCVBUF, 1);
    OPT("so_sndbuf_tiny", SOL_SOCKET, SO_SNDBUF, 1);
    OPT("so_sndbuf_negative", SOL_SOCKET, SO_SNDBUF, -5);
    struct tcp_info ti; l = sizeof ti; memset(&ti, 0, sizeof ti);
    CHECK("tcp_info", getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l));
    CHECK("tcp_info.state", ti.tcpi_state);
    CHECK("tcp_info.snd_mss_positive", ti.tcpi_snd_mss > 0);
    close(fd);
}

/* SO_SNDBUF bounds what a non-blocking write takes: 8 KiB asked (16 KiB reported) to a
 * peer that does not read. Linux takes a few of its 64 KiB segments at most (32 KiB on
 * loopback); without the bound the shim would fill its whole ring (256 KiB by default). */
static void t_sndbuf(void) {
    int fd = tcp(), v = 8192;
    CHECK("sndbuf.set", setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v));
    if (connect(fd, (struct sockaddr *)&peer_addr, sizeof peer_addr) < 0) { perror("connect"); exit(2); }
    put(fd, "HOLD\n");
    static unsigned char big[1 << 20];
    ssize_t n = send(fd, big, sizeof big, MSG_DONTWAIT);
    CHECK("sndbuf.nonblocking_write_positive", n > 0);
    CHECK("sndbuf.nonblocking_write_at_most_128KiB", n <= 131072);
    /* blocking writes still move everything (the peer's kernel buffers it) */
    size_t off = 0; int ok = 1;
    while (off < 256 * 1024) { ssize_t w = send(fd, big + off, 256 * 1024 - off, 0); if (w <= 0) { ok = 0; break; } off += w; }
    CHECK("sndbuf.blocking_256KiB", ok ? (long)off : -1);
    close(fd);
}

/* A tiny SO_RCVBUF set before connect: the window stays small, the echo still completes. */
static void t_rcvbuf(void) {
    int fd = tcp(), v = 4096;
    CHECK("rcvbuf.set", setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v));
    if (connect(fd, (struct sockaddr *)&peer_addr, sizeof peer_addr) < 0) { perror("connect"); exit(2); }
    put(fd, "ECHO\n");
    static unsigned char out[8192], in[8192]; size_t i = 0; uint64_t hw = FNV0, hr = FNV0; long got = 0;
    for (int k = 0; k < 32; k++) {
        for (size_t j = 0; j < sizeof out; j++) out[j] = pat(i++);
        hw = fnv(out, sizeof out, hw);
        if (write(fd, out, sizeof out) != (ssize_t)sizeof out) break;
        ssize_t r = recv(fd, in, sizeof in, MSG_WAITALL); if (r <= 0) break;
        hr = fnv(in, r, hr); got += r;
    }
    CHECK("rcvbuf.echo_bytes", got);
    CHECK("rcvbuf.echo_hash_ok", hw == hr);
    close(fd);
}

/* TCP_INFO after a 1 MiB echo: plausible real values (the raw buffer holds the kernel's
 * whole struct; glibc's header stops at tcpi_total_retrans). */
static void t_tcp_info(void) {
    unsigned char ti[512]; socklen_t l = sizeof ti;
    int fd = tcp();
    memset(ti, 0, sizeof ti);
    CHECK("tcp_info.fresh", getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &l));
    CHECK("tcp_info.fresh.state", ti[0]);
    CHECK("tcp_info.fresh.len_matches_kernel_struct", l >= 104);
    close(fd);
    fd = dial(); put(fd, "ECHO\n");
    static unsigned char buf[1 << 16], back[1 << 16]; size_t i = 0; long sent = 0, got = 0;
    for (int k = 0; k < 16; k++) {
        for (size_t j = 0; j < sizeof buf; j++) buf[j] = pat(i++);
        size_t off = 0;
        while (off < sizeof buf) { ssize_t w = write(fd, buf + off, sizeof buf - off); if (w <= 0) break; off += w; sent += w; }
        ssize_t r = recv(fd, back, sizeof back, MSG_WAITALL); if (r > 0) got += r;
    }
    CHECK("tcp_info.echoed", got);
    l = sizeof ti; memset(ti, 0, sizeof ti);
    CHECK("tcp_info.conn", getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &l));
    printf("tcp_info.conn.len = %s\n", l == sizeof(struct tcp_info) ? "glibc" : l > sizeof(struct tcp_info) ? "longer" : "short");
    CHECK("tcp_info.conn.state", ti[0]);
    CHECK("tcp_info.conn.rtt_positive", ti32(ti, 68) > 0);
    CHECK("tcp_info.conn.rtt_below_1s", ti32(ti, 68) < 1000000);
    CHECK("tcp_info.conn.rto_at_least_200ms", ti32(ti, 8) >= 200000);
    CHECK("tcp_info.conn.snd_mss_plausible", ti32(ti, 16) >= 500 && ti32(ti, 16) <= 1460);
    CHECK("tcp_info.conn.snd_cwnd_positive", ti32(ti, 80) > 0);
    CHECK("tcp_info.conn.rcv_space_positive", ti32(ti, 96) > 0);
    CHECK("tcp_info.conn.total_retrans_plausible", ti32(ti, 100) < 1000);
    CHECK("tcp_info.conn.unacked", ti32(ti, 24));
    /* every byte written ("ECHO\n" and the data) was acknowledged: the echo came back */
    /* Linux counts the SYN as one acknowledged byte */
    CHECK("tcp_info.conn.bytes_acked_minus_sent", (long)(ti64(ti, 120) - (uint64_t)sent - 5));
    CHECK("tcp_info.conn.bytes_received_eq", ti64(ti, 128) == (uint64_t)got);
    /* the rest of the 6.18 struct, where both must agree after a clean exchange (offsets
     * from include/uapi/linux/tcp.h; an older kernel's shorter struct reads as zero) */
    int full = l >= 248;
    CHECK("tcp_info.conn.ca_state_open", ti[1]);
    CHECK("tcp_info.conn.retransmits_backoff", ti[2] * 256 + ti[4]);
    CHECK("tcp_info.conn.sacked_lost_retrans", (long)ti32(ti, 28) + ti32(ti, 32) + ti32(ti, 36));
    CHECK("tcp_info.conn.last_data_recv_below_1s", ti32(ti, 52) < 1000);
    CHECK("tcp_info.conn.last_ack_recv_below_1s", ti32(ti, 56) < 1000);
    CHECK("tcp_info.conn.min_rtt_positive_le_rtt", ti32(ti, 148) > 0 && ti32(ti, 148) <= ti32(ti, 68));
    CHECK("tcp_info.conn.notsent_bytes", ti32(ti, 144));
    CHECK("tcp_info.conn.delivery_rate_positive", ti64(ti, 160) > 0);
    CHECK("tcp_info.conn.bytes_sent_ge_written", !full || ti64(ti, 200) >= (uint64_t)sent + 5);
    CHECK("tcp_info.conn.bytes_retrans_below_sent", !full || ti64(ti, 208) < ti64(ti, 200));
    /* the peer's window: positive and at most its largest receive buffer (tcp_rmem[2]) */
    long rmem_max = 0; FILE *rm = fopen("/proc/sys/net/ipv4/tcp_rmem", "r");
    if (rm) { long a, b2; if (fscanf(rm, "%ld %ld %ld", &a, &b2, &rmem_max) != 3) rmem_max = 0; fclose(rm); }
    CHECK("tcp_info.conn.snd_wnd_plausible", !full || (ti32(ti, 228) > 0 && (rmem_max == 0 || ti32(ti, 228) <= rmem_max)));
    CHECK("tcp_info.conn.rcv_wnd_positive", !full || ti32(ti, 232) > 0);
    uint16_t total_rto; memcpy(&total_rto, ti + 240, 2);
    CHECK("tcp_info.conn.total_rto", full ? total_rto : 0);
    close(fd);
}

static void t_dup(void) {
    int fd = dial(); char buf[16];
    put(fd, "ECHO\n");
    int d = dup(fd);
    CHECK("dup.ok", d > fd);
    CHECK("dup.close_original", close(fd));
    CHECK("dup.write", write(d, "abc", 3));
    CHECK("dup.read", recv(d, buf, 3, MSG_WAITALL));
    int d2 = fcntl(d, F_DUPFD_CLOEXEC, 200);
    CHECK("f_dupfd.at_least_200", d2 >= 200);
    CHECK("f_dupfd.cloexec", fcntl(d2, F_GETFD) & FD_CLOEXEC);
    CHECK("dup2", dup2(d2, 150));
    CHECK("dup3_cloexec", dup3(d2, 151, O_CLOEXEC));
    CHECK("dup3.same_fd", dup3(d2, d2, 0));
    close(d); close(d2); close(151);
    CHECK("dup2.write", write(150, "defg", 4));
    CHECK("dup2.read", recv(150, buf, 4, MSG_WAITALL));
    CHECK("dup2.shutdown", shutdown(150, SHUT_WR));
    CHECK("dup2.eof", read(150, buf, 4));
    close(150);
}

struct acc { int l; int fd; struct sockaddr_in a; };
static void *acceptor(void *arg) {
    struct acc *x = arg; socklen_t al = sizeof x->a;
    x->fd = accept(x->l, (struct sockaddr *)&x->a, &al);
    return 0;
}

static void t_listen(void) {
    int l = tcp(), one = 1; char line[64];
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(listen_port)};
    CHECK("listen.bind", bind(l, (struct sockaddr *)&a, sizeof a));
    CHECK("listen.bind_again", bind(l, (struct sockaddr *)&a, sizeof a));
    CHECK("listen.listen", listen(l, 16));
    CHECK("listen.so_acceptconn", ({ int v; socklen_t vl = sizeof v; getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &v, &vl); v; }));
    struct sockaddr_in g; socklen_t gl = sizeof g;
    CHECK("listen.getsockname", getsockname(l, (struct sockaddr *)&g, &gl));
    CHECK("listen.getsockname.port", ntohs(g.sin_port));
    int other = tcp();
    CHECK("listen.second_bind", bind(other, (struct sockaddr *)&a, sizeof a));
    close(other);
    fcntl(l, F_SETFL, O_NONBLOCK);
    CHECK("listen.accept_nonblocking_empty", accept(l, 0, 0));
    fcntl(l, F_SETFL, 0);
    /* accept on another thread than the one that listens */
    struct acc x = {l, -1};
    pthread_t t; pthread_create(&t, 0, acceptor, &x);
    int ctl = dial();
    snprintf(line, sizeof line, "CALL %d\n", listen_port);
    put(ctl, line);
    pthread_join(t, 0);
    CHECK("accept.thread", x.fd >= 0);
    CHECK("accept.peer_ip_ok", x.a.sin_addr.s_addr == peer_addr.sin_addr.s_addr);
    uint64_t h; long n = drain(x.fd, &h);
    unsigned char want[100000]; for (int i = 0; i < 100000; i++) want[i] = pat(i);
    CHECK("accept.bytes", n);
    CHECK("accept.hash_ok", h == fnv(want, sizeof want, FNV0));
    CHECK("accept.write", write(x.fd, "bye", 3));
    close(x.fd);
    n = read(ctl, line, sizeof line - 1); line[n > 0 ? n : 0] = 0;
    CHECK("accept.peer_got", atol(line));
    close(ctl);
    /* accept4 with flags */
    ctl = dial();
    snprintf(line, sizeof line, "CALL %d\n", listen_port);
    put(ctl, line);
    CHECK("accept4.poll", wait_fd(l, POLLIN, 5000) & POLLIN);
    int c = accept4(l, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC);
    CHECK("accept4.ok", c >= 0);
    CHECK("accept4.nonblock", (fcntl(c, F_GETFL) & O_NONBLOCK) != 0);
    CHECK("accept4.cloexec", fcntl(c, F_GETFD) & FD_CLOEXEC);
    fcntl(c, F_SETFL, 0);
    n = drain(c, &h);
    CHECK("accept4.bytes", n);
    close(c); close(ctl);
    close(l);
    int p0 = tcp(); struct sockaddr_in z = {.sin_family = AF_INET};
    CHECK("bind_port0", bind(p0, (struct sockaddr *)&z, sizeof z));
    gl = sizeof g; getsockname(p0, (struct sockaddr *)&g, &gl);
    CHECK("bind_port0.port_nonzero", g.sin_port != 0);
    CHECK("bind_port0.listen", listen(p0, 4));
    close(p0);
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
static int ep_tags(int ep, int ms, int *tags) {
    struct epoll_event ev[8];
    int n = epoll_wait(ep, ev, 8, ms);
    for (int i = 0; i < n; i++) tags[i] = (int)ev[i].data.u64 * 1000 + (ev[i].events & (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLHUP | EPOLLERR));
    if (n > 0) qsort(tags, n, sizeof *tags, cmp_int);
    return n;
}
static void say_tags(const char *name, int ep, int ms) {
    int tags[8]; char line[256]; int n = ep_tags(ep, ms, tags), off = 0;
    off += snprintf(line, sizeof line, "%s = %d", name, n);
    for (int i = 0; i < n; i++) off += snprintf(line + off, sizeof line - off, " %d", tags[i]);
    printf("%s\n", line); fflush(stdout);
}
/* Wait (at most 5 s) until `fd` is readable, without reading. */
static void settle_in(int fd) { wait_fd(fd, POLLIN, 5000); }

static void t_epoll(void) {
    int p[2]; pipe(p);
    int s = dial(); put(s, "ECHO\n");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
    CHECK("epoll.add_pipe", epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev));
    ev.data.u64 = 2;
    CHECK("epoll.add_socket", epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    CHECK("epoll.add_again", epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    say_tags("epoll.idle", ep, 50);
    write(p[1], "p", 1);
    say_tags("epoll.pipe_ready", ep, 1000);
    write(s, "s", 1); settle_in(s);
    say_tags("epoll.both_ready_lt", ep, 1000);
    say_tags("epoll.both_ready_lt_again", ep, 1000);
    char c; read(p[0], &c, 1); read(s, &c, 1);
    say_tags("epoll.drained", ep, 50);
    ev.events = EPOLLIN | EPOLLET; ev.data.u64 = 2;
    CHECK("epoll.mod_et", epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev));
    write(s, "t", 1); settle_in(s);
    say_tags("epoll.et_first", ep, 1000);
    say_tags("epoll.et_second", ep, 50);
    read(s, &c, 1);
    ev.events = EPOLLIN | EPOLLONESHOT; ev.data.u64 = 2;
    CHECK("epoll.mod_oneshot", epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev));
    write(s, "u", 1); settle_in(s);
    say_tags("epoll.oneshot_first", ep, 1000);
    say_tags("epoll.oneshot_second", ep, 50);
    CHECK("epoll.rearm", epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev));
    say_tags("epoll.rearmed", ep, 1000);
    read(s, &c, 1);
    ev.events = EPOLLOUT; ev.data.u64 = 2;
    CHECK("epoll.mod_out", epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev));
    say_tags("epoll.writable", ep, 1000);
    CHECK("epoll.del", epoll_ctl(ep, EPOLL_CTL_DEL, s, 0));
    CHECK("epoll.del_again", epoll_ctl(ep, EPOLL_CTL_DEL, s, 0));
    int f = dial(); put(f, "FIN\n");
    ev.events = EPOLLIN | EPOLLRDHUP; ev.data.u64 = 3;
    CHECK("epoll.add_rdhup", epoll_ctl(ep, EPOLL_CTL_ADD, f, &ev));
    settle_in(f);
    say_tags("epoll.rdhup", ep, 1000);
    close(f);
    say_tags("epoll.after_close", ep, 50);
    close(ep); close(s); close(p[0]); close(p[1]);
}

static void t_poll_select(void) {
    int p[2]; pipe(p);
    int s = dial(); put(s, "ECHO\n");
    struct pollfd fds[2] = {{p[0], POLLIN, 0}, {s, POLLIN | POLLOUT, 0}};
    CHECK("poll.mixed_writable", poll(fds, 2, 1000));
    CHECK("poll.mixed_writable.pipe", fds[0].revents);
    CHECK("poll.mixed_writable.sock", fds[1].revents);
    fds[1].events = POLLIN;
    CHECK("poll.idle", poll(fds, 2, 50));
    write(s, "x", 1);
    CHECK("poll.sock_readable", poll(fds, 2, 2000));
    CHECK("poll.sock_readable.sock", fds[1].revents);
    char c; read(s, &c, 1);
    write(p[1], "y", 1);
    CHECK("poll.pipe_readable", poll(fds, 2, 2000));
    CHECK("poll.pipe_readable.pipe", fds[0].revents);
    CHECK("poll.pipe_readable.sock", fds[1].revents);
    read(p[0], &c, 1);
    fd_set r; FD_ZERO(&r); FD_SET(p[0], &r); FD_SET(s, &r);
    struct timeval tv = {0, 50000};
    CHECK("select.idle", select((s > p[0] ? s : p[0]) + 1, &r, 0, 0, &tv));
    write(s, "z", 1);
    FD_ZERO(&r); FD_SET(p[0], &r); FD_SET(s, &r); tv.tv_sec = 2; tv.tv_usec = 0;
    CHECK("select.sock_readable", select((s > p[0] ? s : p[0]) + 1, &r, 0, 0, &tv));
    CHECK("select.sock_isset", FD_ISSET(s, &r) != 0);
    CHECK("select.pipe_isset", FD_ISSET(p[0], &r) != 0);
    read(s, &c, 1);
    fd_set w; FD_ZERO(&w); FD_SET(s, &w); tv.tv_sec = 1;
    CHECK("select.writable", select(s + 1, 0, &w, 0, &tv));
    close(s); close(p[0]); close(p[1]);
}

struct rd { int fd; char buf[8]; long n; };
static void *reader(void *arg) { struct rd *x = arg; x->n = recv(x->fd, x->buf, 5, MSG_WAITALL); return 0; }
static void *writer(void *arg) {
    int fd = (int)(intptr_t)arg; static unsigned char buf[1 << 16]; size_t i = 0;
    for (int k = 0; k < 160; k++) { for (size_t j = 0; j < sizeof buf; j++) buf[j] = pat(i++); size_t off = 0; while (off < sizeof buf) { ssize_t w = write(fd, buf + off, sizeof buf - off); if (w <= 0) return 0; off += w; } }
    shutdown(fd, SHUT_WR);
    return 0;
}

static void t_threads(void) {
    int s = dial(); put(s, "ECHO\n");
    struct rd x = {s};
    pthread_t t; pthread_create(&t, 0, reader, &x);
    usleep(100000);
    write(s, "hello", 5);
    pthread_join(t, 0);
    CHECK("threads.blocked_reader", x.n);
    CHECK("threads.data_ok", memcmp(x.buf, "hello", 5) == 0);
    close(s);
    /* 10 MiB echo: a writer thread and a reading main thread on one socket */
    s = dial(); put(s, "ECHO\n");
    pthread_create(&t, 0, writer, (void *)(intptr_t)s);
    uint64_t h; long n = drain(s, &h);
    pthread_join(t, 0);
    uint64_t want = FNV0; static unsigned char buf[1 << 16]; size_t i = 0;
    for (int k = 0; k < 160; k++) { for (size_t j = 0; j < sizeof buf; j++) buf[j] = pat(i++); want = fnv(buf, sizeof buf, want); }
    CHECK("threads.echo_10MiB.bytes", n);
    CHECK("threads.echo_10MiB.hash_ok", h == want);
    close(s);
}

/* Sockets made on several threads (one libtas context per thread under the shim): each
 * thread's own echo, a socket used after the thread that made it exited, and poll/epoll
 * over sockets of different threads. */
struct tw { int fd; int ok; };
static void *echo_thread(void *arg) {
    struct tw *x = arg; static __thread unsigned char out[16384], in[16384];
    int s = dial(); put(s, "ECHO\n");
    size_t i = 0; uint64_t hw = FNV0, hr = FNV0; int ok = 1;
    for (int k = 0; k < 64 && ok; k++) {
        for (size_t j = 0; j < sizeof out; j++) out[j] = pat(i++ * 3 + k);
        hw = fnv(out, sizeof out, hw);
        size_t off = 0;
        while (off < sizeof out) { ssize_t w = write(s, out + off, sizeof out - off); if (w <= 0) { ok = 0; break; } off += w; }
        if (recv(s, in, sizeof in, MSG_WAITALL) != (ssize_t)sizeof in) ok = 0;
        hr = fnv(in, sizeof in, hr);
    }
    x->fd = s; x->ok = ok && hw == hr;
    return 0;
}
static void *dial_thread(void *arg) { struct tw *x = arg; x->fd = dial(); put(x->fd, "ECHO\n"); return 0; }

struct excl { int l; int ep; int n; };
static void *excl_waiter(void *arg) {
    struct excl *x = arg; struct epoll_event ev;
    x->n = epoll_wait(x->ep, &ev, 1, 600);
    return 0;
}

static void t_contexts(void) {
    struct tw w[4] = {{0}}; pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], 0, echo_thread, &w[i]);
    int ok = 0;
    for (int i = 0; i < 4; i++) { pthread_join(t[i], 0); ok += w[i].ok; }
    CHECK("ctx.four_threads_echo_1MiB_ok", ok);
    /* the threads are gone: their sockets still work from this thread */
    char buf[8];
    CHECK("ctx.exited_thread_socket.write", write(w[0].fd, "abc", 3));
    CHECK("ctx.exited_thread_socket.read", recv(w[0].fd, buf, 3, MSG_WAITALL));
    for (int i = 0; i < 4; i++) close(w[i].fd);
    /* poll and epoll over two sockets made by two threads */
    struct tw a = {-1}, b = {-1};
    pthread_create(&t[0], 0, dial_thread, &a); pthread_join(t[0], 0);
    pthread_create(&t[1], 0, dial_thread, &b); pthread_join(t[1], 0);
    struct pollfd fds[2] = {{a.fd, POLLIN, 0}, {b.fd, POLLIN, 0}};
    CHECK("ctx.poll_idle", poll(fds, 2, 50));
    write(b.fd, "x", 1);
    CHECK("ctx.poll_second", poll(fds, 2, 2000));
    CHECK("ctx.poll_second.revents", fds[0].revents * 100 + fds[1].revents);
    read(b.fd, buf, 1);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
    epoll_ctl(ep, EPOLL_CTL_ADD, a.fd, &ev);
    ev.data.u64 = 2;
    epoll_ctl(ep, EPOLL_CTL_ADD, b.fd, &ev);
    say_tags("ctx.epoll_idle", ep, 50);
    write(a.fd, "y", 1);
    say_tags("ctx.epoll_first", ep, 2000);
    close(ep); close(a.fd); close(b.fd);
}

/* EPOLLEXCLUSIVE: two threads wait in their own epoll sets on one listener; one
 * connection wakes one of them. */
static void t_exclusive(void) {
    int l = tcp(), one = 1; char line[64];
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(listen_port)};
    bind(l, (struct sockaddr *)&a, sizeof a);
    listen(l, 16);
    struct excl x[2]; pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        x[i].l = l; x[i].ep = epoll_create1(0); x[i].n = -1;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.u64 = 1};
        if (i == 0) {
            struct epoll_event bad = {.events = EPOLLIN | EPOLLEXCLUSIVE | EPOLLONESHOT};
            CHECK("excl.with_oneshot", epoll_ctl(x[i].ep, EPOLL_CTL_ADD, l, &bad));
        }
        CHECK("excl.add", epoll_ctl(x[i].ep, EPOLL_CTL_ADD, l, &ev));
        if (i == 0) CHECK("excl.mod", epoll_ctl(x[i].ep, EPOLL_CTL_MOD, l, &ev));
    }
    for (int i = 0; i < 2; i++) pthread_create(&t[i], 0, excl_waiter, &x[i]);
    usleep(200000);
    int ctl = dial();
    snprintf(line, sizeof line, "CALL %d\n", listen_port);
    put(ctl, line);
    for (int i = 0; i < 2; i++) pthread_join(t[i], 0);
    CHECK("excl.woken", (x[0].n > 0) + (x[1].n > 0));
    int c = accept(l, 0, 0);
    uint64_t h;
    CHECK("excl.accepted_bytes", drain(c, &h));
    close(c); close(ctl); close(l); close(x[0].ep); close(x[1].ep);
}

#include <sys/wait.h>
/* fork: the child closes the inherited socket and makes its own connection; the parent's
 * connection is unaffected. */
static void t_fork(void) {
    int fd = dial(); char buf[8];
    put(fd, "ECHO\n");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd);
        int c = dial();
        put(c, "ECHO\nchild");
        int ok = recv(c, buf, 5, MSG_WAITALL) == 5 && !memcmp(buf, "child", 5);
        close(c);
        _exit(ok ? 0 : 1);
    }
    int st = -1;
    waitpid(pid, &st, 0);
    CHECK("fork.child_ok", WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK("fork.parent_write", write(fd, "parent", 6));
    CHECK("fork.parent_read", recv(fd, buf, 6, MSG_WAITALL));
    CHECK("fork.parent_data_ok", memcmp(buf, "parent", 6) == 0);
    close(fd);
}

/* Fork hand-over of accepted connections (decisions §26). The peer connects back to our
 * listener (DIAL) and echoes; its report on the control connection says how many bytes it
 * echoed and whether the connection ended with EOF or an error. */
static int dial_back(int l, int *ctl) {
    char line[64];
    *ctl = dial();
    snprintf(line, sizeof line, "DIAL %d\n", listen_port);
    put(*ctl, line);
    return accept(l, 0, 0);
}
static void report(const char *name, int ctl) {
    char line[64]; size_t n = 0;
    while (n < sizeof line - 1) { ssize_t k = read(ctl, line + n, 1); if (k <= 0) break; if (line[n++] == '\n') break; }
    line[n] = 0;
    if (n && line[n - 1] == '\n') line[n - 1] = 0;
    printf("%s = %s\n", name, line);
    fflush(stdout);
}
/* The child echoes 100 kB through the connection, hash-checked; 0 if all went well. */
static int echo_through(int c) {
    char out[10000], in[10000]; size_t i = 0;
    for (int k = 0; k < 10; k++) {
        for (int j = 0; j < 10000; j++) out[j] = pat(i++);
        size_t off = 0;
        while (off < sizeof out) { ssize_t w = write(c, out + off, sizeof out - off); if (w <= 0) return 10; off += w; }
        if (recv(c, in, sizeof in, MSG_WAITALL) != (ssize_t)sizeof in) return 11;
        if (fnv(in, sizeof in, FNV0) != fnv(out, sizeof out, FNV0)) return 12;
    }
    return 0;
}
static void t_handover(void) {
    int l = tcp(), one = 1, ctl, p[2]; char b;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(listen_port)};
    bind(l, (struct sockaddr *)&a, sizeof a);
    listen(l, 16);
    /* 1. parent accepts, forks, closes its copy; the child serves and closes. */
    int c = dial_back(l, &ctl);
    CHECK("handover.accept", c >= 0);
    /* Data the parent left unread moves with the connection: 3 bytes read (the ring
     * position is not 0), then 5000 echoed and left in the receive buffer. */
    char pre[5000], got[5000];
    for (int j = 0; j < 5000; j++) pre[j] = pat(j + 11);
    put(c, "abc");
    CHECK("handover.pre_read", recv(c, got, 3, MSG_WAITALL));
    CHECK("handover.pre_write", write(c, pre, sizeof pre));
    usleep(200000);
    pipe(p);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        read(p[0], &b, 1); /* the parent closed its copy */
        int r = 0;
        if (recv(c, got, sizeof got, MSG_WAITALL) != (ssize_t)sizeof got || memcmp(got, pre, sizeof pre)) r = 9;
        if (!r) r = echo_through(c);
        if (!r && write(c, "bye", 3) != 3) r = 13;
        char in[3];
        if (!r && (recv(c, in, 3, MSG_WAITALL) != 3 || memcmp(in, "bye", 3))) r = 14;
        if (!r && close(c) != 0) r = 15;
        _exit(r);
    }
    CHECK("handover.parent_close", close(c));
    write(p[1], "x", 1);
    int st = -1;
    waitpid(pid, &st, 0);
    CHECK("handover.child_status", WIFEXITED(st) ? WEXITSTATUS(st) : 100);
    report("handover.peer", ctl);
    close(ctl); close(p[0]); close(p[1]);
    /* 2. both close: the parent first, then the child; the peer sees EOF. */
    c = dial_back(l, &ctl);
    pipe(p);
    fflush(stdout);
    pid = fork();
    if (pid == 0) { read(p[0], &b, 1); _exit(close(c) == 0 ? 0 : 1); }
    CHECK("handover.both.parent_close", close(c));
    write(p[1], "x", 1);
    waitpid(pid, &st, 0);
    CHECK("handover.both.child_status", WIFEXITED(st) ? WEXITSTATUS(st) : 100);
    report("handover.both.peer", ctl);
    close(ctl); close(p[0]); close(p[1]);
    /* 3. the child exits without closing: the parent's copy still works, and its close
     * ends the connection. */
    c = dial_back(l, &ctl);
    fflush(stdout);
    pid = fork();
    if (pid == 0) _exit(0);
    waitpid(pid, &st, 0);
    CHECK("handover.exit.parent_echo", echo_through(c));
    CHECK("handover.exit.parent_close", close(c));
    report("handover.exit.peer", ctl);
    close(ctl);
    /* 4. the child uses the connection (reads part of what the peer sent, writes an
     * answer) and exits without closing it; the parent, which still holds it, reads the
     * rest and echoes on: the connection stays open for it (as Linux's does). */
    c = dial_back(l, &ctl);
    char want[5000];
    for (int j = 0; j < 5000; j++) want[j] = pat(j + 5);
    CHECK("handover.child_exit.write", write(c, want, sizeof want));
    usleep(200000);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        int r = 0;
        if (recv(c, got, 2000, MSG_WAITALL) != 2000 || memcmp(got, want, 2000)) r = 9;
        if (!r && write(c, "kid", 3) != 3) r = 10;
        _exit(r);
    }
    waitpid(pid, &st, 0);
    CHECK("handover.child_exit.child_status", WIFEXITED(st) ? WEXITSTATUS(st) : 100);
    CHECK("handover.child_exit.parent_rest", recv(c, got, 3003, MSG_WAITALL));
    CHECK("handover.child_exit.parent_rest_ok", memcmp(got, want + 2000, 3000) == 0 && memcmp(got + 3000, "kid", 3) == 0);
    CHECK("handover.child_exit.parent_echo", echo_through(c));
    CHECK("handover.child_exit.parent_close", close(c));
    report("handover.child_exit.peer", ctl);
    close(ctl);
    close(l);
}

/* Clients that connect and close without sending (port probes; iperf3 gets them): the
 * accepted connection reads EOF, and a read that returns 0 leaves errno alone. */
static int listener(int reuse) {
    int l = tcp();
    if (reuse) setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof reuse);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(listen_port)};
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 16)) { perror("listener"); exit(2); }
    return l;
}
static int knock(int count) {
    char line[64];
    int ctl = dial();
    snprintf(line, sizeof line, "KNOCK %d %d\n", listen_port, count);
    put(ctl, line);
    return ctl;
}
static void say_read(const char *name, int fd, size_t n) {
    char buf[64];
    errno = EDOM; /* a read that returns 0 or data must not change it */
    long r = read(fd, buf, n < sizeof buf ? n : sizeof buf);
    int e = errno;
    printf("%s = %ld %s\n", name, r, strerrorname_np(e) ? strerrorname_np(e) : "?");
    fflush(stdout);
}
static void t_knock(void) {
    int l = listener(1);
    /* 1. a blocking read right after accept (iperf3 reading its cookie) */
    int ctl = knock(1);
    int c = accept(l, 0, 0);
    CHECK("knock.accept", c >= 0);
    say_read("knock.blocking_read", c, 37);
    say_read("knock.blocking_read_again", c, 4);
    report("knock.peer", ctl);
    close(c); close(ctl);
    /* 2. poll for POLLIN, then a non-blocking read */
    ctl = knock(1);
    c = accept4(l, 0, 0, SOCK_NONBLOCK);
    CHECK("knock.poll", wait_fd(c, POLLIN | POLLRDHUP, 5000));
    say_read("knock.nonblocking_read", c, 37);
    report("knock.poll.peer", ctl);
    close(c); close(ctl);
    /* 3. epoll with EPOLLRDHUP (edge-triggered), then a non-blocking read */
    ctl = knock(1);
    c = accept4(l, 0, 0, SOCK_NONBLOCK);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u64 = 1};
    CHECK("knock.epoll_add", epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev));
    say_tags("knock.epoll_rdhup", ep, 5000);
    say_read("knock.epoll.nonblocking_read", c, 37);
    report("knock.epoll.peer", ctl);
    close(ep); close(c); close(ctl);
    /* 4. the FIN is there before accept: a non-blocking read at once reads EOF */
    ctl = knock(1);
    report("knock.queued.peer", ctl);
    usleep(200000);
    c = accept4(l, 0, 0, SOCK_NONBLOCK);
    CHECK("knock.queued.accept", c >= 0);
    say_read("knock.queued.nonblocking_read", c, 37);
    close(c); close(ctl);
    /* 5. we write after the peer's FIN: its kernel answers with a reset (the socket is
     * gone); reads still see EOF, the next write EPIPE (iperf3 sends a state byte) */
    ctl = knock(1);
    c = accept(l, 0, 0);
    say_read("knock.reset.read", c, 37);
    report("knock.reset.peer", ctl);
    CHECK("knock.reset.write", send(c, "x", 1, MSG_NOSIGNAL));
    usleep(200000);
    CHECK("knock.reset.poll", wait_fd(c, POLLIN | POLLOUT | POLLRDHUP, 1000));
    say_read("knock.reset.read_after", c, 37);
    CHECK("knock.reset.write_after", send(c, "x", 1, MSG_NOSIGNAL));
    say_read("knock.reset.read_last", c, 37);
    close(c); close(ctl);
    close(l);
}

/* Close the listener and listen again on the same port at once (iperf3 after a client
 * that sent nothing): with SO_REUSEADDR it works while the last accepted connection is
 * still open or closing; without it, bind fails while one is open (as Linux). */
static void t_relisten(void) {
    int l = listener(1), ctl, one = 1;
    ctl = knock(1);
    int c = accept(l, 0, 0);
    CHECK("relisten.accept", c >= 0);
    say_read("relisten.read_eof", c, 37);
    CHECK("relisten.close_conn", close(c));
    CHECK("relisten.close_listener", close(l));
    l = tcp();
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(listen_port)};
    CHECK("relisten.bind", bind(l, (struct sockaddr *)&a, sizeof a));
    CHECK("relisten.listen", listen(l, 16));
    report("relisten.first.peer", ctl);
    close(ctl);
    ctl = knock(1);
    c = accept(l, 0, 0);
    CHECK("relisten.accept_again", c >= 0);
    say_read("relisten.read_eof_again", c, 37);
    report("relisten.second.peer", ctl);
    close(c); close(ctl);
    /* an accepted connection still open when the listener closes */
    int d = dial_back(l, &ctl);
    CHECK("relisten.open.accept", d >= 0);
    CHECK("relisten.open.close_listener", close(l));
    l = tcp();
    CHECK("relisten.open.bind_without_reuseaddr", bind(l, (struct sockaddr *)&a, sizeof a));
    close(l);
    l = tcp();
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    CHECK("relisten.open.bind_reuseaddr", bind(l, (struct sockaddr *)&a, sizeof a));
    CHECK("relisten.open.listen", listen(l, 16));
    int ctl2 = knock(1);
    c = accept(l, 0, 0);
    CHECK("relisten.open.accept_new", c >= 0);
    say_read("relisten.open.new_read_eof", c, 37);
    report("relisten.open.knock.peer", ctl2);
    close(c); close(ctl2);
    CHECK("relisten.open.old_still_echoes", echo_through(d));
    close(d);
    report("relisten.open.old.peer", ctl);
    close(ctl);
    close(l);
}

/* Connections used by another thread than the one whose context they live on move to
 * that thread's context under the shim (decisions §29); none of it may show. */
struct mvw { int fd; int ok; long bytes; };
static void *mv_worker(void *arg) {
    struct mvw *x = arg; int c = x->fd;
    /* Both sets hold the connection before it moves. */
    int et = epoll_create1(0), lt = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = 7};
    epoll_ctl(et, EPOLL_CTL_ADD, c, &ev);
    ev.events = EPOLLIN; ev.data.u64 = 8;
    epoll_ctl(lt, EPOLL_CTL_ADD, c, &ev);
    /* 1 MiB echoed in 16 KiB pieces, hash-checked */
    static unsigned char out[16384], in[16384];
    uint64_t hw = FNV0, hr = FNV0; long got = 0; int ok = 1; size_t i = 0;
    for (int k = 0; k < 64 && ok; k++) {
        for (size_t j = 0; j < sizeof out; j++) out[j] = pat(i++ + 5);
        hw = fnv(out, sizeof out, hw);
        size_t off = 0;
        while (off < sizeof out) { ssize_t w = write(c, out + off, sizeof out - off); if (w <= 0) { ok = 0; break; } off += w; }
        ssize_t n = recv(c, in, sizeof in, MSG_WAITALL);
        if (n != (ssize_t)sizeof in) ok = 0;
        if (n > 0) { hr = fnv(in, n, hr); got += n; }
    }
    x->ok = ok && hw == hr; x->bytes = got;
    say_tags("mv.worker.et_idle", et, 0);
    say_tags("mv.worker.lt_idle", lt, 0);
    /* edge-triggered after the move: every echo is reported (or the wait times out) */
    fcntl(c, F_SETFL, O_NONBLOCK);
    long total = 0; uint64_t he = FNV0, hx = FNV0; int lost = 0;
    for (int r = 0; r < 8 && !lost; r++) {
        for (int j = 0; j < 1000; j++) out[j] = pat(r * 1000 + j);
        hx = fnv(out, 1000, hx);
        if (write(c, out, 1000) != 1000) { lost = 2; break; }
        long round = 0;
        while (round < 1000) {
            struct epoll_event e;
            if (epoll_wait(et, &e, 1, 5000) != 1) { lost = 1; break; }
            for (;;) { ssize_t n = read(c, in, sizeof in); if (n <= 0) break; he = fnv(in, n, he); round += n; }
        }
        total += round;
    }
    CHECK("mv.worker.et_lost", lost);
    CHECK("mv.worker.et_bytes", total);
    CHECK("mv.worker.et_hash_ok", he == hx);
    /* drained: no false edge either */
    say_tags("mv.worker.et_after_drain", et, 100);
    /* level-triggered */
    write(c, "L", 1); settle_in(c);
    say_tags("mv.worker.lt_ready", lt, 2000);
    say_tags("mv.worker.lt_again", lt, 0);
    char b; read(c, &b, 1);
    say_tags("mv.worker.lt_drained", lt, 50);
    /* one-shot */
    ev.events = EPOLLIN | EPOLLONESHOT; ev.data.u64 = 7;
    CHECK("mv.worker.mod_oneshot", epoll_ctl(et, EPOLL_CTL_MOD, c, &ev));
    write(c, "O", 1); settle_in(c);
    say_tags("mv.worker.oneshot_first", et, 2000);
    say_tags("mv.worker.oneshot_second", et, 50);
    read(c, &b, 1);
    close(et); close(lt);
    fcntl(c, F_SETFL, 0);
    CHECK("mv.worker.close", close(c));
    return 0;
}
struct mva { int ctl; struct mvw w; };
static void *mv_acceptor(void *arg) {
    struct mva *x = arg; int one = 1;
    int l = tcp();
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* a port of its own (LISTEN_PORT + 1): the shim's re-listen on a port just closed
     * is a known problem of its own (docs/compatibility.md) */
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(listen_port + 1)};
    bind(l, (struct sockaddr *)&a, sizeof a);
    listen(l, 16);
    char line[64];
    x->ctl = dial();
    snprintf(line, sizeof line, "DIAL %d\n", listen_port + 1);
    put(x->ctl, line);
    x->w.fd = accept(l, 0, 0);
    /* hand the accepted connection to a worker thread, which uses it alone */
    pthread_t t; pthread_create(&t, 0, mv_worker, &x->w);
    pthread_join(t, 0);
    close(l);
    return 0;
}

/* A thread that makes data calls on a socket (non-blocking reads that find nothing: the
 * calls that move it under the shim), then writes. */
struct mvm { int fd; const char *msg; int eagain; long w; };
static void *mv_mover(void *arg) {
    struct mvm *x = arg; char b[8];
    usleep(100000);
    for (int i = 0; i < 12; i++) if (recv(x->fd, b, sizeof b, MSG_DONTWAIT) < 0 && errno == EAGAIN) x->eagain++;
    x->w = write(x->fd, x->msg, strlen(x->msg));
    return 0;
}

/* Two threads take turns writing bursts of six writes on one socket. */
struct mvt { int fd; int go[2], done[2]; };
static void burst(int fd, int r) {
    char b[200];
    for (int k = 0; k < 6; k++) { for (int j = 0; j < 200; j++) b[j] = pat(r * 1200 + k * 200 + j); put_n(fd, b, 200); }
}
static void *mv_turns(void *arg) {
    struct mvt *x = arg; char t;
    for (int r = 1; r < 64; r += 2) { if (read(x->go[0], &t, 1) != 1) break; burst(x->fd, r); write(x->done[1], "x", 1); }
    return 0;
}

static void t_thread_moves(void) {
    /* 1. an acceptor thread accepts and hands the connection to a worker thread */
    struct mva acc = {-1, {-1, 0, 0}};
    pthread_t t; pthread_create(&t, 0, mv_acceptor, &acc);
    pthread_join(t, 0);
    CHECK("mv.handover.echo_ok", acc.w.ok);
    CHECK("mv.handover.echo_bytes", acc.w.bytes);
    report("mv.handover.peer", acc.ctl);
    close(acc.ctl);
    /* 2. a thread blocked in a read while another thread's calls move the socket */
    char buf[64];
    int s = dial(); put(s, "ECHO\n");
    struct mvm m = {s, "hello", 0, 0};
    pthread_create(&t, 0, mv_mover, &m);
    CHECK("mv.blocked_read", recv(s, buf, 5, MSG_WAITALL));
    pthread_join(t, 0);
    CHECK("mv.blocked_read.data_ok", memcmp(buf, "hello", 5) == 0);
    CHECK("mv.blocked_read.mover_eagain", m.eagain);
    CHECK("mv.blocked_read.mover_write", m.w);
    /* the first thread goes on using it */
    CHECK("mv.blocked_read.after_write", write(s, "again", 5));
    CHECK("mv.blocked_read.after_read", recv(s, buf, 5, MSG_WAITALL));
    close(s);
    /* 3. the same with a thread blocked in epoll_wait (the set holds the socket from
     * before the move), then in poll */
    s = dial(); put(s, "ECHO\n");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 5};
    epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    m = (struct mvm){s, "y", 0, 0};
    pthread_create(&t, 0, mv_mover, &m);
    say_tags("mv.blocked_epoll", ep, 5000);
    pthread_join(t, 0);
    CHECK("mv.blocked_epoll.read", read(s, buf, 1));
    say_tags("mv.blocked_epoll.drained", ep, 50);
    close(ep);
    m = (struct mvm){s, "z", 0, 0};
    struct pollfd pf = {s, POLLIN, 0};
    pthread_create(&t, 0, mv_mover, &m);
    CHECK("mv.blocked_poll", poll(&pf, 1, 5000));
    CHECK("mv.blocked_poll.revents", pf.revents);
    pthread_join(t, 0);
    CHECK("mv.blocked_poll.read", read(s, buf, 1));
    close(s);
    /* 4. two threads take turns writing bursts on one socket; the echo comes back whole
     * and in order */
    struct mvt x;
    x.fd = dial(); put(x.fd, "ECHO\n");
    pipe(x.go); pipe(x.done);
    pthread_create(&t, 0, mv_turns, &x);
    char tk;
    for (int r = 0; r < 64; r += 2) { burst(x.fd, r); write(x.go[1], "x", 1); read(x.done[0], &tk, 1); }
    pthread_join(t, 0);
    static unsigned char back[64 * 1200], want[64 * 1200];
    for (size_t j = 0; j < sizeof want; j++) want[j] = pat(j);
    CHECK("mv.turns.bytes", recv(x.fd, back, sizeof back, MSG_WAITALL));
    CHECK("mv.turns.data_ok", memcmp(back, want, sizeof want) == 0);
    close(x.fd); close(x.go[0]); close(x.go[1]); close(x.done[0]); close(x.done[1]);
}

/* exec: a socket with close-on-exec is gone in the new program, one without it is there. */
static int fd_survives_exec(int fd) {
    char cmd[64];
    snprintf(cmd, sizeof cmd, "[ -e /proc/self/fd/%d ]", fd);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) { execl("/bin/sh", "sh", "-c", cmd, (char *)0); _exit(127); }
    int st = -1;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) == 0 : -1;
}
static void t_exec(void) {
    int a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int b = tcp();
    CHECK("exec.cloexec_socket_survives", fd_survives_exec(a));
    CHECK("exec.plain_socket_survives", fd_survives_exec(b));
    close(a); close(b);
}

/* Signals during blocking socket calls (signal(7)): a handler without SA_RESTART makes
 * the call fail with EINTR; with SA_RESTART it goes on, unless the socket has a time
 * limit (SO_RCVTIMEO), which always gives EINTR. */
static volatile sig_atomic_t alarms;
static void on_alarm(int sig) { (void)sig; alarms++; }
static void alarm_in(int ms, int flags) {
    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; sigemptyset(&sa.sa_mask); sa.sa_flags = flags;
    sigaction(SIGALRM, &sa, 0);
    struct itimerval it = {{0, 0}, {ms / 1000, (ms % 1000) * 1000}};
    setitimer(ITIMER_REAL, &it, 0);
}
static void *late_writer(void *arg) {
    sigset_t m; sigemptyset(&m); sigaddset(&m, SIGALRM); pthread_sigmask(SIG_BLOCK, &m, 0);
    usleep(400000);
    write((int)(intptr_t)arg, "abcd", 4);
    return 0;
}
static void t_signals(void) {
    int s = dial(); put(s, "ECHO\n");
    char b[8];
    alarms = 0;
    alarm_in(150, 0);
    CHECK("signal.recv_no_restart", recv(s, b, 4, 0));
    alarm_in(150, SA_RESTART);
    pthread_t t; pthread_create(&t, 0, late_writer, (void *)(intptr_t)s);
    CHECK("signal.recv_restart", recv(s, b, 4, MSG_WAITALL));
    pthread_join(t, 0);
    CHECK("signal.recv_restart.data_ok", memcmp(b, "abcd", 4) == 0);
    struct timeval tv = {2, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    alarm_in(150, SA_RESTART);
    CHECK("signal.recv_timeout_restart", recv(s, b, 4, 0));
    int l = tcp();
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(listen_port + 7)};
    CHECK("signal.listen.bind", bind(l, (struct sockaddr *)&a, sizeof a));
    CHECK("signal.listen", listen(l, 4));
    alarm_in(150, 0);
    CHECK("signal.accept_no_restart", accept(l, 0, 0));
    CHECK("signal.handler_runs", alarms);
    signal(SIGALRM, SIG_DFL);
    close(l); close(s);
}

/* conform info PEER_IP PEER_PORT BYTES: echo BYTES through the peer's ECHOINFO service
 * (hash-checked), sampling TCP_INFO after every 64 KiB; print this end's final TCP_INFO
 * and the most loss state seen as key=value lines, then the peer's (kernel) TCP_INFO. */
static int run_info(long bytes) {
    int fd = dial(); put(fd, "ECHOINFO\n");
    static unsigned char buf[1 << 16], back[1 << 16]; unsigned char ti[512]; socklen_t l;
    size_t i = 0; long sent = 0, got = 0; uint64_t hw = FNV0, hr = FNV0;
    unsigned max_ca = 0, max_lost = 0, max_sacked = 0, max_retrans = 0;
    while (sent < bytes) {
        size_t n = bytes - sent < (long)sizeof buf ? (size_t)(bytes - sent) : sizeof buf;
        for (size_t j = 0; j < n; j++) buf[j] = pat(i++);
        hw = fnv(buf, n, hw);
        size_t off = 0;
        while (off < n) { ssize_t w = write(fd, buf + off, n - off); if (w <= 0) { perror("write"); return 1; } off += w; }
        sent += n;
        ssize_t r = recv(fd, back, n, MSG_WAITALL); if (r != (ssize_t)n) { perror("recv"); return 1; }
        hr = fnv(back, r, hr); got += r;
        l = sizeof ti; memset(ti, 0, sizeof ti);
        if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &l) == 0) {
            if (ti[1] > max_ca) max_ca = ti[1];
            if (ti32(ti, 32) > max_lost) max_lost = ti32(ti, 32);
            if (ti32(ti, 28) > max_sacked) max_sacked = ti32(ti, 28);
            if (ti32(ti, 36) > max_retrans) max_retrans = ti32(ti, 36);
        }
    }
    l = sizeof ti; memset(ti, 0, sizeof ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &l) != 0) { perror("getsockopt"); return 1; }
    printf("written=%ld\nechoed=%ld\necho_hash_ok=%d\nlen=%u\n", sent + 9, got, hw == hr, (unsigned)l);
    printf("max_ca_state=%u\nmax_lost=%u\nmax_sacked=%u\nmax_retrans=%u\n", max_ca, max_lost, max_sacked, max_retrans);
    printf("state=%u\nca_state=%u\nretransmits=%u\nprobes=%u\nbackoff=%u\noptions=%u\n", ti[0], ti[1], ti[2], ti[3], ti[4], ti[5]);
    static const struct { const char *k; int off; } f32[] = {
        {"rto", 8}, {"snd_mss", 16}, {"unacked", 24}, {"sacked", 28}, {"lost", 32}, {"retrans", 36},
        {"last_data_sent", 44}, {"last_data_recv", 52}, {"last_ack_recv", 56}, {"rcv_ssthresh", 64},
        {"rtt", 68}, {"rttvar", 72}, {"snd_ssthresh", 76}, {"snd_cwnd", 80}, {"reordering", 88},
        {"rcv_space", 96}, {"total_retrans", 100}, {"notsent_bytes", 144}, {"min_rtt", 148},
        {"snd_wnd", 228}, {"rcv_wnd", 232}, {"total_rto_time", 244}};
    for (size_t k = 0; k < sizeof f32 / sizeof f32[0]; k++) printf("%s=%u\n", f32[k].k, ti32(ti, f32[k].off));
    static const struct { const char *k; int off; } f64[] = {
        {"pacing_rate", 104}, {"bytes_acked", 120}, {"bytes_received", 128}, {"delivery_rate", 160},
        {"bytes_sent", 200}, {"bytes_retrans", 208}};
    for (size_t k = 0; k < sizeof f64 / sizeof f64[0]; k++) printf("%s=%llu\n", f64[k].k, (unsigned long long)ti64(ti, f64[k].off));
    uint16_t rto[2]; memcpy(rto, ti + 240, 4);
    printf("total_rto=%u\ntotal_rto_recoveries=%u\n", rto[0], rto[1]);
    fflush(stdout);
    shutdown(fd, SHUT_WR);
    char tail[1024]; size_t t = 0;
    for (;;) { ssize_t k = read(fd, tail + t, sizeof tail - 1 - t); if (k <= 0) break; t += k; if (t == sizeof tail - 1) break; }
    tail[t] = 0;
    printf("%s", tail);
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "peer")) return run_peer(atoi(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "info")) {
        peer_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        inet_pton(AF_INET, argv[2], &peer_addr.sin_addr);
        return run_info(atol(argv[4]));
    }
    if (argc != 6 || strcmp(argv[1], "run")) {
        fprintf(stderr, "usage: conform peer PORT | conform run PEER_IP PEER_PORT CLOSED_PORT LISTEN_PORT | conform info PEER_IP PEER_PORT BYTES\n");
        return 2;
    }
    signal(SIGPIPE, on_sigpipe);
    peer_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &peer_addr.sin_addr);
    closed_addr = peer_addr; closed_addr.sin_port = htons(atoi(argv[4]));
    listen_port = atoi(argv[5]);
    const char *only = getenv("CONFORM_ONLY");
#define RUN(f) if (!only || strstr(#f, only)) f()
    RUN(t_basics); RUN(t_nb_connect); RUN(t_echo); RUN(t_nonblocking); RUN(t_peek_waitall);
    RUN(t_vectors); RUN(t_shutdown_pipe); RUN(t_reset); RUN(t_options); RUN(t_sndbuf); RUN(t_rcvbuf); RUN(t_tcp_info); RUN(t_dup);
    RUN(t_listen); RUN(t_epoll); RUN(t_poll_select); RUN(t_threads); RUN(t_contexts); RUN(t_exclusive);
    RUN(t_fork); RUN(t_handover); RUN(t_thread_moves); RUN(t_exec); RUN(t_signals); RUN(t_knock); RUN(t_relisten);
    printf("done\n");
    return 0;
}
