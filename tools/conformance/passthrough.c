/* What the LD_PRELOAD shim costs descriptors it does not own (docs/compatibility.md):
 * calls on pipes, eventfds, AF_UNIX sockets and epoll sets of kernel descriptors, timed
 * per call. Run it once plainly and once with LD_PRELOAD=libtas_preload.so and compare:
 *
 *   passthrough [ROUNDS [ONLY]]   prints "NAME ns_per_call" lines (ONLY: the tests whose
 *                                 name contains it); exit 1 if data differ
 *
 * Every transfer is checked (the bytes read are the bytes written), so the same binary
 * also shows that the shim passes these calls through unchanged. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int bad;
static const char *only;
#define TIME(name, n, body) do { \
        if (only && !strstr(name, only)) break; \
        double t0 = now_ns(); \
        for (long i = 0; i < (n); i++) { body; } \
        printf("%-28s %8.1f\n", name, (now_ns() - t0) / (n)); \
    } while (0)

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    only = argc > 2 ? argv[2] : 0;
    int p[2];
    if (pipe(p) < 0) { perror("pipe"); return 2; }
    unsigned char out[64], in[64];
    for (int k = 0; k < 64; k++) out[k] = (unsigned char)(k * 7 + 1);
    TIME("pipe_write_read_64B", n, {
        out[0] = (unsigned char)i;
        if (write(p[1], out, 64) != 64 || read(p[0], in, 64) != 64 || memcmp(in, out, 64)) bad = 1;
    });
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) { perror("socketpair"); return 2; }
    TIME("unix_send_recv_64B", n, {
        out[1] = (unsigned char)i;
        if (send(sv[0], out, 64, 0) != 64 || recv(sv[1], in, 64, MSG_WAITALL) != 64 || memcmp(in, out, 64)) bad = 1;
    });
    write(p[1], "x", 1);
    struct pollfd pf = {p[0], POLLIN, 0};
    TIME("poll_1_ready", n, {
        if (poll(&pf, 1, 0) != 1 || !(pf.revents & POLLIN)) bad = 1;
    });
    int efd = eventfd(1, 0), ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 42}, got;
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    TIME("epoll_wait_1_ready", n, {
        if (epoll_wait(ep, &got, 1, 0) != 1 || got.data.u64 != 42) bad = 1;
    });
    TIME("fcntl_getfl", n, {
        if (fcntl(p[0], F_GETFL) < 0) bad = 1;
    });
    TIME("socket_close_unix", n / 10, {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0 || close(s) != 0) bad = 1;
    });
    if (bad) { fprintf(stderr, "passthrough: data or results differ\n"); return 1; }
    return 0;
}
