#!/usr/bin/env bash
# The sandbox network: two network namespaces joined by one veth pair, so tasd and the Linux
# kernel's own TCP can talk to each other on any Linux machine without a spare NIC.
#
#   namespace $TAS_NS_A (service side)            namespace $TAS_NS_B (kernel peer)
#   +------------------------------+              +------------------------------+
#   | tasd (AF_XDP + XDP on IF_A)  |              | Linux TCP (python peers,     |
#   | apps via libtas              |              |  ping, curl, redis-cli, ...) |
#   | kernel: ARP, ICMP, other TCP |              |                              |
#   |   $TAS_IF_A  $TAS_IP_A/24    |<--- veth --->|   $TAS_IF_B  $TAS_IP_B/24    |
#   +------------------------------+              +------------------------------+
#
# Usage: deploy/sandbox.sh up|down|status|exec a|b|m CMD...|impair start [ARGS]|stop
#
#   up      (re)create the sandbox; an existing one with the same names is removed first
#   down    remove it; never fails when nothing exists. Processes still running inside the
#           sandbox's namespaces (started there by whoever used it) are ended by PID first,
#           because a namespace with live processes outlives `ip netns del`.
#   status  print what exists; exit 0 if the sandbox is complete, 1 if not
#   exec    run CMD inside namespace a or b (exec'd, so the PID you see is CMD's own)
#
# Names and addresses come from the environment, so several sandboxes can live side by side
# (the root tests make one per test). Interface names only need to be unique inside their
# namespace, so only the namespace names have to differ between sandboxes.
#   TAS_NS_A=tas-a  TAS_NS_B=tas-b  TAS_IF_A=tas0  TAS_IF_B=tas1
#   TAS_IP_A=10.77.0.1  TAS_IP_B=10.77.0.2  TAS_PREFIX=24  TAS_MTU=1500
#   TAS_QUEUES=1     rx/tx queues per veth end; tasd binds one AF_XDP socket per rx queue
#
# Offloads. AF_XDP hands tasd exactly the frames the kernel peer puts on the veth, so on the
# kernel peer's end ($TAS_IF_B) the sandbox turns off:
#   tx   transmit checksum offload: with it on, veth passes frames whose TCP checksum is only
#        partial (CHECKSUM_PARTIAL); the kernel on the other side accepts them, tasd must not.
#   tso, gso   segmentation offloads: with them on, the peer's TCP sends 64 KB super-frames
#        that veth forwards unsegmented. Native XDP on a veth disables GSO on its peer by
#        itself, but generic (skb) XDP does not, and would see one 64 KB "frame" that does
#        not fit a UMEM frame. With them off every frame is <= MTU + 14 bytes at the hook
#        (checked with a capture on $TAS_IF_A, see docs/testing.md).
# GRO stays as veth has it (off unless XDP is attached natively, and then it runs after XDP).
#
# Middle namespace (TAS_NS_M set): the impairment forwarder's topology. The kernels this runs on
# have no netem, RED or fq_codel, and AF_XDP copy-mode transmit bypasses the sending veth's
# qdisc anyway, so loss, reordering, duplication, delay, rate limits and ECN marking are done by
# tools/src/bin/tas-impair.rs in a third namespace that bridges the two ends at layer 2:
#
#   $TAS_NS_A                     $TAS_NS_M (no addresses)                 $TAS_NS_B
#   $TAS_IF_A $TAS_IP_A <-veth-> $TAS_IF_MA  [tas-impair]  $TAS_IF_MB <-veth-> $TAS_IF_B $TAS_IP_B
#
#   TAS_NS_M=      (empty: the direct topology above)   TAS_IF_MA=fwd-a  TAS_IF_MB=fwd-b
#
# A and B keep their addresses in one subnet, so tests written against the direct sandbox work
# unchanged: nothing routes, the forwarder passes every frame (ARP included) between fwd-a and
# fwd-b. Until a forwarder runs, A and B cannot reach each other. In this topology both ends
# get tx/tso/gso off (either may be a kernel TCP endpoint: a frame with a partial checksum would
# arrive broken once a raw socket has forwarded it), and so do fwd-a/fwd-b (plus gro off, so
# the forwarder sees wire-sized frames), which are also put in promiscuous mode.
#
# The forwarder is started by the caller (the root tests start it themselves to read its
# counters), or by this script:
#   impair start [TAS-IMPAIR ARGS...]   start tas-impair --a $TAS_IF_MA --b $TAS_IF_MB ARGS in M,
#                                       in the background; returns once it forwards. Its output
#                                       goes to /run/tas-sandbox/$TAS_NS_M.impair.{out,err}.
#                                       Binary: $TAS_IMPAIR_BIN, else target/release/tas-impair
#                                       of this repository, else tas-impair on PATH.
#   impair stop                         SIGTERM it, wait, print its final counters (one JSON line)
#   exec m CMD...                       run CMD in the middle namespace
# `down` ends a running forwarder like every other process in the namespaces.
set -euo pipefail

