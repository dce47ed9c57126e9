#!/usr/bin/env python3
"""A randomized workload through redis-py (from PyPI) against a Redis-protocol server,
every reply checked against an in-process model of the string commands.

    python3 redis_py_workload.py --host 10.77.0.1 --port 6379 --ops 20000 --seed 1

Two clients take turns, one speaking RESP2 and one RESP3 (HELLO 3), each sending single
commands and non-transactional pipelines. Keys collide on purpose (a small key space);
values are binary, mostly short, some 10 KB to 300 KB (so requests straddle the receive
ring's end). Then: short expiry, a large value (--big-mb), a protocol error on a raw socket
(that client is closed, the others go on), and a final SCAN + MGET of the whole key space
compared with the model. Prints one JSON line; exits non-zero on any mismatch.
"""
import argparse
import hashlib
import json
import random
import socket
import sys
import time

import redis


class Mismatch(Exception):
    pass


class Model:
    """What a Redis server holds: key -> [value, expire_at or None] (seconds, float)."""

    def __init__(self):
        self.d = {}

    def live(self, k):
        e = self.d.get(k)
        if e is None:
            return None
        if e[1] is not None and e[1] <= time.time():
            del self.d[k]
            return None
        return e

    def get(self, k):
        e = self.live(k)
        return None if e is None else e[0]

    def set(self, k, v, ttl=None):
        self.d[k] = [v, None if ttl is None else time.time() + ttl]


def as_int(v):
    """Redis's integer parsing of a stored value (strict), or None."""
    try:
        s = v.decode()
    except UnicodeDecodeError:
        return None
    if not s or s != s.strip() or s.startswith("+") or len(s) > 20:
        return None
    digits = s[1:] if s.startswith("-") else s
    if not digits.isdigit() or (digits[0] == "0" and (len(digits) > 1 or s.startswith("-"))):
        return None
    n = int(s)
    return n if -(2**63) <= n < 2**63 else None


def fmt_float(f):
    s = repr(f)
    if s.endswith(".0"):
        s = s[:-2]
    return s


