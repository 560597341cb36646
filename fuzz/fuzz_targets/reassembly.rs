//! Coded operations on a fragment reassembler; see [`ipsec_fuzz::reassembly::reassembly`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipsec_fuzz::reassembly::reassembly(data));
