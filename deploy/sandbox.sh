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
# Usage: deploy/sandbox.sh up|down|status|exec a|b CMD...
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
# Extension point: an impairment forwarder (loss, reordering, delay, rate, ECN marking) will
# sit in a third namespace between A and B, because this kernel has no netem/RED/fq_codel.
# That topology is A:IF_A <-> M:fwd-a  M:fwd-b <-> B:IF_B, with the same addresses and offload
# settings at the two ends, so tests written against this sandbox keep working. It is not
# built yet: setting TAS_NS_M makes `up` stop with a message instead of silently building the
# direct topology. Implement it in link_via_middle() below.
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

link_via_middle() {
    die "TAS_NS_M=$NS_M asks for the impairment-forwarder topology, which is not built yet (see the header of $0)"
}

up() {
    down
    if [ -n "$NS_M" ]; then
        link_via_middle
    else
        ip netns add "$NS_A"
        ip netns add "$NS_B"
        link_direct
    fi
    setup_end "$NS_A" "$IF_A" "$IP_A"
    setup_end "$NS_B" "$IF_B" "$IP_B"
    ip netns exec "$NS_B" ethtool -K "$IF_B" tx off tso off gso off >/dev/null
    # veth's carrier comes up when both ends are up; wait for it so callers can use it at once.
    local i
    for i in $(seq 50); do
        if ip -n "$NS_A" -o link show dev "$IF_A" | grep -q 'state UP' &&
           ip -n "$NS_B" -o link show dev "$IF_B" | grep -q 'state UP'; then
            log "up: $NS_A/$IF_A $IP_A/$PREFIX <-> $NS_B/$IF_B $IP_B/$PREFIX"
            return 0
        fi
        sleep 0.1
    done
    die "veth $IF_A/$IF_B did not come up"
}

status() {
    local ok=0 ns ifname
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
            *) die "usage: $0 exec a|b CMD..." ;;
        esac
        [ $# -gt 0 ] || die "usage: $0 exec a|b CMD..."
        exec ip netns exec "$ns" "$@"
        ;;
    *) echo "usage: $0 up|down|status|exec a|b CMD..." >&2; exit 2 ;;
esac
