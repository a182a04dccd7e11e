//! Devices: the bus they sit on, legacy devices, and virtio.

pub mod bus;
pub mod legacy;
pub mod virtio;
