//! cargo fuzz target: see hull_vmm::devices::virtio::fuzz::vsock_packets.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hull_vmm::devices::virtio::fuzz::vsock_packets(data);
});
