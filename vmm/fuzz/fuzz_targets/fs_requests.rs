//! cargo fuzz target: see hull_vmm::devices::virtio::fuzz::fs_requests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hull_vmm::devices::virtio::fuzz::fs_requests(data);
});
