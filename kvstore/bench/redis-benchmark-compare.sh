#!/usr/bin/env bash
# One run of redis-benchmark against three servers in the sandbox network, same pinning:
#
#   tas-kv --backend tas      (on the stack: tasd's fast path on CPU $FP_CPU)   port 6379
#   tas-kv --backend kernel   (the kernel's TCP)                                  port 6380
#   redis-server              (Debian's Redis 7.0, the kernel's TCP)              port 6381
#
# Each server runs pinned to CPU $SERVER_CPU in namespace A; redis-benchmark runs in
# namespace B pinned to CPU $CLIENT_CPU; tasd runs (and busy-polls CPU $FP_CPU) during all
# three, so the machine is in the same state for each. Each test is its own redis-benchmark
# invocation with a pause after it (tasd reuses a just-closed connection's slot LIFO, which
# libtas can mistake for data after FIN when a client reconnects at once: see
# docs/benchmarks.md). Prints a Markdown table and the raw CSV lines.
#
#   sudo bash kvstore/bench/redis-benchmark-compare.sh            # after cargo build --release
#   N=200000 CLIENTS=50 PIPELINES="1 16" TESTS="set get" sudo -E bash kvstore/bench/...
#   SPIN_US=0 ...   libtas's busy-poll time before tas-kv sleeps ($TAS_SPIN_US; default 50):
#                   with the client on the server's CPU, spinning takes that CPU from it
#
# Needs root, the release binaries, redis-tools and redis-server (deploy/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-200000}
CLIENTS=${CLIENTS:-50}
PIPELINES=${PIPELINES:-"1 16"}
TESTS=${TESTS:-"set get"}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-0}
FP_CPU=${FP_CPU:-1}
SPIN_US=${SPIN_US:-50}
BIN=${TAS_BIN_DIR:-target/release}
ID="$$-0"
export TAS_NS_A="tasv-$ID-a" TAS_NS_B="tasv-$ID-b" TAS_IP_A=10.77.0.1 TAS_IP_B=10.77.0.2 TAS_IF_A=tas0
RUN=$(mktemp -d /tmp/tas-kv-compare.XXXXXX)
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    bash deploy/sandbox.sh down >/dev/null 2>&1 || true
    rm -rf "$RUN"
}
trap cleanup EXIT

bash deploy/sandbox.sh up >/dev/null
inA() { ip netns exec "$TAS_NS_A" "$@"; }
inB() { ip netns exec "$TAS_NS_B" "$@"; }

inA "$BIN/tasd" --interface tas0 --ip 10.77.0.1/24 --fp-cores 1 --fp-cpus "$FP_CPU" \
    --app-socket "$RUN/tasd.sock" --control-socket "$RUN/control.sock" --log-level warn >"$RUN/tasd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do [ -S "$RUN/tasd.sock" ] && break; sleep 0.1; done
[ -S "$RUN/tasd.sock" ] || { cat "$RUN/tasd.log"; echo "tasd did not start" >&2; exit 1; }

TAS_SPIN_US=$SPIN_US TAS_SOCKET="$RUN/tasd.sock" inA taskset -c "$SERVER_CPU" "$BIN/tas-kv" --backend tas --port 6379 --threads 1 >"$RUN/kv-tas.log" 2>&1 &
PIDS+=($!)
inA taskset -c "$SERVER_CPU" "$BIN/tas-kv" --backend kernel --port 6380 --threads 1 >"$RUN/kv-kernel.log" 2>&1 &
PIDS+=($!)
inA taskset -c "$SERVER_CPU" redis-server --port 6381 --save '' --appendonly no --protected-mode no \
    --dir "$RUN" --daemonize no >"$RUN/redis.log" 2>&1 &
PIDS+=($!)
for port in 6379 6380 6381; do
    for _ in $(seq 200); do inB redis-cli -h 10.77.0.1 -p $port ping >/dev/null 2>&1 && break; sleep 0.1; done
done
sleep 1

echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) CPUs; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# servers pinned to CPU $SERVER_CPU, redis-benchmark to CPU $CLIENT_CPU, tasd fast path to CPU $FP_CPU; TAS_SPIN_US=$SPIN_US"
echo "# redis-benchmark -n $N -c $CLIENTS -P <pipeline> -t <test> --csv"
echo
echo "| server | test | pipeline | requests/s | p50 ms | p99 ms |"
echo "| --- | --- | --- | ---: | ---: | ---: |"
RAW=()
for server in "tas-kv tas:6379" "tas-kv kernel:6380" "redis-server:6381"; do
    name=${server%:*}
    port=${server##*:}
    for p in $PIPELINES; do
        for t in $TESTS; do
            out=$(inB timeout 120 taskset -c "$CLIENT_CPU" redis-benchmark -h 10.77.0.1 -p "$port" -t "$t" -n "$N" -c "$CLIENTS" -P "$p" --csv 2>&1 | tail -n 1) ||
                out="redis-benchmark failed: $out"
            RAW+=("$name P=$p: $out")
            # "TEST","rps","avg","min","p50","p95","p99","max"
            IFS=, read -r test rps _avg _min p50 _p95 p99 _max <<<"$(echo "$out" | tr -d '"')"
            echo "| $name | $test | $p | $rps | $p50 | $p99 |"
            sleep 1
        done
    done
done
echo
for r in "${RAW[@]}"; do echo "raw: $r"; done
for f in kv-tas kv-kernel; do
    if grep -q -i "fail\|error" "$RUN/$f.log"; then echo "note: $f.log: $(cat "$RUN/$f.log")"; fi
done
if grep -q -i "error\|warn" "$RUN/tasd.log"; then echo "note: tasd.log: $(tail -5 "$RUN/tasd.log")"; fi
