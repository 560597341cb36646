//! intel-ipsec-mb's AES-GCM against RustCrypto's (only with `--features ipsec-mb`); see
//! [`ipsec_fuzz::aead_ipsec_mb::aead_ipsec_mb`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipsec_fuzz::aead_ipsec_mb::aead_ipsec_mb(data));