class Workload:
    def __init__(self, args):
        self.rng = random.Random(args.seed)
        self.m = Model()
        self.keys = [b"k%d" % i for i in range(args.keys)]
        self.ops = 0
        self.big_values = 0

    def value(self):
        r = self.rng.random()
        if r < 0.02:
            n = self.rng.randrange(10_000, 300_000)
        elif r < 0.3:
            return str(self.rng.randrange(-1000, 1000)).encode()
        else:
            n = self.rng.randrange(0, 100)
        if n >= 10_000:
            self.big_values += 1
        return self.rng.randbytes(n)

    def step(self):
        """One operation: (name, args, call(client), expected) — expected computed now, on
        the model, as the server must execute it (commands of one client run in order)."""
        rng, m = self.rng, self.m
        k = rng.choice(self.keys)
        op = rng.choice(
            ["set", "set", "get", "get", "get", "setnx", "setxx", "setget", "setex", "getset", "getdel",
             "incr", "incrby", "decrby", "append", "strlen", "getrange", "setrange", "del", "exists",
             "mset", "mget", "msetnx", "expire", "persist", "ttl", "type", "incrbyfloat"]
        )
        if op == "set":
            v = self.value()
            m.set(k, v)
            return op, lambda c: c.set(k, v), True
        if op == "setnx":
            v = self.value()
            ok = m.get(k) is None
            if ok:
                m.set(k, v)
            return op, lambda c: c.set(k, v, nx=True), (True if ok else None)
        if op == "setxx":
            v = self.value()
            ok = m.get(k) is not None
            if ok:
                m.set(k, v)
            return op, lambda c: c.set(k, v, xx=True), (True if ok else None)
        if op == "setget":
            v = self.value()
            old = m.get(k)
            m.set(k, v)
            return op, lambda c: c.set(k, v, get=True), old
        if op == "setex":
            v = self.value()
            m.set(k, v, ttl=1000)
            return op, lambda c: c.set(k, v, ex=1000), True
        if op == "get":
            return op, lambda c: c.get(k), m.get(k)
        if op == "getset":
            v = self.value()
            old = m.get(k)
            m.set(k, v)
            return op, lambda c: c.getset(k, v), old
        if op == "getdel":
            old = m.get(k)
            m.d.pop(k, None)
            return op, lambda c: c.getdel(k), old
        if op in ("incr", "incrby", "decrby"):
            d = {"incr": 1, "incrby": rng.randrange(-100, 100), "decrby": rng.randrange(-100, 100)}[op]
            delta = -d if op == "decrby" else d
            cur = m.get(k)
            n = 0 if cur is None else as_int(cur)
            if n is None:
                exp = redis.ResponseError
            elif not -(2**63) <= n + delta < 2**63:
                exp = redis.ResponseError
            else:
                e = m.live(k)
                ttl_at = e[1] if e else None
                m.d[k] = [str(n + delta).encode(), ttl_at]
                exp = n + delta
            call = {"incr": lambda c: c.incr(k), "incrby": lambda c: c.incrby(k, d), "decrby": lambda c: c.decrby(k, d)}[op]
            return op, call, exp
        if op == "incrbyfloat":
            d = rng.choice([0.5, 1.25, -2.75, 3.0])
            cur = m.get(k)
            try:
                f = 0.0 if cur is None else float(cur.decode())
                if cur is not None and (cur != cur.strip() or not cur or b"n" in cur.lower() or b"i" in cur.lower()):
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                return op, lambda c: c.incrbyfloat(k, d), redis.ResponseError
            if abs(f) > 2**40 or (f * 4) != int(f * 4):
                # Stay where binary fractions are exact, so formatting cannot differ.
                return op, lambda c: c.get(k), cur
            e = m.live(k)
            m.d[k] = [fmt_float(f + d).encode(), e[1] if e else None]
            return op, lambda c: c.incrbyfloat(k, d), f + d
        if op == "append":
            v = self.value()[:50]
            e = m.live(k)
            nv = (e[0] if e else b"") + v
            m.d[k] = [nv, e[1] if e else None]
            return op, lambda c: c.append(k, v), len(nv)
        if op == "strlen":
            return op, lambda c: c.strlen(k), len(m.get(k) or b"")
        if op == "getrange":
            a, b = rng.randrange(-20, 20), rng.randrange(-20, 20)
            v = m.get(k) or b""
            n = len(v)
            if (a < 0 and b < 0 and a > b) or n == 0:
                exp = b""
            else:
                s = max(a + n if a < 0 else a, 0)
                t = min(max(b + n if b < 0 else b, 0), n - 1)
                exp = b"" if s > t else v[s : t + 1]
            return op, lambda c: c.getrange(k, a, b), exp
        if op == "setrange":
            off = rng.randrange(0, 40)
            v = self.value()[:20]
            e = m.live(k)
            old = e[0] if e else b""
            if not v:
                return op, lambda c: c.setrange(k, off, v), len(old)
            nv = bytearray(old.ljust(off + len(v), b"\0") if len(old) < off + len(v) else old)
            nv[off : off + len(v)] = v
            m.d[k] = [bytes(nv), e[1] if e else None]
            return op, lambda c: c.setrange(k, off, v), len(nv)
        if op == "del":
            ks = rng.sample(self.keys, rng.randrange(1, 4))
            n = sum(1 for x in ks if m.get(x) is not None)
            for x in ks:
                m.d.pop(x, None)
            return op, lambda c: c.delete(*ks), n
        if op == "exists":
            ks = [rng.choice(self.keys) for _ in range(rng.randrange(1, 4))]
            return op, lambda c: c.exists(*ks), sum(1 for x in ks if m.get(x) is not None)
        if op == "mset":
            kv = {rng.choice(self.keys): self.value() for _ in range(rng.randrange(1, 5))}
            for x, v in kv.items():
                m.set(x, v)
            return op, lambda c: c.mset(kv), True
        if op == "msetnx":
            kv = {rng.choice(self.keys): self.value() for _ in range(rng.randrange(1, 3))}
            ok = all(m.get(x) is None for x in kv)
            if ok:
                for x, v in kv.items():
                    m.set(x, v)
            return op, lambda c: c.msetnx(kv), ok
        if op == "mget":
            ks = [rng.choice(self.keys) for _ in range(rng.randrange(1, 6))]
            return op, lambda c: c.mget(ks), [m.get(x) for x in ks]
        if op == "expire":
            e = m.live(k)
            if e:
                e[1] = time.time() + 500
            return op, lambda c: c.expire(k, 500), e is not None
        if op == "persist":
            e = m.live(k)
            had = bool(e and e[1] is not None)
            if had:
                e[1] = None
            return op, lambda c: c.persist(k), had
        if op == "ttl":
            e = m.live(k)
            exp = -2 if e is None else (-1 if e[1] is None else ("ttl", e[1] - time.time()))
            return op, lambda c: c.ttl(k), exp
        if op == "type":
            return op, lambda c: c.type(k), (b"none" if m.get(k) is None else b"string")
        raise AssertionError(op)


