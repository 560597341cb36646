//! Random policies and flows: compiled SPD == naive scan; see
//! [`ipsec_fuzz::spd::spd_differential`].
#![no_main]

libfuzzer_sys::fuzz_target!(|input: ipsec_fuzz::spd::SpdInput| {
    ipsec_fuzz::spd::spd_differential(&input)
});
