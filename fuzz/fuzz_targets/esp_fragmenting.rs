//! Packets beyond the path MTU through fragmenting encrypt and decrypt; see
//! [`ipsec_fuzz::fragmenting::esp_fragmenting`].
#![no_main]

libfuzzer_sys::fuzz_target!(|input: ipsec_fuzz::fragmenting::FragmentingInput| {
    ipsec_fuzz::fragmenting::esp_fragmenting(&input)
});
