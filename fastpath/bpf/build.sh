#!/bin/sh
# Rebuild the XDP program's object from its C source, reproducibly.
#
#   ./build.sh          rebuild redirect.bpf.o in place (check it in)
#   ./build.sh --check  rebuild into a temporary file and compare with the checked-in
#                       object byte for byte; exit 1 if they differ
#
# Needs Debian's clang 14 and linux-libc-dev. The object is the same wherever the
# repository lies: the compiler runs inside this directory on a relative source path, and
# -fdebug-compilation-dir=. keeps the working directory out of the debug info.
set -eu

cd "$(dirname "$0")"

CLANG="${CLANG:-clang}"
SRC=redirect.bpf.c
OBJ=redirect.bpf.o

compile() {
	"$CLANG" -O2 -g -target bpf \
		-I/usr/include/x86_64-linux-gnu \
		-fdebug-compilation-dir=. \
		-c "$SRC" -o "$1"
}

case "${1:-}" in
--check)
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' EXIT
	# Same file name inside a temp dir would change nothing in the object; the output
	# name is not recorded, but keep it identical anyway.
	compile "$tmp/$OBJ"
	if cmp "$tmp/$OBJ" "$OBJ"; then
		echo "bpf: $OBJ is up to date with $SRC ($("$CLANG" --version | head -n1))"
	else
		echo "bpf: $OBJ differs from a rebuild of $SRC: run fastpath/bpf/build.sh and commit the object" >&2
		exit 1
	fi
	;;
"")
	compile "$OBJ"
	echo "bpf: built $OBJ"
	;;
*)
	echo "usage: $0 [--check]" >&2
	exit 2
	;;
esac
