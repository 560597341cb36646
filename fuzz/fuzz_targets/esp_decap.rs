//! Arbitrary bytes into inbound SAs of every cipher; see [`ipsec_fuzz::esp_decap`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipsec_fuzz::esp_decap(data));
