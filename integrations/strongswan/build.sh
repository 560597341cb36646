#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Builds and installs the kernel-dataplane charon plugin for the distribution's
# strongSwan (Debian 12: 5.9.8):
#
#   1. installs the Debian packages it needs when they are missing;
#   2. fetches the source of the installed strongSwan version with a private
#      deb-src apt list into target/strongswan/ (never into the source tree);
#   3. runs strongSwan's ./configure there, only for config.h;
#   4. builds libipsec (cargo build --release -p ipsec-ffi) and the plugin
#      libstrongswan-kernel-dataplane.so, with libipsec.a linked in statically
#      and every symbol but kernel_dataplane_plugin_create hidden;
#   5. installs the plugin into /usr/lib/ipsec/plugins/ and its config snippet
#      into /etc/strongswan.d/charon/kernel-dataplane.conf (load = no: the
#      distribution's charon keeps using kernel-netlink until told otherwise).
#
# Usage: integrations/strongswan/build.sh [--no-install]
# Idempotent: each step is skipped when its result is already there. Needs
# root for apt-get and the install step.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="$repo/target/strongswan"
build="$cache/build"
plugin_src="$here/kernel_dataplane"
plugin_so="$build/libstrongswan-kernel-dataplane.so"
plugin_dir=/usr/lib/ipsec/plugins
conf_dir=/etc/strongswan.d/charon
install=1
[ "${1:-}" = "--no-install" ] && install=0

say() { printf 'build.sh: %s\n' "$*"; }

# --- 1. packages -------------------------------------------------------------
packages=(strongswan-charon strongswan-swanctl libcharon-extra-plugins
          libstrongswan-standard-plugins libstrongswan-extra-plugins
          build-essential pkg-config libgmp-dev bzip2 xz-utils patch)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
    missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
else
  say "packages present"
fi
command -v cargo >/dev/null || { say "cargo not found (install Rust)"; exit 1; }

# --- 2. strongSwan source of the installed version ---------------------------
installed=$(dpkg-query -W -f='${Version}' strongswan-charon)   # 5.9.8-5+deb12u6
upstream=${installed%%-*}                                        # 5.9.8
src="$cache/src/strongswan-$upstream"
if [ ! -f "$src/.prepared" ]; then
  mkdir -p "$cache/apt/lists/partial" "$cache/src"
  # A private deb-src list with the system's own URIs, suites and key, so the
  # system's apt configuration stays untouched.
  list="$cache/apt/sources.list"
  : >"$list"
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush() {
        if (types ~ /deb/ && uris != "" && suites != "")
          for (i = 1; i <= n_s; i++) for (j = 1; j <= n_u; j++)
            printf "deb-src [signed-by=%s] %s %s %s\n", key, u[j], s[i], comps
        types = uris = suites = comps = key = ""; n_s = n_u = 0
      }
      /^[[:space:]]*$/ { flush(); next }
      /^Types:/      { types = $0 }
      /^URIs:/       { uris = $0; n_u = split(substr($0, 6), u, " ") }
      /^Suites:/     { suites = $0; n_s = split(substr($0, 8), s, " ") }
      /^Components:/ { comps = substr($0, 12) }
      /^Signed-By:/  { key = substr($0, 11); gsub(/ /, "", key) }
      END { flush() }' "$f" | grep -v 'nodesource\|google' >>"$list" || true
  done
  if [ -f /etc/apt/sources.list ]; then
    sed -n 's/^deb \(.*debian.*\)$/deb-src \1/p' /etc/apt/sources.list >>"$list"
  fi
  apt_private=(-o "Dir::Etc::sourcelist=$list" -o Dir::Etc::sourceparts=-
               -o "Dir::State::Lists=$cache/apt/lists")
  say "fetching the source of strongswan $installed into $cache/src"
  apt-get "${apt_private[@]}" update >/dev/null
  # The installed Debian revision first; an archive may already have dropped
  # it (a security mirror keeps the newest), so fall back to another revision
  # of the same upstream version: config.h depends on upstream and configure
  # options, not on Debian's patches (see step 3).
  fetched=""
  for v in "$installed" $(apt-cache "${apt_private[@]}" showsrc strongswan |
                          sed -n "s/^Version: \($upstream-.*\)$/\1/p" | sort -Vr); do
    if (cd "$cache/src" && apt-get "${apt_private[@]}" source --download-only \
          "strongswan=$v" >"$cache/apt-source.log" 2>&1); then
      fetched=$v
      break
    fi
  done
  [ -n "$fetched" ] || { say "no source of strongswan $upstream found"; exit 1; }
  [ "$fetched" = "$installed" ] ||
    say "strongswan $installed is not downloadable; using $fetched (same upstream $upstream)"
  echo "$fetched" >"$cache/src/fetched-version"
  rm -rf "$src"
  tar -C "$cache/src" -xjf "$cache/src/strongswan_$upstream.orig.tar.bz2"
  debian_tar="$cache/src/strongswan_$fetched.debian.tar.xz"
  tar -C "$src" -xJf "$debian_tar"
  # Debian's patches, as the package was built (quilt order)
  while read -r p; do
    case "$p" in ''|'#'*) continue ;; esac
    patch -s -d "$src" -p1 <"$src/debian/patches/$p"
  done <"$src/debian/patches/series"
  touch "$src/.prepared"