NS_A=${TAS_NS_A:-tas-a}
NS_B=${TAS_NS_B:-tas-b}
IF_A=${TAS_IF_A:-tas0}
IF_B=${TAS_IF_B:-tas1}
IP_A=${TAS_IP_A:-10.77.0.1}
IP_B=${TAS_IP_B:-10.77.0.2}
PREFIX=${TAS_PREFIX:-24}
MTU=${TAS_MTU:-1500}
QUEUES=${TAS_QUEUES:-1}
NS_M=${TAS_NS_M:-}
IF_MA=${TAS_IF_MA:-fwd-a}
IF_MB=${TAS_IF_MB:-fwd-b}
REPO=$(cd "$(dirname "$0")/.." && pwd)
IMPAIR_DIR=/run/tas-sandbox

die() { echo "sandbox: $*" >&2; exit 1; }
log() { echo "sandbox: $*" >&2; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces and veth need CAP_NET_ADMIN); try: sudo $0 $*"
    command -v ip >/dev/null || die "'ip' not found: apt-get install iproute2"
    command -v ethtool >/dev/null || die "'ethtool' not found: apt-get install ethtool"
}

ns_exists() { [ -e "/run/netns/$1" ]; }

# End every process still inside namespace $1, by PID: SIGTERM, up to 5 s, then SIGKILL.
end_processes_in() {
    local ns=$1 pids i
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$pids" ] || return 0
    log "ending processes still in $ns: $(echo $pids)"
    kill -TERM $pids 2>/dev/null || true
    for i in $(seq 50); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] || return 0
        sleep 0.1
    done
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
}

down() {
    local ns
    for ns in "$NS_A" "$NS_B" ${NS_M:+"$NS_M"}; do
        ns_exists "$ns" || continue
        end_processes_in "$ns"
        # Deleting one end of a veth deletes both; deleting the namespace deletes its links.
        ip netns del "$ns" 2>/dev/null || log "could not delete namespace $ns"
    done
    return 0
}

# Settings every end of the sandbox gets: up, MTU, no IPv6 chatter (router solicitations and
# MLD reports would only be noise in captures and in tasd's exception path).
setup_end() {
    local ns=$1 ifname=$2 addr=$3
    ip -n "$ns" link set dev lo up
    ip -n "$ns" link set dev "$ifname" mtu "$MTU"
    ip netns exec "$ns" sh -c "echo 1 > /proc/sys/net/ipv6/conf/$ifname/disable_ipv6"
    ip -n "$ns" addr add "$addr/$PREFIX" dev "$ifname"
    ip -n "$ns" link set dev "$ifname" up
}

link_direct() {
    # Created straight inside the namespaces, so the names never touch the root namespace.
    ip link add name "$IF_A" netns "$NS_A" numtxqueues "$QUEUES" numrxqueues "$QUEUES" type veth \
        peer name "$IF_B" netns "$NS_B" numtxqueues "$QUEUES" numrxqueues "$QUEUES"
}

