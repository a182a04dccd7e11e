//! One VM from a [`VmConfig`], in two steps, as rust-vmm's reference VMM
//! and Firecracker's builder do:
//! - [`Vmm::build`] (in `builder.rs`): guest memory, kernel, initrd, command
//!   line, boot structures, devices and vCPUs, all created but nothing
//!   running in the guest yet;
//! - [`Vmm::run`]: start one thread per vCPU and wait for the first thing
//!   that ends the VM.
//!
//! The seam between the two is where later work hooks in: a restore from a
//! snapshot produces a [`Vmm`] from saved state instead of a kernel, and a
//! VMM's per-thread seccomp filters go in where `run` starts the threads,
//! before any of them enters the guest (see [`crate::seccomp`]).

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use crate::VmExit;
use crate::arch::x86_64::{boot, mptable, regs};
use crate::config::{ConfigError, VmConfig};
use crate::device_manager::{DeviceManager, DeviceManagerError};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::{BootMark, PanicNote, Serial};
use crate::devices::virtio::block::BlockError;
use crate::devices::virtio::net::TapError;
use crate::devices::virtio::vsock::VsockError;
use crate::kvm::memory::MemoryError;
use crate::kvm::pause::Pause;
use crate::kvm::vcpu::{self, PauseCtl};
use crate::kvm::vm::{Vm, VmError};
use crate::seccomp::{self, SeccompError, ThreadKind};
use crate::snapshot::vcpu_state::{VcpuState, VcpuStateError};
use crate::snapshot::vm_state::VmState;
use crate::snapshot::{self, Origin, SnapshotState};

