#!/usr/bin/env python3
"""Request/response check on the kernel's TCP against an echo server.

Opens C connections (all of them first, so C connections are open at once), then each
connection does N request/responses in lock step: send S bytes, read exactly S bytes back,
compare. Every request carries its connection and sequence number, so a response delivered
to the wrong connection or out of order is caught. Then every connection half-closes and
expects the server's FIN with no extra bytes.

Prints one JSON line:
  {"ok": true, "conns": C, "rpcs_per_conn": N, "size": S, "rpcs_done": C*N, "seconds": ..,
   "rpcs_per_s": .., "latency_us": {"p50": .., "p99": .., "max": ..}, "errors": []}
Exit status: 0 all responses correct; 1 a mismatch, reset or timeout; 2 bad arguments or a
failed connect.

  rpc_client.py --connect 10.77.0.1:7 --conns 200 --rpcs 100 --size 64
"""

import argparse
import socket
import struct
import sys
import threading

from peerlib import Stream, connect, emit, fail, first_difference, now, parse_addr, parse_size

HEADER = struct.Struct("<IIQ")  # connection index, request number, seed


def request(body, conn, i, seed, size):
    """Request i of a connection: its header, then the connection's body rotated by i."""
    head = HEADER.pack(conn, i, seed)
    k = i % len(body) if body else 0
    return (head + body[k:] + body[:k])[:size]


def recv_exactly(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        m = sock.recv_into(view[got:])
        if m == 0:
            break
        got += m
    return bytes(buf[:got])


class Worker:
    def __init__(self, index, sock, args):
        self.index = index
        self.sock = sock
        self.args = args
        self.done = 0
        self.latencies = []
        self.error = None

    def run(self, start_barrier, end_barrier):
        a = self.args
        body = Stream(a.seed, self.index).next(a.size)
        try:
            start_barrier.wait()
            for i in range(a.rpcs):
                req = request(body, self.index, i, a.seed, a.size)
                t0 = now()
                self.sock.sendall(req)
                resp = recv_exactly(self.sock, a.size)
                self.latencies.append(now() - t0)
                if resp != req:
                    if len(resp) < len(req):
                        raise Failure(f"rpc {i}: connection closed after {len(resp)} of {a.size} response bytes")
                    raise Failure(f"rpc {i}: response byte {first_difference(resp, req)} differs from the request")
                self.done += 1
            end_barrier.wait()  # all connections were open for the whole run
            self.sock.shutdown(socket.SHUT_WR)
            extra = self.sock.recv(65536)
            if extra:
                raise Failure(f"{len(extra)} unexpected bytes after the last response")
        except threading.BrokenBarrierError:
            self.error = self.error or f"conn {self.index}: another connection failed first"
        except Failure as e:
            self.error = f"conn {self.index}: {e}"
            start_barrier.abort()
            end_barrier.abort()
        except socket.timeout:
            what = "the FIN" if self.done == self.args.rpcs else "a response"
            self.error = f"conn {self.index}: timed out waiting for {what} after {self.done} rpcs"
            start_barrier.abort()
            end_barrier.abort()
        except OSError as e:
            self.error = f"conn {self.index}: {e!r} after {self.done} rpcs"
            start_barrier.abort()
            end_barrier.abort()


class Failure(Exception):
    pass


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connect", required=True, type=parse_addr, metavar="IP:PORT")
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--rpcs", type=int, default=1000, help="request/responses per connection")
    ap.add_argument("--size", type=parse_size, default=64, help="request (= response) size in bytes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds one send or receive may wait before the connection counts as failed")
    args = ap.parse_args()
    if args.conns < 1 or args.rpcs < 0 or args.size < 1:
        fail("--conns and --size must be >= 1, --rpcs >= 0")

    socks = []
    try:
        for _ in range(args.conns):
            socks.append(connect(args.connect, args.timeout))
    except OSError as e:
        for s in socks:
            s.close()
        fail(f"connect {args.connect[0]}:{args.connect[1]} failed after {len(socks)} connections: {e!r}")

    workers = [Worker(i, s, args) for i, s in enumerate(socks)]
    start_barrier = threading.Barrier(args.conns)
    end_barrier = threading.Barrier(args.conns)
    threads = [threading.Thread(target=w.run, args=(start_barrier, end_barrier), daemon=True) for w in workers]
    start = now()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = now() - start
    for s in socks:
        s.close()

    # Report the root causes, not the connections that only stopped because of them.
    errors = [w.error for w in workers if w.error and "failed first" not in w.error]
    errors = errors or [w.error for w in workers if w.error]
    done = sum(w.done for w in workers)
    lat = sorted(x for w in workers for x in w.latencies)
    us = lambda x: None if x is None else round(x * 1e6, 1)
    emit({
        "ok": not errors,
        "conns": args.conns,
        "rpcs_per_conn": args.rpcs,
        "size": args.size,
        "rpcs_done": done,
        "seconds": round(seconds, 3),
        "rpcs_per_s": round(done / seconds) if seconds > 0 else None,
        "latency_us": {"p50": us(percentile(lat, 0.5)), "p99": us(percentile(lat, 0.99)), "max": us(lat[-1] if lat else None)},
        "errors": errors[:20],
    })
    for e in errors[:20]:
        print(f"rpc_client: {e}", file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
