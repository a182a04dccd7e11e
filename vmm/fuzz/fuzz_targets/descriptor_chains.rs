//! cargo fuzz target: see hull_vmm::devices::virtio::fuzz::descriptor_chains.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hull_vmm::devices::virtio::fuzz::descriptor_chains(data);
});
