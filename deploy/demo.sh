#!/usr/bin/env bash
# One command, as root, on a fresh Debian 12 machine with this repository: install what is
# missing, build, make the sandbox network, run tasd and tas-echo on it, talk to them from the
# Linux kernel's TCP (and back), run the kvstore (tas-kv) on it for redis-cli and
# redis-benchmark, say what happened, and clean everything up.
#
#   bash deploy/demo.sh
#
# Environment: TAS_BIN_DIR (default target/release; setting it skips the build), the sandbox's
# TAS_NS_A/TAS_NS_B/... (see deploy/sandbox.sh), DEMO_BYTES (default 10000000), DEMO_RPCS (1000).
# Exit status 0 only if every check passed. Every client gets at most 300 s.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

NS_A=${TAS_NS_A:-tas-a}
NS_B=${TAS_NS_B:-tas-b}
IF_A=${TAS_IF_A:-tas0}
IP_A=${TAS_IP_A:-10.77.0.1}
IP_B=${TAS_IP_B:-10.77.0.2}
export TAS_NS_A=$NS_A TAS_NS_B=$NS_B TAS_IF_A=$IF_A TAS_IP_A=$IP_A TAS_IP_B=$IP_B
BYTES=${DEMO_BYTES:-10000000}
RPCS=${DEMO_RPCS:-1000}
PORT=7
RUN=/run/tas-demo
PEERS=$REPO/tools/peers

