//! Arbitrary text into the policy file parser; see [`ipsec_fuzz::spd::policy_parse`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipsec_fuzz::spd::policy_parse(data));
