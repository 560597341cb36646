//! AES-CBC + HMAC and AES-GCM bursts against one packet at a time (on intel-ipsec-mb with
//! `--features ipsec-mb`); see [`ipsec_fuzz::cbc_burst::cbc_burst`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipsec_fuzz::cbc_burst::cbc_burst(data));