else
  say "strongSwan source present: $src"
fi

# --- 3. config.h -------------------------------------------------------------
# The plugin is compiled against strongSwan's headers, and some of charon's
# structs change shape with configure options: the plugin must see them as
# the distribution's charon was built (debian/rules, CONFIGUREARGS). What
# matters for the headers the plugin includes:
#   --enable-mediation  defines ME, which adds connect_manager and
#                       mediation_manager to daemon_t (the `charon` global:
#                       its layout must match) and methods to ike_sa_t. Debian
#                       enables it.
#   IKEv1 and IKEv2     (default on, USE_IKEV1/USE_IKEV2) as in Debian.
#   --prefix=/usr --sysconfdir=/etc --libdir=/usr/lib --libexecdir=/usr/lib
#                       paths compiled into config.h (IPSEC_PLUGINDIR, ...),
#                       as dh_auto_configure and CONFIGUREARGS set them.
#   DEBUG_LEVEL         left at the default (4), as Debian leaves it: it
#                       decides which DBGn calls exist.
#   CHARON_NATT_PORT    left at the default (4500), as Debian leaves it.
# The rest of Debian's options enable plugins (curl, ldap, pkcs11, tss2, nm,
# systemd, ...) that need libraries of their own and change nothing the
# plugin sees; they are not needed for config.h. The plugin is linked against
# the installed libstrongswan/libcharon with -z defs, so a symbol that the
# distribution's build does not have fails the link.
if [ ! -f "$src/config.h" ]; then
  say "running strongSwan's configure (config.h only)"
  (cd "$src" && ./configure --prefix=/usr --sysconfdir=/etc --libdir=/usr/lib \
      --libexecdir=/usr/lib --enable-mediation --enable-kernel-libipsec \
      >"$cache/configure.log" 2>&1) ||
    { say "configure failed, see $cache/configure.log"; exit 1; }
else
  say "config.h present"
fi

# --- 4. library and plugin ---------------------------------------------------
say "cargo build --release -p ipsec-ffi"
(cd "$repo" && cargo build --release -p ipsec-ffi)
libipsec_a="$repo/target/release/libipsec.a"

mkdir -p "$build"
cflags=(-std=gnu11 -O2 -g -fPIC -Wall -Wextra -Werror
        # charon's interfaces give every method all parameters; many are unused
        -Wno-unused-parameter
        -include "$src/config.h" -I"$repo/include"
        -I"$src/src/libstrongswan" -I"$src/src/libcharon")
objects=()
rebuild=0
for c in "$plugin_src"/*.c; do
  o="$build/$(basename "$c" .c).o"
  objects+=("$o")
  if [ ! -f "$o" ] || [ "$c" -nt "$o" ] || [ -n "$(find "$plugin_src" "$repo/include/ipsec.h" -name '*.h' -newer "$o")" ]; then
    say "cc $(basename "$c")"
    gcc "${cflags[@]}" -c "$c" -o "$o"
    rebuild=1
  fi
done
if [ $rebuild = 1 ] || [ ! -f "$plugin_so" ] || [ "$libipsec_a" -nt "$plugin_so" ] ||
   [ "$plugin_src/exports.map" -nt "$plugin_so" ]; then
  say "linking $plugin_so"
  # libipsec.a by path (not -lipsec: strongSwan has a libipsec.so of its own in
  # /usr/lib/ipsec). The version script keeps every symbol of it local;
  # --exclude-libs,ALL says the same for the archive's own visibility.
  gcc -shared -o "$plugin_so" "${objects[@]}" "$libipsec_a" \
    -Wl,--version-script="$plugin_src/exports.map" -Wl,--exclude-libs,ALL \
    -Wl,--gc-sections -Wl,--strip-debug -Wl,-z,defs -Wl,-z,relro -Wl,-z,now \
    -L/usr/lib/ipsec -lstrongswan -lcharon -Wl,-rpath,/usr/lib/ipsec \
    -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
else
  say "plugin up to date"
fi
exported=$(nm -D --defined-only "$plugin_so" | awk '{print $3}')
if [ "$exported" != "kernel_dataplane_plugin_create" ]; then
  say "unexpected exported symbols: $exported"
  exit 1
fi
say "exports only kernel_dataplane_plugin_create"

# --- 5. install --------------------------------------------------------------
if [ $install = 1 ]; then
  if ! cmp -s "$plugin_so" "$plugin_dir/libstrongswan-kernel-dataplane.so"; then
    install -m 0644 "$plugin_so" "$plugin_dir/libstrongswan-kernel-dataplane.so"
    say "installed $plugin_dir/libstrongswan-kernel-dataplane.so"
  else
    say "$plugin_dir/libstrongswan-kernel-dataplane.so up to date"
  fi
  if ! cmp -s "$here/kernel-dataplane.conf" "$conf_dir/kernel-dataplane.conf"; then
    install -m 0644 "$here/kernel-dataplane.conf" "$conf_dir/kernel-dataplane.conf"
    say "installed $conf_dir/kernel-dataplane.conf"
  else
    say "$conf_dir/kernel-dataplane.conf up to date"
  fi
else
  say "not installing (--no-install): $plugin_so"
fi
