//! The vCPU run loop: one thread per vCPU. Port and MMIO exits go to the
//! buses; everything that ends the VM is reported once on the exit channel.

use std::sync::mpsc::Sender;

use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::pause::Pause;
use crate::snapshot::vcpu_state::{VcpuState, VcpuStateError};

use crate::VmExit;
use crate::devices::bus::Bus;

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// What the loop does after one exit.
#[derive(Debug, PartialEq)]
pub enum Next {
    Continue,
    Stop(VmExit),
}

/// Handles one exit. Reads that hit no device return all ones, as on
/// hardware; writes that hit none are dropped.
pub fn handle_exit(exit: VcpuExit<'_>, cpu: u8, pio: &Bus, mmio: &Bus) -> Next {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            pio.write(u64::from(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            mmio.write(addr, data);
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
        VcpuExit::Hlt => {
            return Next::Stop(VmExit::Error(format!(
                "vCPU {cpu} halted with interrupts off: the guest stopped (powered off without ACPI?)"
            )));
        }
        VcpuExit::Shutdown => {
            return Next::Stop(VmExit::Error(format!(
                "vCPU {cpu}: the guest triple-faulted (KVM_EXIT_SHUTDOWN)"
            )));
        }
        VcpuExit::FailEntry(reason, hw_cpu) => {
            return Next::Stop(VmExit::Error(format!(
                "vCPU {cpu}: KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}, cpu {hw_cpu})"
            )));
        }
        VcpuExit::InternalError => {
            return Next::Stop(VmExit::Error(format!(
                "vCPU {cpu}: KVM internal error (KVM_EXIT_INTERNAL_ERROR): KVM could not emulate what the guest did"
            )));
        }
        VcpuExit::SystemEvent(kind, _) => {
            return Next::Stop(match kind {
                KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::Reset,
                KVM_SYSTEM_EVENT_CRASH => {
                    VmExit::Error(format!("vCPU {cpu}: the guest crashed (system event)"))
                }
                other => VmExit::Error(format!("vCPU {cpu}: unexpected system event {other}")),
            });
        }
        other => {
            return Next::Stop(VmExit::Error(format!(
                "vCPU {cpu}: unexpected exit {other:?}"
            )));
        }
    }
    Next::Continue
}

/// What a vCPU does when a pause is requested: its saved state goes to
/// `saved`, then it reports [`VmExit::Paused`] and parks for good (the
/// process ends once the snapshot is written).
pub struct PauseCtl {
    pub pause: Arc<Pause>,
    pub msrs: Vec<u32>,
    pub saved: Sender<Result<VcpuState, VcpuStateError>>,
}

/// Runs the vCPU until something ends the VM, then reports it. The process
/// exits when the VM ends, which ends the other vCPU threads too.
pub fn run(
    mut vcpu: VcpuFd,
    cpu: u8,
    pio: Bus,
    mmio: Bus,
    exit: Sender<VmExit>,
    pause: Option<PauseCtl>,
) {
    if let Some(p) = &pause {
        p.pause
            .enter(std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit));
    }
    log::debug!("vCPU {cpu}: first KVM_RUN");
    loop {
        if let Some(p) = pause.as_ref().filter(|p| p.pause.requested()) {
            let saved = pause_and_save(&mut vcpu, cpu, &p.msrs);
            p.pause.leave();
            let _ = p.saved.send(saved);
            let _ = exit.send(VmExit::Paused);
            loop {
                std::thread::park();
            }
        }
        let next = match vcpu.run() {
            Ok(e) => handle_exit(e, cpu, &pio, &mmio),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Stop(VmExit::Error(format!("vCPU {cpu}: KVM_RUN failed: {e}"))),
        };
        if let Next::Stop(reason) = next {
            if let Some(p) = &pause {
                p.pause.leave();
            }
            let _ = exit.send(reason);
            return;
        }
    }
}

/// Completes the vCPU's pending I/O exit without running guest code (one
/// KVM_RUN with immediate_exit set), then reads its state.
fn pause_and_save(vcpu: &mut VcpuFd, cpu: u8, msrs: &[u32]) -> Result<VcpuState, VcpuStateError> {
    vcpu.set_kvm_immediate_exit(1);
    // EINTR is the expected answer: KVM finished the pending exit and
    // returned before entering the guest.
    if let Ok(e) = vcpu.run() {
        log::warn!("vCPU {cpu}: exit {e:?} while pausing");
    }
    vcpu.set_kvm_immediate_exit(0);
    VcpuState::save(vcpu, cpu, msrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, _o: u64, d: &mut [u8]) {
            d.fill(self.0);
        }
        fn write(&mut self, _o: u64, d: &[u8]) {
            self.0 = d[0];
        }
    }

    fn buses() -> (Bus, Bus) {
        let mut pio = Bus::new();
        pio.insert(Arc::new(Mutex::new(Reg(0))), 0x80, 1).unwrap();
        (pio, Bus::new())
    }

    #[test]
    fn port_io_goes_to_the_bus_and_misses_read_ones() {
        let (pio, mmio) = buses();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x80, &[7]), 0, &pio, &mmio),
            Next::Continue
        );
        let mut d = [0u8; 1];
        handle_exit(VcpuExit::IoIn(0x80, &mut d), 0, &pio, &mmio);
        assert_eq!(d, [7]);
        let mut miss = [0u8; 2];
        handle_exit(VcpuExit::MmioRead(0xd000_0000, &mut miss), 0, &pio, &mmio);
        assert_eq!(miss, [0xff, 0xff]);
    }

    #[test]
    fn fatal_exits_stop_with_a_reason() {
        let (pio, mmio) = buses();
        let msg = |e| match handle_exit(e, 1, &pio, &mmio) {
            Next::Stop(VmExit::Error(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(msg(VcpuExit::Shutdown).contains("triple-faulted"));
        assert!(msg(VcpuExit::InternalError).contains("KVM_EXIT_INTERNAL_ERROR"));
        assert!(msg(VcpuExit::FailEntry(0x80000021, 0)).contains("0x80000021"));
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]),
                0,
                &pio,
                &mmio
            ),
            Next::Stop(VmExit::Reset)
        );
    }
}
