//! The state of a virtio-net device a snapshot keeps: what the guest
//! negotiated, the MAC it was shown and where its queues stand (rx buffers
//! the device held for the next frame given back to the guest's side). The
//! tap is not in it: a restored VM gets a tap of its own (by name or fd),
//! as a fresh one does; frames in flight on the old tap are lost, as on a
//! wire.

use serde::{Deserialize, Serialize};

use super::device::Net;
use crate::devices::virtio::persist::{DeviceState, PersistError, VirtioState};
use crate::devices::virtio::{Activation, VirtioDevice};

/// A virtio-net device's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// Features, and the rx and tx queues once activated.
    pub virtio: VirtioState,
    /// The MAC address the guest was given, if any.
    pub mac: Option<[u8; 6]>,
    /// Features the device offered (the driver chose among them).
    pub offered_features: u64,
}

impl Net {
    pub(super) fn restore_state(
        &mut self,
        state: &DeviceState,
        a: Option<Activation>,
    ) -> Result<(), PersistError> {
        let DeviceState::Net(s) = state else {
            return Err(PersistError::WrongDevice {
                found: state.kind(),
                want: "net",
            });
        };
        s.virtio.check_version()?;
        let shown = |m: Option<[u8; 6]>| {
            m.map_or("none".to_string(), |m| {
                crate::config::MacAddr(m).to_string()
            })
        };
        if s.mac != self.mac() {
            return Err(PersistError::Mismatch(format!(
                "the guest's MAC was {}, it is {}",
                shown(s.mac),
                shown(self.mac())
            )));
        }
        // What this tap can do may differ from the saved one's (UFO).
        let acked = s.virtio.acked_features;
        if acked & !s.offered_features != 0 || acked & !self.features() != 0 {
            return Err(PersistError::Mismatch(format!(
                "the driver accepted features {acked:#x}, this device offers {:#x}",
                self.features()
            )));
        }
        if !s.virtio.queues.is_empty() && s.virtio.queues.len() != 2 {
            return Err(PersistError::Mismatch(format!(
                "{} saved queues, the device has 2",
                s.virtio.queues.len()
            )));
        }
        match a {
            Some(a) if s.virtio.activated() => {
                self.activate(a, acked).map_err(PersistError::Activate)
            }
            _ => Ok(()),
        }
    }
}
