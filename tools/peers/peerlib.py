"""Shared pieces of the kernel-side test peers (standard library only).

The peers run on the Linux kernel's own TCP, on the other end of a veth from tasd, and check
every byte that crosses. They are deliberately small and boring: when a transfer fails, the
bug must be in the stack under test, not here.
"""

import json
import random
import socket
import sys
import time

#: Bytes per send()/recv() call and per generated block: large enough that Python overhead
#: is small next to the copy, small enough that memory stays flat for any transfer size.
CHUNK = 256 * 1024


def parse_addr(text):
    """'IP:PORT' -> (ip, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected IP:PORT, got {text!r}")
    return host, int(port)


def parse_size(text):
    """'100000000', '100M', '10MiB', '64k' -> bytes (K/M/G are powers of 1000, KiB/MiB/GiB of 1024)."""
    t = text.strip().lower().removesuffix("b")
    units = {"ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "k": 10**3, "m": 10**6, "g": 10**9}
    for suffix, mult in units.items():
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


class Stream:
    """A deterministic pseudo-random byte stream, identified by (seed, index).

    Both ends of a check make the same Stream and compare what arrived with what it
    produces, so a mismatch is reported with its exact offset. Mersenne Twister's
    randbytes runs at several hundred MB/s, so 100 MB costs well under a second.
    """

    def __init__(self, seed, index):
        self._rng = random.Random(f"tas-peer:{seed}:{index}")

    def next(self, n):
        return self._rng.randbytes(n)


def first_difference(a, b):
    """Index of the first differing byte of two equal-length buffers."""
    lo, hi = 0, len(a)
    # Bisect on slices (memcmp speed) rather than a Python loop over bytes.
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return i
    return hi


def connect(addr, timeout):
    """Connect with a deadline; TCP_NODELAY so request/response tests measure the stack."""
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def emit(summary):
    """Print the one-line JSON summary that tests parse, and a plain line on stderr."""
    print(json.dumps(summary, sort_keys=True), flush=True)


def now():
    return time.monotonic()


def fail(msg):
    print(f"{sys.argv[0]}: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)
