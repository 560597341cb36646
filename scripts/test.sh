#!/usr/bin/env bash
# The test command: installs what the tests need (a Python venv with maturin, pytest,
# mypy and scapy; cargo-fuzz) and runs every test. Usage: ./scripts/test.sh
#
# Stages, in order (the first failure stops the run with a non-zero exit):
#   1. cargo fmt --check, cargo clippy -D warnings (all targets; the fuzz crate's in
#      stage 7)
#   2. Rust unit, integration and doc tests of the workspace (and the header-drift check);
#      the optional intel-ipsec-mb backend (libipsec-mb-dev installed with apt-get where
#      it can be) linted and tested; then Miri on the unsafe code (scripts/miri.sh) is
#      started in the background, at the lowest priority, and waited for before stage 7
#   3. the release CLI, then the live scapy interop tests (pytest) against it
#   4. the C ABI: header, examples/c/gateway.c and the C error-path tests, static and
#      shared, under valgrind and ASan/UBSan, pkg-config install (scripts/test-ffi.sh)
#   5. the Python package: a fresh wheel, stubtest, mypy --strict, pytest (scripts/test-py.sh)
#   6. strongSwan: the kernel-dataplane charon plugin built and installed
#      (integrations/strongswan/build.sh), then the live tests in network namespaces
#      (pytest integrations/strongswan/tests: libipsec baseline, the plugin against
#      libipsec). Needs root and apt (it installs strongSwan); where strongSwan cannot
#      be installed it says "strongSwan stage NOT run: <reason>" and the script goes on;
#      where it can, any failure fails the run
#   7. a smoke run of every cargo-fuzz target (nightly; aead_ipsec_mb only with
#      intel-ipsec-mb), or their corpora as plain tests where no nightly toolchain exists
#   8. criterion benches compiled and run once in test mode (no timing is asserted); the
#      C baselines of scripts/bench-report.py and scripts/spd-report.py: OpenSSL EVP
#      (where its headers exist), intel-ipsec-mb (libipsec-mb-dev) and DPDK rte_acl
#      (dpdk-dev), installed with apt-get where it can; otherwise "intel-ipsec-mb not
#      installed: <reason>" / "DPDK not installed: <reason>" and the script goes on.
#      Built with -Werror and self-checked (rte_acl: classifies every flow as our SPD)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
FUZZ_SECONDS=${FUZZ_SECONDS:-10}
# Build settings of this command only. Cargo.toml's release profile (fat LTO, one codegen
# unit) is what users, the benchmarks and bench-report.py get; these tests check what the
# code does, not how fast, so here the release artifacts (the CLI, libipsec, the wheel,
# the charon plugin's libipsec.a) are built without LTO in 16 codegen units, on both
# cores and sharing their dependencies' code, and debug builds carry line tables only.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
export CARGO_PROFILE_DEV_DEBUG=line-tables-only

# Each stage's wall time is kept and printed at the end (and the time since the start
# at each stage's head), so that a slow CI run says where its minutes went.
start=$(date +%s)
stage_name=""
stage_start=$start
stage_times=""
end_stage() {
  local now
  now=$(date +%s)
  if [ -n "$stage_name" ]; then
    stage_times+=$(printf '%6ss  %s' "$((now - stage_start))" "$stage_name")$'\n'
  fi
  stage_name=""
  stage_start=$now
}
stage() {
  end_stage
  stage_name="$*"
  printf '\n=== %s === (%ss in)\n' "$*" "$(($(date +%s) - start))"
}

stage "format and lints"
cargo fmt --all --check
(cd fuzz && cargo fmt --check)
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

stage "Rust tests (unit, integration, doc)"
cargo test --workspace --locked

