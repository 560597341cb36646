//! Structured packets through encrypt and decrypt; see [`ipsec_fuzz::esp_roundtrip`].
#![no_main]

libfuzzer_sys::fuzz_target!(|input: ipsec_fuzz::RoundtripInput| {
    ipsec_fuzz::esp_roundtrip(&input)
});
