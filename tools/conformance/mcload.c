/* A memcached load client for the shim's tests (tools/tests/preload.rs):
 *
 *   mcload IP PORT THREADS SECONDS
 *
 * Each thread opens one connection, stores its own key (a 100-byte value) and then
 * makes `get` round trips for SECONDS, checking every reply byte for byte. Prints
 * "mcload ops N bad M rate R" (R: round trips per second, all threads together). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr;
static double seconds;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int put(int fd, const char *s, size_t n) {
    size_t off = 0;
    while (off < n) { ssize_t k = write(fd, s + off, n - off); if (k <= 0) return -1; off += k; }
    return 0;
}

/* Read exactly n bytes. */
static int get(int fd, char *b, size_t n) {
    size_t off = 0;
    while (off < n) { ssize_t k = read(fd, b + off, n - off); if (k <= 0) return -1; off += k; }
    return 0;
}

struct res { long ops, bad; };

static void *worker(void *arg) {
    struct res *r = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { r->bad = 1; return 0; }
    char key[32], val[100], req[64], want[256], got[256];
    snprintf(key, sizeof key, "k%lx", (unsigned long)pthread_self());
    for (int i = 0; i < 100; i++) val[i] = 'a' + (i * 7 + (int)strlen(key)) % 26;
    int hn = snprintf(req, sizeof req, "set %s 0 0 100\r\n", key);
    if (put(fd, req, hn) || put(fd, val, 100) || put(fd, "\r\n", 2) || get(fd, got, 8) || memcmp(got, "STORED\r\n", 8)) { r->bad = 1; close(fd); return 0; }
    int qn = snprintf(req, sizeof req, "get %s\r\n", key);
    int wn = snprintf(want, sizeof want, "VALUE %s 0 100\r\n", key);
    memcpy(want + wn, val, 100); wn += 100;
    memcpy(want + wn, "\r\nEND\r\n", 7); wn += 7;
    double end = now() + seconds;
    while (now() < end) {
        if (put(fd, req, qn) || get(fd, got, wn)) { r->bad++; break; }
        if (memcmp(got, want, wn)) r->bad++;
        r->ops++;
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: mcload IP PORT THREADS SECONDS\n"); return 2; }
    addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    int n = atoi(argv[3]);
    seconds = atof(argv[4]);
    if (n < 1 || n > 256 || seconds <= 0) { fprintf(stderr, "mcload: bad arguments\n"); return 2; }
    pthread_t t[256]; struct res r[256];
    memset(r, 0, sizeof r);
    double start = now();
    for (int i = 0; i < n; i++) pthread_create(&t[i], 0, worker, &r[i]);
    long ops = 0, bad = 0;
    for (int i = 0; i < n; i++) { pthread_join(t[i], 0); ops += r[i].ops; bad += r[i].bad; }
    double took = now() - start;
    printf("mcload ops %ld bad %ld rate %.0f\n", ops, bad, ops / took);
    return bad ? 1 : 0;
}
