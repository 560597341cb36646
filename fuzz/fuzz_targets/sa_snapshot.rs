//! Untrusted bytes into the SA snapshot parser and restore; see
//! [`ipsec_fuzz::snapshot::sa_snapshot`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipsec_fuzz::snapshot::sa_snapshot(data));
