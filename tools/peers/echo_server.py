#!/usr/bin/env python3
"""Echo server on the kernel's TCP: one thread per connection, echoes every byte, and closes
its side when the client closes its own (so a client can wait for the FIN after the echo).

When a connection ends it prints one JSON line to stdout, so a test can check from the
server's side how many bytes crossed and their sha256:
  {"event": "closed", "peer": "10.77.0.1:40000", "bytes": N, "sha256": "..", "error": null,
   "seconds": T}
(T: from the acceptance of the connection to the last data received.) Runs until killed (SIGTERM/SIGINT).
With --discard it echoes nothing (a sink: the report is the same), so a one-way transfer
costs the machine one direction only.

  echo_server.py --port 7 [--bind 0.0.0.0] [--ready-file PATH] [--discard]
"""

import argparse
import hashlib
import os
import signal
import socket
import socketserver
import sys
import threading
import time

from peerlib import CHUNK, emit

_print_lock = threading.Lock()


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        started = time.monotonic()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sha = hashlib.sha256()
        total = 0
        error = None
        ended = started
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while True:
                n = s.recv_into(buf)
                if n == 0:
                    break
                ended = time.monotonic()
                sha.update(view[:n])
                if not self.server.discard:
                    s.sendall(view[:n])
                total += n
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            error = repr(e)
        peer = "%s:%d" % self.client_address[:2]
        with _print_lock:
            emit({"event": "closed", "peer": peer, "bytes": total, "sha256": sha.hexdigest(), "error": error,
                  "seconds": ended - started})


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: tests open hundreds of connections at once


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--ready-file", help="created once the server listens")
    ap.add_argument("--discard", action="store_true", help="receive and hash only; echo nothing")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = Server((args.bind, args.port), Handler)
    server.discard = args.discard
    print(f"echo_server: listening on {args.bind}:{args.port}", file=sys.stderr, flush=True)
    if args.ready_file:
        with open(args.ready_file + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(args.ready_file + ".tmp", args.ready_file)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
