#!/usr/bin/env bash
# Installs the C library: builds the release libipsec.a / libipsec.so and copies them,
# include/ipsec.h and a pkg-config file into PREFIX:
#
#   PREFIX/lib/libipsec.a  PREFIX/lib/libipsec.so  PREFIX/include/ipsec.h
#   PREFIX/lib/pkgconfig/ipsec.pc
#
# Usage: scripts/install-c.sh PREFIX     (e.g. /usr/local, or $HOME/.local)
# Then:  PKG_CONFIG_PATH=PREFIX/lib/pkgconfig cc app.c $(pkg-config --cflags --libs ipsec)
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 PREFIX" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
mkdir -p "$1"
prefix=$(cd "$1" && pwd)

cargo build --release --locked -p ipsec-ffi

version=$(sed -n 's/^#define IPSEC_VERSION_STRING "\(.*\)"$/\1/p' include/ipsec.h)
if [ -z "$version" ]; then
  echo "include/ipsec.h has no IPSEC_VERSION_STRING" >&2
  exit 1
fi

install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0644 target/release/libipsec.a "$prefix/lib/libipsec.a"
install -m 0755 target/release/libipsec.so "$prefix/lib/libipsec.so"
install -m 0644 include/ipsec.h "$prefix/include/ipsec.h"

# Libs.private: what a Rust staticlib needs from the C runtime on Linux/glibc
# (`pkg-config --static --libs ipsec`).
cat >"$prefix/lib/pkgconfig/ipsec.pc" <<PC
prefix=$prefix
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include

Name: ipsec
Description: Embeddable IPsec data plane (ESP, SPD, anti-replay) - C API
URL: https://example.invalid/ipsec-dataplane
Version: $version
Libs: -L\${libdir} -lipsec
Libs.private: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
Cflags: -I\${includedir}
PC

echo "installed libipsec $version into $prefix"
