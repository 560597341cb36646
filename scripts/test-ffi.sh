#!/usr/bin/env bash
# The C ABI stage: libipsec (ipsec-ffi) as a C program sees it. Run from anywhere:
#   ./scripts/test-ffi.sh
#
#   1. the release libraries (libipsec.a, libipsec.so)
#   2. include/ipsec.h compiles as C99 (-pedantic) and as C++11, warnings as errors
#   3. examples/c/gateway.c, ipsec-ffi/tests/c/error_paths.c, path_mtu.c, secrets.c, snapshot.c,
#      live_gateway.c (the control calls of a live gateway) and threads.c (shared SAs and
#      policy batches on POSIX threads, built with -pthread), each
#      built against the static and the shared library and run; then under valgrind (no
#      errors, no leaks) and with ASan/UBSan; error_paths.c once more with
#      -DIPSEC_TEST_HOOKS against a separate (debug) library built with the tests-only
#      `test-hooks` feature, whose deliberate panic tests handle poisoning (the release
#      libraries never have it)
#   4. install into a temporary prefix (scripts/install-c.sh) and build gateway.c with
#      `pkg-config --cflags --libs ipsec`
# (The header drift check and the version-macro check are Rust tests:
#  `cargo test -p ipsec-ffi --test header`, part of `cargo test --workspace`.)
#
# Needs cargo and gcc/g++; valgrind and pkg-config are used when present (their part is
# skipped with a message otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
start=$(date +%s)
stage() { printf '\n=== %s ===\n' "$*"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

CC=${CC:-cc}
CXX=${CXX:-g++}
CFLAGS=(-std=c99 -pedantic -Wall -Wextra -Werror -I"$root/include")
# What a Rust staticlib needs from the C runtime on Linux/glibc.
STATIC_LIBS=(-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)
lib="$root/target/release"
supp="$root/ipsec-ffi/tests/c/valgrind.supp"

stage "release libraries"
cargo build --release --locked -p ipsec-ffi
ls -l "$lib/libipsec.a" "$lib/libipsec.so"
if nm -g "$lib/libipsec.a" 2>/dev/null | grep -q ' T ipsec_test_panic_after$'; then
  echo "the release library has the test hooks"
  exit 1
fi

stage "test-hooks library (debug, tests only)"
cargo build --locked -p ipsec-ffi --features test-hooks
hooks_lib="$root/target/debug/libipsec.a"
ls -l "$hooks_lib"

stage "include/ipsec.h as C99 and C++11"
cat >"$work/header.c" <<'C'
#include <ipsec.h>
#include <stddef.h>
/* Every type and a few constants, so the compiler looks at all of it. */
ipsec_status st = IPSEC_ERR_POLICY_DISCARD;
ipsec_sa_config cfg;
ipsec_packet pkt;
ipsec_sa_stats stats;
ipsec_flow flow;
ipsec_decision decision;
ipsec_lint_finding finding;
ipsec_firewall_opening opening;
ipsec_gateway_result result;
ipsec_gateway_sa gsa;
ipsec_sa_event ev;
ipsec_overhead oh;
ipsec_reassembly_limits rl;
ipsec_restore_options ropts;
ipsec_reassembly ra = IPSEC_REASSEMBLY_COMPLETE;
int main(void) { return (int)sizeof(ipsec_sa_stats) == 256 && IPSEC_VERSION_MAJOR >= 0 ? 0 : 1; }
C
cp "$work/header.c" "$work/header.cpp"
"$CC" "${CFLAGS[@]}" "$work/header.c" -c -o "$work/header-c.o"
"$CXX" -std=c++11 -pedantic -Wall -Wextra -Werror -I"$root/include" "$work/header.cpp" -c -o "$work/header-cxx.o"
echo "ok: C99 and C++11, no warnings"

stage "C programs against the static and the shared library"
programs=("gateway:examples/c/gateway.c" "error_paths:ipsec-ffi/tests/c/error_paths.c" "path_mtu:ipsec-ffi/tests/c/path_mtu.c"
          "secrets:ipsec-ffi/tests/c/secrets.c" "snapshot:ipsec-ffi/tests/c/snapshot.c"
          "live_gateway:ipsec-ffi/tests/c/live_gateway.c" "threads:ipsec-ffi/tests/c/threads.c")
for entry in "${programs[@]}"; do
  name=${entry%%:*}
  src=${entry#*:}
  "$CC" "${CFLAGS[@]}" -pthread "$src" "$lib/libipsec.a" "${STATIC_LIBS[@]}" -o "$work/$name-static"
  "$CC" "${CFLAGS[@]}" -pthread "$src" -L"$lib" -lipsec -Wl,-rpath,"$lib" -o "$work/$name-shared"
  if ! readelf -d "$work/$name-shared" | grep -q 'NEEDED.*libipsec\.so'; then
    echo "$name-shared is not linked against libipsec.so"
    exit 1
  fi
  for kind in static shared; do
    log="$work/$name-$kind.log"
    if ! "$work/$name-$kind" >"$log" 2>&1; then
      cat "$log"
      echo "FAILED: $name ($kind)"
      exit 1
    fi
    echo "ok: $name ($kind): $(tail -n 1 "$log")"
  done
done

# The C burst benchmarks build warning-free and run (a few bursts of each kind; the
# gateway one first checks that its burst and single calls agree).
for bench in c_burst c_gateway_burst; do
  "$CC" -std=c11 -pedantic -Wall -Wextra -Werror -I"$root/include" "benches/ffi/$bench.c" \
    -L"$lib" -lipsec -Wl,-rpath,"$lib" -o "$work/$bench"
  for suite in gcm cbc; do
    echo "ok: benches/ffi/$bench.c: $("$work/$bench" "$suite" 300 20)"
  done
done

"$CC" "${CFLAGS[@]}" -DIPSEC_TEST_HOOKS ipsec-ffi/tests/c/error_paths.c "$hooks_lib" \
  "${STATIC_LIBS[@]}" -o "$work/error_paths-hooks"
if ! "$work/error_paths-hooks" >"$work/error_paths-hooks.log" 2>&1; then
  cat "$work/error_paths-hooks.log"
  echo "FAILED: error_paths (test hooks)"
  exit 1
fi
echo "ok: error_paths (test hooks): $(tail -n 1 "$work/error_paths-hooks.log")"

stage "valgrind (no errors, no leaks)"
if command -v valgrind >/dev/null 2>&1; then
  for entry in "${programs[@]}"; do
    name=${entry%%:*}
    for kind in static shared; do
      log="$work/$name-$kind-valgrind.log"
      if ! valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect,possible \
            --error-exitcode=1 --suppressions="$supp" \
            "$work/$name-$kind" >"$log" 2>&1; then
        cat "$log"
        echo "FAILED: $name ($kind) under valgrind"
        exit 1
      fi
      echo "ok: $name ($kind) under valgrind"
    done
  done
  if ! valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect,possible \
        --error-exitcode=1 --suppressions="$supp" \
        "$work/error_paths-hooks" >"$work/error_paths-hooks-valgrind.log" 2>&1; then
    cat "$work/error_paths-hooks-valgrind.log"
    echo "FAILED: error_paths (test hooks) under valgrind"
    exit 1
  fi
  echo "ok: error_paths (test hooks) under valgrind"
else
  echo "valgrind is not installed: skipped"
fi

stage "AddressSanitizer and UndefinedBehaviorSanitizer"
for entry in "${programs[@]}"; do
  name=${entry%%:*}
  src=${entry#*:}
  "$CC" "${CFLAGS[@]}" -pthread -g -fsanitize=address,undefined -fno-sanitize-recover=all \
    "$src" "$lib/libipsec.a" "${STATIC_LIBS[@]}" -o "$work/$name-asan"
  log="$work/$name-asan.log"
  if ! "$work/$name-asan" >"$log" 2>&1; then
    cat "$log"
    echo "FAILED: $name with ASan/UBSan"
    exit 1
  fi
  echo "ok: $name with ASan/UBSan"
done

stage "install and pkg-config"
if command -v pkg-config >/dev/null 2>&1; then
  prefix="$work/prefix"
  scripts/install-c.sh "$prefix"
  export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
  echo "pkg-config --cflags --libs ipsec: $(pkg-config --cflags --libs ipsec)"
  echo "pkg-config --static --libs ipsec: $(pkg-config --static --libs ipsec)"
  # shellcheck disable=SC2046 # word splitting of pkg-config's flags is intended
  "$CC" -std=c99 -pedantic -Wall -Wextra -Werror examples/c/gateway.c \
    $(pkg-config --cflags --libs ipsec) -o "$work/gateway-pkg-config"
  LD_LIBRARY_PATH="$prefix/lib" "$work/gateway-pkg-config" >"$work/gateway-pkg-config.log" 2>&1 || {
    cat "$work/gateway-pkg-config.log"
    echo "FAILED: gateway built with pkg-config"
    exit 1
  }
  echo "ok: gateway built with pkg-config (shared): $(tail -n 1 "$work/gateway-pkg-config.log")"
  # shellcheck disable=SC2046
  "$CC" -std=c99 -pedantic -Wall -Wextra -Werror examples/c/gateway.c \
    $(pkg-config --cflags ipsec) "$(pkg-config --variable=libdir ipsec)/libipsec.a" \
    $(pkg-config --static --libs-only-l ipsec | sed 's/-lipsec //') -o "$work/gateway-pkg-config-static"
  "$work/gateway-pkg-config-static" >/dev/null
  echo "ok: gateway built with pkg-config (static)"
else
  echo "pkg-config is not installed: skipped"
fi

echo
echo "C ABI stage passed in $(( $(date +%s) - start ))s"