# A <-> M <-> B: two veth pairs; M only bridges (tas-impair), so it has no addresses.
link_via_middle() {
    local ifname
    [ "$NS_M" != "$NS_A" ] && [ "$NS_M" != "$NS_B" ] || die "TAS_NS_M=$NS_M must differ from TAS_NS_A and TAS_NS_B"
    [ "$IF_MA" != "$IF_MB" ] || die "TAS_IF_MA and TAS_IF_MB are both $IF_MA: give the middle interfaces different names"
    # Queue counts on the middle ends too: native XDP on a veth refuses to attach (ENOSPC)
    # when its peer has more tx queues than it has rx queues, and veth's default is one per CPU.
    ip link add name "$IF_A" netns "$NS_A" numtxqueues "$QUEUES" numrxqueues "$QUEUES" type veth \
        peer name "$IF_MA" netns "$NS_M" numtxqueues "$QUEUES" numrxqueues "$QUEUES"
    ip link add name "$IF_MB" netns "$NS_M" numtxqueues "$QUEUES" numrxqueues "$QUEUES" type veth \
        peer name "$IF_B" netns "$NS_B" numtxqueues "$QUEUES" numrxqueues "$QUEUES"
    ip -n "$NS_M" link set dev lo up
    for ifname in "$IF_MA" "$IF_MB"; do
        ip -n "$NS_M" link set dev "$ifname" mtu "$MTU"
        ip netns exec "$NS_M" sh -c "echo 1 > /proc/sys/net/ipv6/conf/$ifname/disable_ipv6"
        ip netns exec "$NS_M" ethtool -K "$ifname" tx off tso off gso off gro off >/dev/null
        ip -n "$NS_M" link set dev "$ifname" promisc on
        ip -n "$NS_M" link set dev "$ifname" up
    done
}

up() {
    down
    ip netns add "$NS_A"
    ip netns add "$NS_B"
    if [ -n "$NS_M" ]; then
        ip netns add "$NS_M"
        link_via_middle
    else
        link_direct
    fi
    setup_end "$NS_A" "$IF_A" "$IP_A"
    setup_end "$NS_B" "$IF_B" "$IP_B"
    ip netns exec "$NS_B" ethtool -K "$IF_B" tx off tso off gso off >/dev/null
    [ -z "$NS_M" ] || ip netns exec "$NS_A" ethtool -K "$IF_A" tx off tso off gso off >/dev/null
    # veth's carrier comes up when both ends are up; wait for it so callers can use it at once.
    local i
    for i in $(seq 50); do
        if ip -n "$NS_A" -o link show dev "$IF_A" | grep -q 'state UP' &&
           ip -n "$NS_B" -o link show dev "$IF_B" | grep -q 'state UP'; then
            if [ -n "$NS_M" ]; then
                log "up: $NS_A/$IF_A $IP_A/$PREFIX <-> $NS_M/$IF_MA [forwarder] $NS_M/$IF_MB <-> $NS_B/$IF_B $IP_B/$PREFIX (start the forwarder: $0 impair start ...)"
            else
                log "up: $NS_A/$IF_A $IP_A/$PREFIX <-> $NS_B/$IF_B $IP_B/$PREFIX"
            fi
            return 0
        fi
        sleep 0.1
    done
    die "veth $IF_A/$IF_B did not come up"
}

impair_bin() {
    if [ -n "${TAS_IMPAIR_BIN:-}" ]; then
        [ -x "$TAS_IMPAIR_BIN" ] || die "TAS_IMPAIR_BIN=$TAS_IMPAIR_BIN is not an executable file"
        echo "$TAS_IMPAIR_BIN"
    elif [ -x "$REPO/target/release/tas-impair" ]; then
        echo "$REPO/target/release/tas-impair"
    elif command -v tas-impair >/dev/null; then
        command -v tas-impair
    else
        die "tas-impair not found: build it (cargo build --release -p tas-tools --bin tas-impair) or set TAS_IMPAIR_BIN"
    fi
}

impair_stop() {
    local pidfile=$IMPAIR_DIR/$NS_M.impair.pid pid i
    [ -f "$pidfile" ] || { log "no forwarder was started for $NS_M"; return 0; }
    pid=$(cat "$pidfile")
    rm -f "$pidfile"
    # Only our own forwarder: the PID must still be a tas-impair inside $NS_M.
    if ! ip netns pids "$NS_M" 2>/dev/null | grep -qx "$pid"; then
        log "forwarder $pid is no longer running"
    else
        kill -TERM "$pid"
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "forwarder $pid ignored SIGTERM for 5 s; killing it"; kill -KILL "$pid"; }
    fi
    grep '"event":"final"' "$IMPAIR_DIR/$NS_M.impair.out" 2>/dev/null | tail -n 1 || true
}

