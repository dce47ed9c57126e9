#!/usr/bin/env bash
# Install tasd, tasctl and tas-echo as a system service (docs/operating.md, "Install").
#
#   sudo bash deploy/install.sh [--prefix /usr/local] [--bin-dir target/release]
#                               [--no-users] [--no-systemd]
#
# Installs:
#   PREFIX/bin/{tasd,tasctl,tas-echo}          from --bin-dir (build first:
#                                              cargo build --release --workspace)
#   /etc/tas/tasd.toml                         the default configuration, never overwritten:
#                                              if one exists and differs, tasd.toml.new
#   /etc/systemd/system/tasd.service           the hardened unit (ExecStart under PREFIX)
#   PREFIX/share/doc/tas/operating.md          the operating guide
# and creates the system user "tasd" (runs the service), the group "tas" (may attach
# applications) and the group "tas-admin" (may use tasctl), then reloads systemd. It does
# not start tasd: set `interface` and `ip` in /etc/tas/tasd.toml first.
#
# DESTDIR=/some/dir stages everything under that directory instead (for packaging and
# tests): no root needed, no users created, systemd left alone.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
PREFIX=/usr/local
BIN_DIR=$repo/target/release
USERS=1
SYSTEMD=1
DESTDIR=${DESTDIR:-}

die() { echo "install: $*" >&2; exit 1; }
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
        --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a directory"; BIN_DIR=$2; shift 2 ;;
        --no-users) USERS=0; shift ;;
        --no-systemd) SYSTEMD=0; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install: unknown argument $1" >&2; usage 2 ;;
    esac
done
case $PREFIX in /*) ;; *) die "--prefix must be an absolute path, not $PREFIX" ;; esac

if [ -n "$DESTDIR" ]; then
    USERS=0 SYSTEMD=0
elif [ "$(id -u)" -ne 0 ]; then
    die "must run as root to install system-wide (or set DESTDIR=DIR to stage): sudo bash $0 $*"
fi

for b in tasd tasctl tas-echo; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b not found: build it first (cargo build --release --workspace) or pass --bin-dir"
done

bin=$DESTDIR$PREFIX/bin
etc=$DESTDIR/etc/tas
unitdir=$DESTDIR/etc/systemd/system
doc=$DESTDIR$PREFIX/share/doc/tas

install -d -m 0755 "$bin" "$etc" "$unitdir" "$doc"
for b in tasd tasctl tas-echo; do
    install -m 0755 "$BIN_DIR/$b" "$bin/$b"
done
echo "install: binaries in $bin"

if [ -e "$etc/tasd.toml" ]; then
    if cmp -s "$here/tasd.toml" "$etc/tasd.toml"; then
        echo "install: $etc/tasd.toml is already the default"
    else
        install -m 0644 "$here/tasd.toml" "$etc/tasd.toml.new"
        echo "install: kept your $etc/tasd.toml; the new default is $etc/tasd.toml.new"
    fi
else
    install -m 0644 "$here/tasd.toml" "$etc/tasd.toml"
    echo "install: default configuration in $etc/tasd.toml"
fi

sed -e "s|/usr/local/bin/tasd|$PREFIX/bin/tasd|" \
    -e "s|file:/usr/local/share/doc/tas/|file:$PREFIX/share/doc/tas/|" \
    "$here/systemd/tasd.service" >"$unitdir/tasd.service.tmp"
chmod 0644 "$unitdir/tasd.service.tmp"
mv "$unitdir/tasd.service.tmp" "$unitdir/tasd.service"
install -m 0644 "$repo/docs/operating.md" "$doc/operating.md"
echo "install: unit in $unitdir/tasd.service"

if [ "$USERS" -eq 1 ]; then
    getent group tas >/dev/null || groupadd --system tas
    getent group tas-admin >/dev/null || groupadd --system tas-admin
    if ! getent passwd tasd >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "TAS TCP acceleration service" tasd
    fi
    echo "install: user tasd; groups tas (may attach applications), tas-admin (may use tasctl)"
fi

if [ "$SYSTEMD" -eq 1 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        echo "install: systemd reloaded"
    else
        echo "install: systemd is not running here: start tasd another way (docs/operating.md)"
    fi
fi

cat <<MSG

Next:
  1. set interface and ip in /etc/tas/tasd.toml (the address stays on the interface too)
  2. systemctl enable --now tasd && systemctl status tasd
  3. add users: usermod -aG tas APP_USER (attach), usermod -aG tas-admin ADMIN (tasctl)
  4. tasctl status
MSG
