#!/usr/bin/env bash
# Install the Debian 12 packages the build and the tests need; does nothing (and needs no
# network) when they are all present. Used by deploy/demo.sh and .ci/run.
#
#   libelf-dev         libbpf-sys builds its bundled libbpf against libelf (XDP loading)
#   zlib1g-dev         ... and zlib
#   pkg-config         ... which it finds with pkg-config
#   clang, llvm        only to check that the checked-in BPF object rebuilds byte for byte from
#                      its C source (a normal build does not compile BPF)
#   protobuf-compiler  protoc, for the tonic/prost code generation of proto/control.proto
#   ethtool            the sandbox turns off checksum/segmentation offloads on the peer's veth
#   iproute2           ip netns / ip link: the sandbox network
#   iputils-ping       the coexistence check (ICMP to the service IP is answered by the kernel)
#   python3            the kernel-side test peers in tools/peers (standard library only)
#   procps             ps/sysctl, for diagnostics when a test fails
#   tcpdump            the root tests read `tasctl capture` files with tcpdump -r
#   systemd            systemd-analyze verify checks deploy/systemd/tasd.service (tests/deploy.rs)
#   util-linux         setpriv: the root tests run tasd as an unprivileged user with exactly
#                      the unit's capabilities
#   redis-tools        redis-cli and redis-benchmark: the kvstore root tests drive tas-kv with them
#   redis-server       Debian's Redis, the reference tas-kv is compared with (model check, benchmark)
#   python3-pip        pip, to install redis-py from PyPI for the kvstore root tests (see below)
#   g++                libfuzzer-sys builds libFuzzer (C++) when deploy/test.sh checks fuzz/ compiles
#   fonts-dejavu-core  a TTF font for the labels of tas-bench's chart (read at run time with
#                      ab_glyph: no fontconfig or freetype is linked)
#   iperf3, nginx-light, memcached, sockperf, wrk, curl, libmemcached-tools
#                      unmodified programs the LD_PRELOAD shim's root tests run (tools/tests/preload.rs;
#                      libmemcached-tools: memccp/memccat/memcslap/memcstat, memcached's clients);
#                      sockperf, iperf3 and redis-server also run under the shim in `tas-bench compare`
#   linux-perf         perf record/report for the fast path's profile in docs/benchmarks.md (cpu-clock
#                      sampling: this VM has no hardware counters); not needed by the tests
#   gcc                compiles the shim's conformance program (tools/conformance/conform.c)
# gcc, make and git are on every Debian 12 build machine; Rust (>= 1.85) comes from rustup.
set -euo pipefail

PACKAGES=(libelf-dev zlib1g-dev pkg-config clang llvm protobuf-compiler ethtool iproute2
          iputils-ping python3 procps tcpdump systemd util-linux redis-tools redis-server python3-pip
          fonts-dejavu-core g++
          iperf3 nginx-light memcached sockperf wrk curl libmemcached-tools gcc linux-perf)

# Python packages from PyPI, installed with pip into kvstore/.pydeps (git-ignored; the
# kvstore root tests put it on PYTHONPATH), so neither the system Python nor a user's
# environment is touched:
#   redis==5.2.1          redis-py, the client library the kvstore tests run a randomized workload with
#   async-timeout         redis-py's dependency on Python < 3.11.3 (Debian 12 has 3.11.2)
PYDEPS_DIR="$(cd "$(dirname "$0")/.." && pwd)/kvstore/.pydeps"
PY_PACKAGES=("redis==5.2.1" "async-timeout>=4.0.3")

install_pydeps() {
    if PYTHONPATH="$PYDEPS_DIR" python3 -c 'import redis, sys; sys.exit(redis.__version__ != "5.2.1")' 2>/dev/null; then
        echo "install-deps: redis-py present in $PYDEPS_DIR"
        return 0
    fi
    echo "install-deps: installing ${PY_PACKAGES[*]} from PyPI into $PYDEPS_DIR"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
        --upgrade --target "$PYDEPS_DIR" "${PY_PACKAGES[@]}"
}

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages present"
    install_pydeps
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}" </dev/null
install_pydeps
