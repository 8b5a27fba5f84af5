#!/bin/sh
# Build the shieldwall image from a binary on this machine, pulling nothing (no registry
# needed): FROM scratch + the binary + the shared libraries `ldd` lists for it.
#
#   deploy/build-local-image.sh BINARY TAG
#   e.g. deploy/build-local-image.sh target/release/shieldwall shieldwall:local
#
# The binary must have been built on a glibc system (its libraries are copied from here).
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 BINARY TAG" >&2
    exit 2
fi
binary=$1
tag=$2
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$binary" ] || { echo "$0: $binary is not an executable file" >&2; exit 2; }

ctx=$(mktemp -d "${TMPDIR:-/tmp}/shieldwall-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT INT TERM
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$ctx/owned/cluster" "$ctx/owned/data"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/local/bin/shieldwall"
chmod 0755 "$root/usr/local/bin/shieldwall"

# Every library the dynamic loader resolves for the binary, and the loader itself, at the
# same paths as here (`libx.so => /path (0x...)` and `/lib64/ld-linux-x86-64.so.2 (0x...)`).
libs=$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
if [ -z "$libs" ]; then
    echo "$0: ldd lists no libraries for $binary (not a dynamic glibc binary?)" >&2
    exit 1
fi
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

printf 'root:x:0:0:root:/root:/sbin/nologin\nshieldwall:x:10001:10001::/nonexistent:/sbin/nologin\n' \
    > "$root/etc/passwd"
printf 'root:x:0:\nshieldwall:x:10001:\n' > "$root/etc/group"
chmod 0755 "$ctx/owned/cluster" "$ctx/owned/data"

cp "$here/Dockerfile.local" "$ctx/Dockerfile"
docker build --quiet --tag "$tag" "$ctx" >/dev/null
echo "built $tag from $binary (libraries: $(echo $libs | tr '\n' ' '))"