def check(name, got, exp, where):
    if exp is redis.ResponseError:
        if not isinstance(got, redis.ResponseError):
            raise Mismatch(f"{where}: {name}: expected an error reply, got {got!r}")
        return
    if isinstance(got, Exception):
        raise Mismatch(f"{where}: {name}: unexpected error {got!r}, expected {exp!r}")
    if isinstance(exp, tuple) and exp[0] == "ttl":
        if not (isinstance(got, int) and abs(got - exp[1]) <= 2):
            raise Mismatch(f"{where}: {name}: ttl {got!r}, expected about {exp[1]:.1f}")
        return
    if isinstance(exp, float):
        if not (isinstance(got, float) and got == exp):
            raise Mismatch(f"{where}: {name}: {got!r} != {exp!r}")
        return
    if isinstance(got, str):
        got = got.encode()
    if got != exp:
        g = got if not isinstance(got, bytes) or len(got) < 80 else got[:80] + b"..."
        e = exp if not isinstance(exp, bytes) or len(exp) < 80 else exp[:80] + b"..."
        raise Mismatch(f"{where}: {name}: got {g!r}, expected {e!r}")


def run(args):
    w = Workload(args)
    c2 = redis.Redis(host=args.host, port=args.port, protocol=2, socket_timeout=30)
    c3 = redis.Redis(host=args.host, port=args.port, protocol=3, socket_timeout=30)
    c2.flushall()
    pipelines = 0
    done = 0
    while done < args.ops:
        client = w.rng.choice([c2, c3])
        where = f"op {done} (resp{2 if client is c2 else 3})"
        if w.rng.random() < 0.3:
            n = w.rng.randrange(2, 40)
            steps = [w.step() for _ in range(n)]
            p = client.pipeline(transaction=False)
            for _, call, _ in steps:
                call(p)
            results = p.execute(raise_on_error=False)
            for i, ((name, _, exp), got) in enumerate(zip(steps, results)):
                check(name, got, exp, f"{where} pipeline[{i}]")
            pipelines += 1
            done += n
        else:
            name, call, exp = w.step()
            try:
                got = call(client)
            except redis.ResponseError as e:
                got = e
            check(name, got, exp, where)
            done += 1

    # Short expiry: gone after its time, lazily and from the key count.
    c3.set(b"short", b"x", px=50)
    check("get short", c3.get(b"short"), b"x", "expiry")
    time.sleep(0.2)
    check("get expired", c3.get(b"short"), None, "expiry")
    check("pttl expired", c2.pttl(b"short"), -2, "expiry")

    # A large value, read back whole.
    big = b""
    if args.big_mb > 0:
        big = random.Random(args.seed).randbytes(args.big_mb << 20)
        c2.set(b"big", big)
        back = c3.get(b"big")
        if back is None or hashlib.sha256(back).digest() != hashlib.sha256(big).digest():
            raise Mismatch(f"big value: {args.big_mb} MB came back as {len(back or b'')} bytes with another hash")
        check("strlen big", c2.strlen(b"big"), len(big), "big")
        c2.delete(b"big")

    # A protocol error closes that client only.
    s = socket.create_connection((args.host, args.port), timeout=5)
    s.sendall(b"*1\r\n+oops\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    if not reply.startswith(b"-ERR Protocol error"):
        raise Mismatch(f"protocol error: reply {reply!r}")
    if s.recv(4096) != b"":
        raise Mismatch("protocol error: the connection stayed open")
    s.close()
    check("ping after protocol error", c2.ping(), True, "protocol error")

    # The whole key space, by SCAN and MGET.
    keys = sorted(set(c3.scan_iter(count=7)))  # SCAN may repeat a key, never miss one
    want = sorted(k for k in list(w.m.d) if w.m.get(k) is not None)
    if keys != want:
        raise Mismatch(f"scan: {len(keys)} keys {keys[:10]}..., model has {len(want)} {want[:10]}...")
    if want:
        check("mget all", c2.mget(want), [w.m.get(k) for k in want], "final")
    check("dbsize", c2.dbsize(), len(want), "final")
    info = c2.info()
    return {
        "ok": True,
        "ops": done,
        "pipelines": pipelines,
        "large_values": w.big_values,
        "big_mb": args.big_mb,
        "keys": len(want),
        "server": info.get("redis_version"),
        "backend": info.get("backend", "redis-server"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6379)
    ap.add_argument("--ops", type=int, default=20000)
    ap.add_argument("--keys", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--big-mb", type=int, default=16)
    args = ap.parse_args()
    try:
        summary = run(args)
    except Mismatch as e:
        print(json.dumps({"ok": False, "mismatch": str(e), "redis_py": redis.__version__}))
        return 1
    summary["redis_py"] = redis.__version__
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