/// Why a VM could not be built, or how it ended badly. Each variant says
/// what failed; the cause, where there is one, is its `source` (print the
/// chain, e.g. `{:#}` of an `anyhow::Error`, to see it).
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read the kernel {path}")]
    KernelFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a bootable ELF vmlinux (hull-vmm boots an uncompressed vmlinux, not a bzImage)"
    )]
    NotElf {
        path: PathBuf,
        source: linux_loader::loader::elf::Error,
    },
    #[error("loading the kernel {path} into guest memory")]
    KernelLoad {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error(
        "this /dev/kvm is PVM, which cannot run a stock Linux guest (only PVM-enabled kernels); run through tests/kvm-host/run (see README) or on hardware KVM"
    )]
    PvmHost,
    #[error("cannot read the initrd {path}")]
    InitrdFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("allocating {mib} MiB of guest memory")]
    Memory { mib: u64, source: MemoryError },
    #[error("writing {what} to guest memory")]
    GuestMemoryWrite {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error("kernel command line (at most {max} bytes)", max = crate::arch::x86_64::CMDLINE_MAX)]
    Cmdline(#[from] linux_loader::cmdline::Error),
    #[error("writing the kernel command line to guest memory")]
    CmdlineLoad(#[source] linux_loader::loader::Error),
    #[error("opening the serial output {path}")]
    Serial {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating the eventfd of {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    #[error("registering the irqfd of {0}")]
    Irqfd(&'static str, #[source] kvm_ioctls::Error),
    #[error("placing a device on the I/O port bus")]
    Bus(#[from] BusError),
    // BlockError, VsockError and TapError name their file or tap in their
    // message.
    #[error("setting up a virtio-blk disk")]
    Block(#[from] BlockError),
    #[error("setting up the vsock device")]
    Vsock(#[from] VsockError),
    #[error("setting up a virtio-net device")]
    Net(#[from] TapError),
    #[error("setting up a virtio-fs device")]
    Fs(#[from] crate::devices::virtio::fs::FsError),
    #[error("starting the virtio event loop")]
    EventLoop(#[source] std::io::Error),
    #[error("adding a virtio device")]
    DeviceManager(#[from] DeviceManagerError),
    #[error("setting the CPUID of vCPU {id}")]
    Cpuid { id: u8, source: kvm_ioctls::Error },
    #[error("starting the {name} thread")]
    Thread {
        name: String,
        source: std::io::Error,
    },
    #[error("the snapshot has {saved} virtio devices, the configuration {configured}")]
    DeviceCount { saved: usize, configured: usize },
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("saving or restoring a vCPU")]
    VcpuState(#[from] crate::snapshot::vcpu_state::VcpuStateError),
    #[error("saving or restoring the VM")]
    VmState(#[from] crate::snapshot::vm_state::VmStateError),
    #[error("the guest ended before its agent was ready, so no snapshot was taken")]
    NoSnapshotPoint,
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("the guest kernel panicked: {0}")]
    GuestPanic(String),
    #[error("the VM failed: {0}")]
    Guest(String),
}

impl VmmError {
    /// hull-vmm's exit status for this error: 1 for a bad configuration or
    /// host problem, 2 for a guest that failed (or a VMM thread that
    /// panicked), 3 for a guest kernel panic, 4 for a snapshot refused
    /// before anything of it was restored.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmmError::Snapshot(_) => 4,
            VmmError::GuestPanic(_) => 3,
            VmmError::Guest(_) => 2,
            _ => 1,
        }
    }
}

/// What a finished VM leaves behind.
#[derive(Debug)]
pub struct VmOutcome {
    pub boot_marks: Vec<BootMark>,
    /// Where the snapshot went, when the VM was paused for one.
    pub snapshot: Option<PathBuf>,
}

/// A snapshot to take when the guest reaches the snapshot mark.
pub(crate) struct SnapshotPlan {
    pub(crate) dir: PathBuf,
    pub(crate) origin: Origin,
    pub(crate) pause: Arc<Pause>,
    /// The MSRs to save, those KVM lists that the vCPU lets us read.
    pub(crate) msrs: Vec<u32>,
}

/// One vCPU, created and set up for boot, not yet running.
pub(crate) struct Vcpu {
    pub(crate) id: u8,
    pub(crate) fd: VcpuFd,
}

/// A built VM, ready to run: what [`Vmm::build`] makes and [`Vmm::run`]
/// consumes.
pub struct Vmm {
    pub(crate) vm: Vm,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    /// The virtio devices, when the configuration has any.
    pub(crate) devices: Option<DeviceManager>,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) panic_note: PanicNote,
    pub(crate) boot_marks: Arc<Mutex<Vec<BootMark>>>,
    pub(crate) exit_tx: Sender<VmExit>,
    pub(crate) exit_rx: Receiver<VmExit>,
    pub(crate) snapshot: Option<SnapshotPlan>,
}

impl Vmm {
    /// Starts the vCPUs and runs the VM until the guest resets (Ok) or
    /// something ends it badly: a fatal exit, a guest kernel panic, a VMM
    /// thread that panicked (Err).
    pub fn run(self) -> Result<VmOutcome, VmmError> {
        let Vmm {
            vm,
            mem,
            vcpus,
            pio,
            mmio,
            devices,
            serial,
            panic_note,
            boot_marks,
            exit_tx,
            exit_rx,
            snapshot,
        } = self;
        let vcpu_count = vcpus.len();
        let (saved_tx, saved_rx) = mpsc::channel();
        // Every vCPU installs its seccomp filter, then waits here until the
        // main thread has its own: no guest instruction runs before all
        // filters are in (see crate::seccomp). A restored VM gets here with
        // every KVM_SET_* already done by Vmm::restore; a run that takes a
        // snapshot has no filters (hull-vmm does not enable them for it).
        let filtered = Arc::new(Barrier::new(vcpu_count + 1));
        for Vcpu { id, fd } in vcpus {
            let (pio, mmio, tx) = (pio.clone(), mmio.clone(), exit_tx.clone());
            let filtered = filtered.clone();
            let pause = snapshot.as_ref().map(|p| PauseCtl {
                pause: p.pause.clone(),
                msrs: p.msrs.clone(),
                saved: saved_tx.clone(),
            });
            let name = format!("vcpu{id}");
            crate::thread::spawn_named(name.clone(), exit_tx.clone(), move || {
                let entered = seccomp::enter(ThreadKind::Vcpu);
                filtered.wait();
                match entered {
                    Ok(()) => vcpu::run(fd, id, pio, mmio, tx, pause),
                    Err(e) => {
                        let _ = tx.send(VmExit::Error(crate::error::chain(&e)));
                    }
                }
            })
            .map_err(|source| VmmError::Thread { name, source })?;
        }
        drop(saved_tx);
        log::debug!("vCPU threads started");
        let entered = seccomp::enter(ThreadKind::Main);
        filtered.wait();
        entered?;
        log::debug!("seccomp filters in, vCPUs let into the guest");
        // Devices hold senders too (the i8042); when every vCPU has stopped
        // without a word and no device can speak, recv fails.
        drop(exit_tx);
        let mut paused = 0;
        let exit = loop {
            match exit_rx.recv() {
                Ok(VmExit::Paused) => {
                    paused += 1;
                    if paused == vcpu_count {
                        break VmExit::Paused;
                    }
                }
                Ok(other) => break other,
                Err(_) => break VmExit::Error("every vCPU stopped".into()),
            }
        };
        serial.lock().unwrap_or_else(|p| p.into_inner()).flush();
        let wanted_snapshot = snapshot.is_some();
        if let (VmExit::Paused, Some(plan)) = (&exit, snapshot) {
            let parts = SnapshotParts {
                vm: &vm,
                mem: &mem,
                devices: devices.as_ref(),
                serial: &serial,
            };
            let dir = take_snapshot(plan, &parts, saved_rx, vcpu_count)?;
            let boot_marks = boot_marks.lock().unwrap_or_else(|p| p.into_inner()).clone();
            std::mem::forget(mem);
            return Ok(VmOutcome {
                boot_marks,
                snapshot: Some(dir),
            });
        }
        let panicked = panic_note.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if wanted_snapshot && exit == VmExit::Reset && panicked.is_none() {
            return Err(VmmError::NoSnapshotPoint);
        }
        let boot_marks = boot_marks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // vCPUs and the device loop may still be running in guest memory:
        // keep it mapped until the process exits.
        std::mem::forget(mem);
        drop((devices, vm));
        outcome(exit, panicked, boot_marks)
    }
}

/// How the VM ended, from the first exit event and the guest kernel's
/// panic line, if the console showed one (a panicking guest resets, so
/// the panic line decides).
fn outcome(
    exit: VmExit,
    panicked: Option<String>,
    boot_marks: Vec<BootMark>,
) -> Result<VmOutcome, VmmError> {
    match (exit, panicked) {
        (_, Some(line)) => Err(VmmError::GuestPanic(line)),
        (VmExit::Reset, None) => Ok(VmOutcome {
            boot_marks,
            snapshot: None,
        }),
        (VmExit::Error(msg), None) => Err(VmmError::Guest(msg)),
        (VmExit::Paused, None) => Err(VmmError::Guest("paused with no snapshot to take".into())),
    }
}

/// What of a paused VM goes into its snapshot besides the vCPUs.
struct SnapshotParts<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemoryMmap,
    devices: Option<&'a DeviceManager>,
    serial: &'a Arc<Mutex<Serial>>,
}

/// Writes the snapshot of a VM whose vCPUs are all paused (their states
/// arrive on `saved`): memory first, the state file last, so a state file
/// is there only when its memory is complete.
fn take_snapshot(
    plan: SnapshotPlan,
    parts: &SnapshotParts<'_>,
    saved: Receiver<Result<VcpuState, VcpuStateError>>,
    vcpu_count: usize,
) -> Result<PathBuf, VmmError> {
    let mut vcpus = saved
        .iter()
        .take(vcpu_count)
        .collect::<Result<Vec<_>, _>>()?;
    vcpus.sort_by_key(|v| v.id);
    let devices = parts.devices.map(DeviceManager::save).unwrap_or_default();
    let mut state = SnapshotState {
        origin: plan.origin,
        memory: snapshot::layout(parts.mem),
        data: Vec::new(),
        vm: VmState::save(parts.vm.fd())?,
        vcpus,
        serial: parts
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .save(),
        devices,
    };
    std::fs::create_dir_all(&plan.dir).map_err(|source| snapshot::SnapshotError::Io {
        what: "create",
        path: plan.dir.clone(),
        source,
    })?;
    let state_path = plan.dir.join(snapshot::STATE_FILE);
    // A state file left from an older snapshot must not meet new memory.
    let _ = std::fs::remove_file(&state_path);
    state.data = snapshot::write_memory(parts.mem, &plan.dir.join(snapshot::MEMORY_FILE))?;
    snapshot::write_state(&state, &state_path)?;
    Ok(plan.dir)
}

/// Builds the VM and runs it until the guest resets (Ok) or fails (Err);
/// boot-timer marks count from `start`.
pub fn run(cfg: &VmConfig, start: Instant) -> Result<VmOutcome, VmmError> {
    Vmm::build_since(cfg.clone(), start)?.run()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_panic_on_a_vcpu_thread_ends_the_vm_with_exit_status_2() {
        let (tx, rx) = mpsc::channel();
        crate::thread::spawn_named("vcpu1".into(), tx, || panic!("bad exit state")).unwrap();
        let exit = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let e = outcome(exit, None, Vec::new()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "the VM failed: vcpu1 thread panicked: bad exit state"
        );
    }

    #[test]
    fn a_guest_panic_line_wins_over_the_reset_that_follows_it() {
        let e = outcome(
            VmExit::Reset,
            Some("Kernel panic - not syncing".into()),
            Vec::new(),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(outcome(VmExit::Reset, None, Vec::new()).is_ok());
    }
}
