//! The gateway's inbound bursts against one packet at a time; see
//! [`ipsec_fuzz::gateway_burst::gateway_burst`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipsec_fuzz::gateway_burst::gateway_burst(data));