step() { printf '\n== %s\n' "$*"; }
say() { printf '   %s\n' "$*"; }
failures=()
fail() { failures+=("$*"); printf '   FAILED: %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (namespaces, veth and XDP need it): sudo bash deploy/demo.sh"

# ---- cleanup: everything this script started, by PID; then the sandbox and the run directory
pids=()  # in start order; ended in reverse, so tasd goes last
cleanup() {
    local rc=$? i pid
    set +e
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ $rc -ne 0 ] || [ ${#failures[@]} -gt 0 ]; then
        for f in "$RUN"/*.log; do
            [ -e "$f" ] || continue
            printf '\n---- %s (last 40 lines) ----\n' "$f"
            [ -s "$f" ] && tail -n 40 "$f" || echo "(empty)"
        done
    fi
    bash "$REPO/deploy/sandbox.sh" down
    rm -rf "$RUN"
    echo "demo: cleaned up (processes, namespaces $NS_A/$NS_B, $RUN)"
}
trap cleanup EXIT

# ---- 1. dependencies and build
step "1. packages and build"
bash deploy/install-deps.sh
if [ -n "${TAS_BIN_DIR:-}" ]; then
    BIN=$TAS_BIN_DIR
    say "using the binaries in $BIN (TAS_BIN_DIR is set; not building)"
else
    command -v cargo >/dev/null ||
        die "cargo not found: install Rust >= 1.85 with rustup (Debian 12's rustc is too old), then run this again"
    say "cargo build --release --workspace (the first build takes 10-15 minutes on 2 cores)"
    cargo build --release --workspace
    BIN=$REPO/target/release
fi
for b in tasd tas-echo tas-kv; do [ -x "$BIN/$b" ] || die "$BIN/$b is missing after the build"; done

# ---- 2. sandbox
step "2. sandbox network: $NS_A ($IF_A $IP_A, tasd's side) <-> veth <-> $NS_B ($IP_B, the Linux kernel's TCP)"
bash deploy/sandbox.sh up
rm -rf "$RUN" && mkdir -p "$RUN"
in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }
json() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, d))' "$1" "$2"; }
tcp_opens_a() { in_a awk '/^Tcp:/ && ++n == 2 {print $6 + $7}' /proc/net/snmp; }  # ActiveOpens + PassiveOpens
icmp_replies_a() {
    in_a awk '/^Icmp:/ {if (!h) {for (i = 1; i <= NF; i++) if ($i == "OutEchoReps") c = i; h = 1} else print $c}' /proc/net/snmp
}

# ---- 3. tasd
step "3. tasd on $IF_A in $NS_A, serving $IP_A/24"
ip netns exec "$NS_A" env NO_COLOR=1 "$BIN/tasd" --interface "$IF_A" --ip "$IP_A/24" --fp-cores 1 \
    --app-socket "$RUN/tasd.sock" --control-socket "$RUN/control.sock" >"$RUN/tasd.log" 2>&1 &
TASD=$!
pids+=("$TASD")
for _ in $(seq 300); do
    [ -S "$RUN/tasd.sock" ] && break
    kill -0 "$TASD" 2>/dev/null || die "tasd exited before it was ready (see its log below)"
    sleep 0.1
done
[ -S "$RUN/tasd.sock" ] || die "tasd did not create $RUN/tasd.sock within 30 s"
say "tasd (pid $TASD) is ready: app socket $RUN/tasd.sock"
xdp=$(in_a ip -d link show dev "$IF_A" | grep -o 'prog/xdp[a-z]* id [0-9]*' || true)
[ -n "$xdp" ] && say "XDP program attached to $IF_A: $xdp" || fail "no XDP program is attached to $IF_A"

step "4. tas-echo server on port $PORT, through tasd"
ip netns exec "$NS_A" env TAS_SOCKET="$RUN/tasd.sock" "$BIN/tas-echo" server --port "$PORT" >"$RUN/tas-echo-server.log" 2>&1 &
pids+=($!)
in_b python3 "$PEERS/tcp_probe.py" --connect "$IP_A:$PORT" --expect open --wait 20 >/dev/null ||
    die "tas-echo server on $IP_A:$PORT did not accept a connection within 20 s"
say "tas-echo server (pid ${pids[-1]}) accepts connections on $IP_A:$PORT"

# ---- 5. the kernel keeps the interface
step "5. the kernel still answers ARP and ICMP for $IP_A"
before=$(icmp_replies_a)
if in_b ping -c 3 -i 0.2 -W 2 "$IP_A" >"$RUN/ping.log" 2>&1; then
    say "ping from $NS_B: $(grep -o '[0-9]* received' "$RUN/ping.log") of 3, $(grep -o 'rtt.*' "$RUN/ping.log")"
    say "echo replies sent by the kernel of $NS_A: $(($(icmp_replies_a) - before))"
else
    fail "ping $IP_A from $NS_B: $(tail -n 2 "$RUN/ping.log" | head -n 1)"
fi
mac=$(in_a cat "/sys/class/net/$IF_A/address")
in_b ip neigh show "$IP_A" | grep -q "$mac" &&
    say "ARP: $NS_B resolved $IP_A to $mac (the MAC of $IF_A)" || fail "$NS_B has no ARP entry for $IP_A"

# ---- 6. kernel client -> tasd
kernel_opens_before=$(tcp_opens_a)
step "6. a Linux-kernel client in $NS_B streams $BYTES bytes to tas-echo and checks the echo"
if out=$(in_b timeout 300 python3 "$PEERS/stream_client.py" --connect "$IP_A:$PORT" --bytes "$BYTES" --conns 1 --seed 1); then
    say "sent $(json "$out" bytes_sent) bytes, got $(json "$out" bytes_received) back in $(json "$out" seconds) s ($(json "$out" gbit_per_s) Gbit/s each way)"
    say "sha256 sent:     $(json "$out" 'sha256_sent[0]')"
    say "sha256 received: $(json "$out" 'sha256_received[0]')  (identical)"
else
    fail "stream through tas-echo: ${out:-no output}"
fi

step "7. the same client does $RPCS request/responses of 64 bytes"
if out=$(in_b timeout 300 python3 "$PEERS/rpc_client.py" --connect "$IP_A:$PORT" --conns 1 --rpcs "$RPCS" --size 64); then
    say "$(json "$out" rpcs_done) request/responses, all answered correctly: $(json "$out" rpcs_per_s) per second, latency p50 $(json "$out" 'latency_us["p50"]') us, p99 $(json "$out" 'latency_us["p99"]') us"
else
    fail "request/responses through tas-echo: ${out:-no output}"
fi

# ---- 8. tasd client -> kernel
step "8. tas-echo client (through tasd) streams $BYTES bytes to a kernel echo server in $NS_B"
# (ip netns exec directly, not in_b: a backgrounded shell function would be a subshell, and
# $! its PID rather than the server's)
ip netns exec "$NS_B" python3 "$PEERS/echo_server.py" --port "$PORT" --ready-file "$RUN/echo-b.ready" \
    >"$RUN/kernel-echo-server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -e "$RUN/echo-b.ready" ] && break; sleep 0.1; done
if out=$(ip netns exec "$NS_A" env TAS_SOCKET="$RUN/tasd.sock" timeout 300 "$BIN/tas-echo" client --connect "$IP_B:$PORT" --bytes "$BYTES" --conns 1 2>&1); then
    say "tas-echo client: $out"
else
    fail "tas-echo client: $out"
fi
sleep 0.5
srv=$(grep '"closed"' "$RUN/kernel-echo-server.log" | tail -n 1 || true)
if [ -n "$srv" ] && [ "$(json "$srv" bytes)" = "$BYTES" ]; then
    say "the kernel echo server in $NS_B echoed $(json "$srv" bytes) bytes to $(json "$srv" peer), sha256 $(json "$srv" sha256)"
else
    fail "the kernel echo server did not see $BYTES bytes on one connection: ${srv:-nothing}"
fi

# ---- 9. kvstore
KV_PORT=6379
step "9. tas-kv (Redis protocol, on tasd) on port $KV_PORT; redis-cli and redis-benchmark in $NS_B"
ip netns exec "$NS_A" env TAS_SOCKET="$RUN/tasd.sock" "$BIN/tas-kv" --backend tas --port "$KV_PORT" \
    >"$RUN/tas-kv.log" 2>&1 &
pids+=($!)
if in_b python3 "$PEERS/tcp_probe.py" --connect "$IP_A:$KV_PORT" --expect open --wait 20 >/dev/null; then
    cli() { in_b timeout 30 redis-cli -h "$IP_A" -p "$KV_PORT" "$@"; }
    value="demo-$(date +%s%N)"
    if [ "$(cli SET demo:key "$value")" = "OK" ] && [ "$(cli GET demo:key)" = "$value" ] &&
        [ "$(cli INCRBY demo:counter 41)" = "41" ] && [ "$(cli INCR demo:counter)" = "42" ]; then
        say "redis-cli: SET/GET read back \"$value\"; INCRBY/INCR counted to 42"
    else
        fail "redis-cli against tas-kv did not read back what it wrote"
    fi
    if out=$(in_b timeout 120 redis-benchmark -h "$IP_A" -p "$KV_PORT" -c 20 -n 20000 -t set,get -q 2>&1); then
        say "redis-benchmark -c 20 -n 20000: $(echo "$out" | tr '\r' '\n' | grep -E '^(SET|GET): [0-9.]+ requests per second' | sed 's/ requests per second.*/ req\/s/' | tr '\n' ' ')"
        [ "$(cli DBSIZE)" -ge 2 ] || fail "tas-kv lost keys during redis-benchmark"
    else
        fail "redis-benchmark against tas-kv: $out"
    fi
else
    fail "tas-kv on $IP_A:$KV_PORT did not accept a connection within 20 s (log: $RUN/tas-kv.log)"
fi

opens=$(($(tcp_opens_a) - kernel_opens_before))
if [ "$opens" -eq 0 ]; then
    say "the kernel of $NS_A opened 0 TCP connections during steps 6-9: tasd carried every one"
else
    fail "the kernel of $NS_A opened $opens TCP connections: that traffic did not go through tasd"
fi

# ---- verdict
step "result"
if [ ${#failures[@]} -eq 0 ]; then
    say "everything worked."
    exit 0
fi
say "${#failures[@]} check(s) failed:"
for f in "${failures[@]}"; do say "- $f"; done
exit 1
