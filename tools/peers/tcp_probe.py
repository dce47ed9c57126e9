#!/usr/bin/env python3
"""Connect once (or repeatedly, until --wait runs out) and check the outcome.

  tcp_probe.py --connect 10.77.0.1:7 --expect open --wait 20    # wait until something listens
  tcp_probe.py --connect 10.77.0.1:9 --expect refused           # the kernel answers with RST

--expect open     the three-way handshake completes (the connection is closed at once)
--expect refused  the connect fails with ECONNREFUSED (a RST came back), not a timeout
Prints one JSON line {"ok": .., "outcome": "open"|"refused"|"timeout"|"error: ..", "attempts": ..};
exit status 0 when the outcome is the expected one, 1 otherwise.
"""

import argparse
import errno
import socket
import sys
import time

from peerlib import emit, now, parse_addr


def attempt(addr, timeout):
    try:
        s = socket.create_connection(addr, timeout=timeout)
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "refused" if e.errno == errno.ECONNREFUSED else f"error: {e!r}"
    s.close()
    return "open"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connect", required=True, type=parse_addr, metavar="IP:PORT")
    ap.add_argument("--expect", required=True, choices=["open", "refused"])
    ap.add_argument("--wait", type=float, default=0.0, help="keep trying for this many seconds")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds one connect may take")
    args = ap.parse_args()

    deadline = now() + args.wait
    attempts = 0
    while True:
        attempts += 1
        outcome = attempt(args.connect, args.timeout)
        if outcome == args.expect or now() >= deadline:
            break
        time.sleep(0.1)
    ok = outcome == args.expect
    emit({"ok": ok, "outcome": outcome, "expected": args.expect, "attempts": attempts})
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
