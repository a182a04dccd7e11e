//! cargo fuzz target: see hull::build::upper_tar::fuzz_read (the tar of a
//! RUN step's changes, as a hostile guest may send it).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hull::build::upper_tar::fuzz_read(data);
});
