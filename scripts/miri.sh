#!/usr/bin/env bash
# Miri on the unsafe code: ipsec-core's crypto::wipe and the C ABI's (ipsec-ffi) own
# tests. Usage: ./scripts/miri.sh
#
# Needs a nightly toolchain with the miri component (and rust-src); scripts/test.sh
# installs the component, runs this script in the background at the lowest priority
# while its other stages run, and waits for it before the fuzz stage.
#
# Miri interprets on one core, so the C ABI's tests run as two processes at once: the
# three long burst comparisons (about half of Miri's time) in one and the other tests
# in the other. Cargo holds its build directory while tests run, so the second process
# has its own (target/miri-second). Exit status: 0 when every test passed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# The sysroot first, once: two processes setting it up at the same time would race.
cargo +nightly miri setup
cargo +nightly miri test -p ipsec-core --no-default-features --locked --lib crypto::wipe

miri_ffi=(cargo +nightly miri test -p ipsec-ffi --no-default-features --locked --lib)
miri_long=(tests::c_bursts_equal_one_packet_at_a_time
           tests::c_gateway_bursts_equal_one_packet_at_a_time
           tests::c_gateway_inbound_bursts_equal_one_packet_at_a_time)
long_log=$(mktemp)
trap 'rm -f "$long_log"' EXIT
CARGO_TARGET_DIR="$root/target/miri-second" \
  "${miri_ffi[@]}" -- --exact "${miri_long[@]}" >"$long_log" 2>&1 &
long_pid=$!
rest_ok=1
"${miri_ffi[@]}" -- --exact "${miri_long[@]/#/--skip=}" || rest_ok=0
long_ok=1
wait "$long_pid" || long_ok=0
cat "$long_log"
if [ "$rest_ok$long_ok" != 11 ]; then
  echo "Miri found a problem in the C ABI's tests (output above)"
  exit 1
fi
echo "Miri: crypto::wipe and every C ABI test passed"
