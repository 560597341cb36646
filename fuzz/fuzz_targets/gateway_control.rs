//! Control calls on two live gateways, interleaved with packets, against a model; see
//! [`ipsec_fuzz::control::gateway_control`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ipsec_fuzz::control::gateway_control(data);
});
