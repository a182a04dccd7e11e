//! cargo fuzz target: see hull::client::fuzz_session (what a hostile agent
//! sends to `hull run`/`exec`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hull::client::fuzz_session(data);
});