stage "optional intel-ipsec-mb backend (ipsec-core feature ipsec-mb)"
# Debian's libipsec-mb-dev (1.3, x86-64 only), installed where apt-get can: the optional
# AES-GCM backend is linted and tested with it, its differential fuzz target runs below,
# and benches/ipsec-mb/mb_esp.c is the baseline of the benchmarks stage. Where it cannot
# be installed: "intel-ipsec-mb not installed: <reason>" and the script goes on.
mb_apt() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@" >/dev/null 2>&1
}
mb_reason=""
if ! printf '#include <intel-ipsec-mb.h>\n' | cc -E -x c - >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    mb_reason="libipsec-mb-dev is missing and installing it needs root (uid $(id -u))"
  elif ! command -v apt-get >/dev/null 2>&1; then
    mb_reason="libipsec-mb-dev is missing and there is no apt-get"
  elif ! mb_apt install -y --no-install-recommends libipsec-mb-dev &&
       ! { mb_apt update && mb_apt install -y --no-install-recommends libipsec-mb-dev; }; then
    mb_reason="apt-get cannot install libipsec-mb-dev (Debian/Ubuntu x86-64 only)"
  fi
fi
if [ -z "$mb_reason" ]; then
  cargo clippy -p ipsec-core --all-targets --features ipsec-mb --locked -- -D warnings
  # The unit tests and every integration test that carries packets, on the library's
  # backend. The SPD and replay-window models (a minute and a half) touch no cipher,
  # and the doctests ran above: neither is run twice.
  mb_tests=()
  for t in ipsec-core/tests/*.rs; do
    t=$(basename "$t" .rs)
    case "$t" in
      spd_* | replay_model) ;;
      *) mb_tests+=(--test "$t") ;;
    esac
  done
  cargo test -p ipsec-core --features ipsec-mb --locked --lib "${mb_tests[@]}"
else
  echo "intel-ipsec-mb not installed: $mb_reason; the ipsec-mb backend is not built"
fi

stage "Miri on the unsafe code: started in the background"
# Miri interprets on one core and takes minutes; the stages that follow leave a core idle
# much of the time (valgrind, pytest, the strongSwan namespaces wait on the network). So
# scripts/miri.sh runs beside them at the lowest priority (stopped if this script exits
# early), and its result is waited for before the fuzz stage.
miri_pid=""
miri_log="$root/target/miri.log"
if rustup toolchain list 2>/dev/null | grep -q '^nightly' &&
   { rustup +nightly component list --installed 2>/dev/null | grep -q '^miri' ||
     rustup component add --toolchain nightly miri rust-src; }; then
  mkdir -p target
  # Its own process group (job control on for the launch), so that it can be stopped
  # whole; the same session, so that the kernel's autogroup scheduling (which shares
  # the CPU between sessions, whatever their nice values) lets the nice value count.
  set -m
  nice -n 19 ./scripts/miri.sh >"$miri_log" 2>&1 &
  miri_pid=$!
  set +m
  trap 'if [ -n "$miri_pid" ]; then kill -- -"$miri_pid" 2>/dev/null || true; fi' EXIT
  echo "scripts/miri.sh started (pid $miri_pid, log $miri_log)"
else
  echo "Miri is not available here (needs a nightly toolchain with the miri component): skipped"
fi

stage "release CLI"
cargo build --release --locked -p ipsec-cli

stage "examples: the demo, and the branch-office policy linted and tested"
./target/release/ipsec demo >/dev/null
./target/release/ipsec policy lint examples/branch-office.toml
./target/release/ipsec policy test examples/branch-office.toml examples/branch-office-cases.toml

stage "Python venv (pytest, scapy)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

stage "live interop with scapy"
IPSEC_BIN="$root/target/release/ipsec" .venv/bin/python -m pytest -q -c tests/python/pytest.ini tests/python

stage "C ABI (ipsec-ffi): header as C99 and C++, the C gateway and error-path tests, valgrind, ASan/UBSan, pkg-config"
./scripts/test-ffi.sh

stage "Python package (ipsec-py): wheel, stubtest, mypy --strict, pytest"
./scripts/test-py.sh

stage "strongSwan: kernel-dataplane plugin and live namespace tests (integrations/strongswan)"
# Whether strongSwan can be installed here: root, and the Debian packages (strongSwan,
# iproute2, iputils-ping, ethtool: netns.ensure_strongswan installs them with apt-get or
# says why it cannot),
# tcpdump for the WAN captures. Only that decides "not run"; after it, a failure of
# the build or of a test fails the script.
swan_start=$(date +%s)
swan_reason=""
if [ "$(id -u)" -ne 0 ]; then
  swan_reason="needs root (network namespaces, apt-get, installing the charon plugin), running as uid $(id -u)"
else
  swan_reason=$(.venv/bin/python -c '
import sys
sys.path.insert(0, "integrations/strongswan")
import netns
print(netns.ensure_strongswan() or "")')
  if [ -z "$swan_reason" ] && ! command -v tcpdump >/dev/null; then
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tcpdump >/dev/null 2>&1 &&
       ! { apt-get update >/dev/null 2>&1 &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tcpdump >/dev/null 2>&1; }; then
      swan_reason="tcpdump is missing and apt-get cannot install it"
    fi
  fi
fi
if [ -n "$swan_reason" ]; then
  echo
  echo "!!! strongSwan stage NOT run: $swan_reason"
  echo
else
  integrations/strongswan/build.sh
  .venv/bin/python -m pytest -q -c integrations/strongswan/tests/pytest.ini integrations/strongswan/tests
  echo "strongSwan stage: $(( $(date +%s) - swan_start ))s"
fi

stage "Miri results (scripts/miri.sh, run beside the stages above)"
if [ -n "$miri_pid" ]; then
  miri_ok=1
  wait "$miri_pid" || miri_ok=0
  miri_pid=""
  cat "$miri_log"
  if [ "$miri_ok" != 1 ]; then
    echo "Miri failed (output above)"
    exit 1
  fi
else
  echo "Miri was not run (see its stage above)"
fi

stage "fuzz targets"
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
  fi
  # Every target is built first (those on the ipsec-mb backend with its feature), then
  # run two at a time straight from its binary: libFuzzer uses one core.
  (cd fuzz && cargo +nightly fuzz build)
  targets=()
  for t in $(cd fuzz && cargo fuzz list); do
    if [ "$t" = aead_ipsec_mb ] && [ -n "$mb_reason" ]; then
      # the differential target of the optional backend: built only with it
      echo "$t: not run (intel-ipsec-mb not installed: $mb_reason)"
      continue
    fi
    if [ -z "$mb_reason" ] &&
       { [ "$t" = aead_ipsec_mb ] || [ "$t" = cbc_burst ] || [ "$t" = gateway_burst ]; }; then
      # CBC + HMAC bursts on intel-ipsec-mb against one packet at a time (in Rust);
      # without the library they compare the Rust burst lanes instead
      (cd fuzz && cargo +nightly fuzz build --features ipsec-mb "$t")
    fi
    targets+=("$t")
  done
  fuzz_bin="$root/fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
  work=$(mktemp -d)
  fuzz_one() {
    local t=$1 log="$work/$1.log"
    # A copy of the corpus, so that new inputs do not dirty the checkout.
    if ! cp -r "fuzz/corpus/$t" "$work/$t"; then
      echo "fuzz target $t: its corpus could not be copied"
      touch "$work/failed"
      return
    fi
    if "$fuzz_bin/$t" "$work/$t" -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 \
         -artifact_prefix="$work/$t-" >"$log" 2>&1; then
      echo "$t: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" |
        grep -o '[0-9]*$') runs in ${FUZZ_SECONDS}s, no crash"
    else
      tail -n 60 "$log"
      echo "fuzz target $t failed"
      touch "$work/failed"
    fi
  }
  running=0
  for t in "${targets[@]}"; do
    fuzz_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge 2 ]; then
      wait -n || true
      running=$((running - 1))
    fi
  done
  wait
  if [ -e "$work/failed" ]; then
    exit 1
  fi
  rm -rf "$work"
else
  echo "no nightly toolchain: cargo-fuzz needs one; replaying every target's corpus as plain tests instead"
fi
# On every machine: the fuzz crate linted (it is outside the workspace), and the corpora
# (and saved regressions) as plain tests on stable.
# In the workspace's target directory: most of their dependencies are built there already.
(cd fuzz && export CARGO_TARGET_DIR="$root/target" &&
  cargo clippy --all-targets --locked -- -D warnings && cargo test --locked)

stage "benchmarks (compiled and run once, no timing asserted)"
cargo test --locked -p ipsec-benches --benches
# OpenSSL's per-packet EVP seal/open, the OpenSSL baseline of scripts/bench-report.py:
# built with the C example's warnings, run with a 1 ms budget per case (its self-check
# round-trips and tampers each case), and its records checked for the bench format.
if printf '#include <openssl/evp.h>\n' | cc -E -x c - >/dev/null 2>&1; then
  cc -std=c99 -O2 -Wall -Wextra -Werror -pedantic -o target/evp_aead \
    benches/openssl/evp_aead.c -lcrypto
  target/evp_aead 1 | .venv/bin/python -c '
import json, sys
rows = [json.loads(line) for line in sys.stdin]
assert len(rows) == 18, rows
for r in rows:
    assert r["backend"] == "openssl-evp" and r["per_packet"] and r["ns_per_packet"] > 0, r
print(len(rows), "OpenSSL EVP records")'
else
  echo "no OpenSSL headers: benches/openssl/evp_aead.c not built (bench-report.py says so too)"
fi
# intel-ipsec-mb, the other baseline of scripts/bench-report.py (installed or refused in
# the stage of the ipsec-mb backend above): benches/ipsec-mb/mb_esp.c built with the same
# warnings, its --check run once (published GCM, ChaCha20-Poly1305 and HMAC vectors, ESP
# round trips and tampered tags, under both managers; no timing), then a 1 ms run whose
# records are checked for the bench format.
if [ -z "$mb_reason" ]; then
  cc -std=c11 -O2 -Wall -Wextra -Werror -pedantic -o target/mb_esp \
    benches/ipsec-mb/mb_esp.c -lIPSec_MB
  target/mb_esp --check
  target/mb_esp 1 2>/dev/null | .venv/bin/python -c '
import json, sys
rows = [json.loads(line) for line in sys.stdin]
assert len(rows) == 48, rows
for r in rows:
    assert r["backend"].startswith("ipsec-mb") and r["per_packet"] and r["ns_per_packet"] > 0, r
print(len(rows), "intel-ipsec-mb records")'
else
  echo "intel-ipsec-mb not installed: $mb_reason; benches/ipsec-mb/mb_esp.c not built" \
    "(bench-report.py says so too)"
fi
# DPDK's rte_acl, the SPD baseline of scripts/spd-report.py: dpdk-dev installed where apt
# can, benches/dpdk-acl/acl_spd.c built with -Werror, and its cross-check (rte_acl
# classifies every flow as our SPD does) run once on the 1,000-policy IPv4 and IPv6 sets.
dpdk_reason=""
if ! pkg-config --exists libdpdk 2>/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    dpdk_reason="installing dpdk-dev needs root, running as uid $(id -u)"
  elif ! command -v apt-get >/dev/null; then
    dpdk_reason="no apt-get to install dpdk-dev with"
  elif ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
         dpdk-dev >/dev/null 2>&1 &&
       ! { apt-get -o DPkg::Lock::Timeout=300 update >/dev/null 2>&1 &&
           DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
             dpdk-dev >/dev/null 2>&1; }; then
    dpdk_reason="apt-get cannot install dpdk-dev"
  elif ! pkg-config --exists libdpdk; then
    dpdk_reason="dpdk-dev installed but pkg-config finds no libdpdk"
  fi
fi
if [ -z "$dpdk_reason" ]; then
  # shellcheck disable=SC2046 # pkg-config's flags are meant to split
  cc -O2 -Wall -Wextra -Werror -o target/acl_spd benches/dpdk-acl/acl_spd.c \
    $(pkg-config --cflags --libs libdpdk)
  cargo run --locked -q -p ipsec-benches --example spd_acl -- \
    export target/spd-acl-check --sizes 1000
  target/acl_spd --check target/spd-acl-check/spd-ipv4-1000.txt \
    target/spd-acl-check/spd-ipv6-1000.txt
else
  echo "DPDK not installed: $dpdk_reason: benches/dpdk-acl/acl_spd.c not built or checked"
fi

end_stage
echo
echo "wall time of each stage:"
printf '%s' "$stage_times"
echo "all tests passed in $(( $(date +%s) - start ))s"
