#!/usr/bin/env python3
"""Open connections, move a known number of bytes through an echo server, then hold them
open until told to close, or until the server closes or resets them.

  hold_client.py --connect 10.77.0.1:7 --bytes 100000 --conns 2 --ready-file R --until-file U

Per connection: sends --bytes bytes of the seeded stream, reads exactly as many back and
checks them. Then writes one JSON line {"event": "ready", "local_ports": [...]} on stdout
(and creates --ready-file), so that a test can look at the open connections. Each
connection then stays open until --until-file appears (the client closes it: FIN, and
waits for the server's FIN), the server closes it ("eof"), or resets it ("reset"), or
--hold seconds pass. The closing JSON line {"ok": .., "ends": {"PORT": "client_closed" |
"eof" | "reset" | "timeout"}} reports how each ended; exit 0 if every byte was right.

With --no-echo the server is not expected to answer: once every connection is open, each
sends its --bytes in --writes writes (TCP_NODELAY, see peerlib.connect), --gap seconds apart (and --gap before
the first), so that every write reaches the server as its own segment at its own time.
"""

import argparse
import errno
import json
import os
import select
import socket
import sys
import time

from peerlib import Stream, connect, emit, now, parse_addr, parse_size


def recv_exactly(s, n):
    out = bytearray()
    while len(out) < n:
        b = s.recv(min(65536, n - len(out)))
        if not b:
            break
        out += b
    return bytes(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connect", required=True, type=parse_addr, metavar="IP:PORT")
    ap.add_argument("--bytes", type=parse_size, default=100_000)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ready-file")
    ap.add_argument("--until-file")
    ap.add_argument("--hold", type=float, default=120.0, help="seconds to hold at most")
    ap.add_argument("--no-echo", action="store_true", help="send only; expect nothing back")
    ap.add_argument("--writes", type=int, default=1, help="with --no-echo: writes per connection")
    ap.add_argument("--gap", type=float, default=0.1, help="with --no-echo: seconds between writes")
    args = ap.parse_args()

    socks = {}
    if args.no_echo:
        if args.writes < 1 or args.bytes < args.writes:
            emit({"ok": False, "error": "--writes must be at least 1 and at most --bytes"})
            return 1
        conns = [connect(args.connect, 10.0) for _ in range(args.conns)]
        data = [Stream(args.seed, i).next(args.bytes) for i in range(args.conns)]
        cuts = [args.bytes * w // args.writes for w in range(args.writes + 1)]
        for w in range(args.writes):
            time.sleep(args.gap)
            for s, d in zip(conns, data):
                s.sendall(d[cuts[w]:cuts[w + 1]])
        time.sleep(args.gap)
        socks = {s.getsockname()[1]: s for s in conns}
    for i in range(0 if args.no_echo else args.conns):
        s = connect(args.connect, 10.0)
        data = Stream(args.seed, i).next(args.bytes)
        s.sendall(data)
        back = recv_exactly(s, args.bytes)
        if back != data:
            emit({"ok": False, "error": f"connection {i}: echo differs ({len(back)} of {args.bytes} bytes back)"})
            return 1
        socks[s.getsockname()[1]] = s
    print(json.dumps({"event": "ready", "local_ports": sorted(socks)}), flush=True)
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")

    ends = {}
    deadline = now() + args.hold
    while len(ends) < len(socks):
        open_socks = [s for p, s in socks.items() if p not in ends]
        if args.until_file and os.path.exists(args.until_file):
            for p, s in socks.items():
                if p in ends:
                    continue
                try:
                    s.shutdown(socket.SHUT_WR)
                    s.settimeout(10.0)
                    rest = s.recv(1)
                    ends[p] = "client_closed" if not rest else "client_closed_data"
                except OSError as e:
                    ends[p] = "reset" if e.errno == errno.ECONNRESET else f"error: {e!r}"
            break
        if now() >= deadline:
            for p in socks:
                ends.setdefault(p, "timeout")
            break
        readable, _, _ = select.select(open_socks, [], [], 0.05)
        for s in readable:
            p = s.getsockname()[1]
            try:
                b = s.recv(65536)
                ends[p] = "eof" if not b else "unexpected_data"
            except OSError as e:
                ends[p] = "reset" if e.errno == errno.ECONNRESET else f"error: {e!r}"
    for s in socks.values():
        s.close()
    emit({"ok": True, "ends": {str(p): e for p, e in sorted(ends.items())}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