impair_start() {
    local bin pid i out err
    ns_exists "$NS_M" || die "namespace $NS_M does not exist: run TAS_NS_M=$NS_M $0 up first"
    bin=$(impair_bin)
    impair_stop >/dev/null
    mkdir -p "$IMPAIR_DIR"
    out=$IMPAIR_DIR/$NS_M.impair.out err=$IMPAIR_DIR/$NS_M.impair.err
    ip netns exec "$NS_M" "$bin" --a "$IF_MA" --b "$IF_MB" "$@" </dev/null >"$out" 2>"$err" &
    pid=$!
    echo "$pid" >"$IMPAIR_DIR/$NS_M.impair.pid"
    for i in $(seq 100); do
        grep -q '^tas-impair: forwarding' "$err" 2>/dev/null && { log "forwarder $pid running in $NS_M: $(head -n 1 "$err")"; return 0; }
        kill -0 "$pid" 2>/dev/null || { rm -f "$IMPAIR_DIR/$NS_M.impair.pid"; die "tas-impair exited at once: $(cat "$err")"; }
        sleep 0.05
    done
    die "tas-impair (pid $pid) did not start forwarding within 5 s; see $err"
}

status() {
    local ok=0 ns ifname
    if [ -n "$NS_M" ]; then
        if ns_exists "$NS_M"; then
            echo "namespace $NS_M (middle): present; processes: $(echo $(ip netns pids "$NS_M"))"
            for ifname in "$IF_MA" "$IF_MB"; do
                ip -n "$NS_M" -br link show dev "$ifname" 2>/dev/null | sed 's/^/  /' || { echo "  $ifname: missing"; ok=1; }
            done
        else
            echo "namespace $NS_M (middle): missing"; ok=1
        fi
    fi
    for ns in "$NS_A" "$NS_B"; do
        if ! ns_exists "$ns"; then echo "namespace $ns: missing"; ok=1; continue; fi
        [ "$ns" = "$NS_A" ] && ifname=$IF_A || ifname=$IF_B
        echo "namespace $ns: present; processes: $(echo $(ip netns pids "$ns"))"
        if ip -n "$ns" link show dev "$ifname" >/dev/null 2>&1; then
            ip -n "$ns" -br addr show dev "$ifname" | sed 's/^/  /'
            ip -n "$ns" -d link show dev "$ifname" | grep -o 'prog/xdp[a-z]* id [0-9]*' | sed 's/^/  xdp: /' || true
            ip netns exec "$ns" ethtool -k "$ifname" 2>/dev/null |
                grep -E '^(tx-checksumming|tcp-segmentation-offload|generic-segmentation-offload|generic-receive-offload):' |
                sed 's/^/  /'
        else
            echo "  $ifname: missing"; ok=1
        fi
    done
    return $ok
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    up)
        need_root "$cmd"
        # set -e ends the script at the first failing step; remove whatever was made by then.
        trap 'log "up failed; removing what it made"; down' EXIT
        up
        trap - EXIT
        ;;
    down) need_root "$cmd"; down ;;
    status) need_root "$cmd"; status ;;
    exec)
        need_root "$cmd"
        side=${1:-}; shift || true
        case "$side" in
            a) ns=$NS_A ;; b) ns=$NS_B ;;
            m) [ -n "$NS_M" ] || die "exec m needs TAS_NS_M (the middle namespace)"; ns=$NS_M ;;
            *) die "usage: $0 exec a|b|m CMD..." ;;
        esac
        [ $# -gt 0 ] || die "usage: $0 exec a|b|m CMD..."
        exec ip netns exec "$ns" "$@"
        ;;
    impair)
        need_root "$cmd"
        [ -n "$NS_M" ] || die "impair needs TAS_NS_M (the middle namespace), e.g. TAS_NS_M=tas-m $0 up"
        verb=${1:-}; shift || true
        case "$verb" in
            start) impair_start "$@" ;;
            stop) impair_stop ;;
            *) die "usage: $0 impair start [TAS-IMPAIR ARGS...] | impair stop" ;;
        esac
        ;;
    *) echo "usage: $0 up|down|status|exec a|b|m CMD...|impair start [ARGS...]|impair stop" >&2; exit 2 ;;
esac
