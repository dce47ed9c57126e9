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
# gcc, make and git are on every Debian 12 build machine; Rust (>= 1.85) comes from rustup.
set -euo pipefail

PACKAGES=(libelf-dev zlib1g-dev pkg-config clang llvm protobuf-compiler ethtool iproute2
          iputils-ping python3 procps tcpdump systemd util-linux)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages present"
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
