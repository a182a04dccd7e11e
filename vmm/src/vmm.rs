//! Building and running one VM from a [`VmConfig`]: memory, kernel, initrd,
//! command line, boot structures, devices, vCPU threads; then waiting for
//! the first thing that ends it.

use std::fs::File;
use std::io::Write;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{KernelLoader, elf::Elf, load_cmdline};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::VmExit;
use crate::arch::x86_64::{self as arch, boot, cpuid, mptable, regs};
use crate::config::{SerialOutput, VmConfig};
use crate::device_manager::DeviceManager;
use crate::devices::bus::Bus;
use crate::devices::legacy::{
    BOOT_TIMER_PORT, BootMark, BootTimer, COM1_BASE, COM1_IRQ, I8042, I8042_COMMAND, I8042_DATA,
    PanicNote, Serial,
};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::event_loop::EventLoop;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::kvm::vm::{Vm, VmError};
use crate::kvm::{KvmKind, detect_kvm_kind, vcpu};

/// Marker a PVM-enabled guest kernel carries (the PVM guest entry code).
const PVM_GUEST_MARKER: &[u8] = b"pvm_early_setup";

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot read the kernel {path}: {source}")]
    KernelFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a bootable ELF vmlinux ({reason}); hull-vmm boots an uncompressed vmlinux, not a bzImage"
    )]
    NotElf {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "this /dev/kvm is PVM, which cannot run a stock Linux guest (only PVM-enabled kernels); run through tests/kvm-host/run (see README) or on hardware KVM"
    )]
    PvmHost,
    #[error("cannot read the initrd {path}: {source}")]
    InitrdFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("allocating {mib} MiB of guest memory: {reason}")]
    Memory { mib: u64, reason: String },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("setting up devices: {0}")]
    Devices(String),
    #[error("the guest kernel panicked: {0}")]
    GuestPanic(String),
    #[error("the guest failed: {0}")]
    Guest(String),
}

impl VmmError {
    /// hull-vmm's exit status for this error: 1 for a bad configuration or
    /// host problem, 2 for a guest that failed, 3 for a guest kernel panic.
    pub fn exit_code(&self) -> i32 {
        match self {
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
}

/// Builds the VM and runs it until the guest resets (Ok) or fails (Err).
pub fn run(cfg: &VmConfig, start: Instant) -> Result<VmOutcome, VmmError> {
    cfg.validate()?;
    let kernel_bytes = std::fs::read(&cfg.kernel).map_err(|source| VmmError::KernelFile {
        path: cfg.kernel.clone(),
        source,
    })?;
    if detect_kvm_kind() == KvmKind::Pvm && !contains(&kernel_bytes, PVM_GUEST_MARKER) {
        return Err(VmmError::PvmHost);
    }
    let initrd = match &cfg.initrd {
        Some(p) => Some(std::fs::read(p).map_err(|source| VmmError::InitrdFile {
            path: p.clone(),
            source,
        })?),
        None => None,
    };

    let mem_bytes = cfg.mem_mib << 20;
    let ram = arch::ram_ranges(mem_bytes);
    let ranges: Vec<(GuestAddress, usize)> = ram
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    let mem = crate::kvm::memory::guest_memory(&ranges, cfg.huge_pages).map_err(|reason| {
        VmmError::Memory {
            mib: cfg.mem_mib,
            reason,
        }
    })?;
    let vm = Vm::new()?;
    vm.set_memory(&mem)?;
    let mut mmio = Bus::new();
    let virtio_cmdline = attach_virtio(cfg, &vm, &mem, &mut mmio)?;

    let mut image = std::io::Cursor::new(kernel_bytes);
    let loaded = Elf::load(
        &mem,
        None,
        &mut image,
        Some(GuestAddress(arch::HIMEM_START)),
    )
    .map_err(|e| VmmError::NotElf {
        path: cfg.kernel.clone(),
        reason: e.to_string(),
    })?;
    drop(image);
    let entry = loaded.kernel_load.0;

    let initrd_loc = match &initrd {
        Some(bytes) => {
            let size = bytes.len() as u64;
            let addr = boot::initrd_addr(&ram, loaded.kernel_end, size)?;
            mem.write_slice(bytes, GuestAddress(addr))
                .map_err(|e| VmmError::Devices(format!("writing the initrd: {e}")))?;
            Some((addr, size))
        }
        None => None,
    };
    drop(initrd);

    let mut cmdline =
        Cmdline::new(arch::CMDLINE_MAX).map_err(|e| VmmError::Cmdline(e.to_string()))?;
    for part in virtio_cmdline
        .iter()
        .map(String::as_str)
        .chain([cfg.full_cmdline().as_str()])
    {
        cmdline
            .insert_str(part)
            .map_err(|e| VmmError::Cmdline(format!("{e} (at most {} bytes)", arch::CMDLINE_MAX)))?;
    }
    load_cmdline(&mem, GuestAddress(arch::CMDLINE_ADDR), &cmdline)
        .map_err(|e| VmmError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| VmmError::Cmdline(e.to_string()))?
        .as_bytes_with_nul()
        .len();

    let params = boot::boot_params_for(&ram, cmdline_len, initrd_loc)?;
    boot::write_boot_structures(&mem, &params)?;
    let vcpus = cfg.vcpus as u8;
    mem.write_slice(&mptable::build(vcpus)?, GuestAddress(arch::EBDA_START))
        .map_err(|e| VmmError::Devices(format!("writing the MP table: {e}")))?;

    // Devices.
    let (exit_tx, exit_rx) = mpsc::channel::<VmExit>();
    let panic_note = PanicNote::default();
    let marks = Arc::new(Mutex::new(Vec::new()));
    let out: Option<Box<dyn Write + Send>> = match &cfg.serial {
        SerialOutput::Stdout => Some(Box::new(std::io::stdout())),
        SerialOutput::None => None,
        SerialOutput::File(p) => {
            Some(Box::new(File::create(p).map_err(|e| {
                VmmError::Devices(format!("--serial {}: {e}", p.display()))
            })?))
        }
    };
    let serial_irq =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::Devices(format!("eventfd: {e}")))?;
    vm.fd()
        .register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(|e| VmmError::Devices(format!("serial irqfd: {e}")))?;
    let serial = Arc::new(Mutex::new(Serial::new(out, serial_irq, panic_note.clone())));
    let mut pio = Bus::new();
    let dev_err = |e: crate::devices::bus::BusError| VmmError::Devices(e.to_string());
    pio.insert(serial.clone(), COM1_BASE, 8).map_err(dev_err)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(exit_tx.clone()))),
        I8042_DATA,
        I8042_COMMAND - I8042_DATA + 1,
    )
    .map_err(dev_err)?;
    pio.insert(
        Arc::new(Mutex::new(BootTimer::new(
            start,
            cfg.boot_timer,
            marks.clone(),
        ))),
        BOOT_TIMER_PORT,
        1,
    )
    .map_err(dev_err)?;

    // vCPUs.
    let base_cpuid = vm.supported_cpuid()?;
    let mut threads = Vec::new();
    for id in 0..vcpus {
        let fd = vm.create_vcpu(id)?;
        let mut cpuid = base_cpuid.clone();
        cpuid::normalize(cpuid.as_mut_slice(), id, vcpus);
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VmmError::Devices(format!("setting CPUID of vCPU {id}: {e}")))?;
        regs::setup(&fd, entry, id == 0)?;
        threads.push((id, fd));
    }
    log::debug!("VM built in {:?}", start.elapsed());
    for (id, fd) in threads {
        let (pio, mmio, tx) = (pio.clone(), mmio.clone(), exit_tx.clone());
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vcpu::run(fd, id, pio, mmio, tx))
            .map_err(|e| VmmError::Devices(format!("starting vCPU thread: {e}")))?;
    }
    drop(exit_tx);

    let exit = exit_rx
        .recv()
        .unwrap_or_else(|_| VmExit::Error("every vCPU stopped".into()));
    serial.lock().unwrap_or_else(|p| p.into_inner()).flush();
    let panicked = panic_note.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Keep guest memory alive until here: vCPUs may still be running.
    let boot_marks = marks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    std::mem::forget(mem);
    match (exit, panicked) {
        (_, Some(line)) => Err(VmmError::GuestPanic(line)),
        (VmExit::Reset, None) => Ok(VmOutcome { boot_marks }),
        (VmExit::Error(msg), None) => Err(VmmError::Guest(msg)),
    }
}

/// Creates the virtio devices the configuration asks for and wires them
/// in; returns their kernel command line entries.
fn attach_virtio(
    cfg: &VmConfig,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
) -> Result<Vec<String>, VmmError> {
    if cfg.disks.is_empty() && !cfg.rng && cfg.vsock.is_none() && cfg.nets.is_empty() {
        return Ok(Vec::new());
    }
    let event_loop = EventLoop::start()
        .map_err(|e| VmmError::Devices(format!("starting the virtio event loop: {e}")))?;
    let mut dm = DeviceManager::new(mem.clone(), event_loop.clone());
    let mut add = |dev: Arc<Mutex<dyn VirtioDevice>>| {
        dm.add(vm.fd(), mmio, dev)
            .map_err(|e| VmmError::Devices(e.to_string()))
    };
    for d in &cfg.disks {
        let disk = Block::open(&d.path, d.read_only, d.id.as_deref())
            .map_err(|e| VmmError::Devices(e.to_string()))?;
        add(Arc::new(Mutex::new(disk)))?;
    }
    if cfg.rng {
        add(Arc::new(Mutex::new(Rng::new())))?;
    }
    if let Some(v) = &cfg.vsock {
        let dev = Vsock::new(v.cid, &v.uds, event_loop.clone())
            .map_err(|e| VmmError::Devices(e.to_string()))?;
        add(Arc::new(Mutex::new(dev)))?;
    }
    for n in &cfg.nets {
        let dev = Net::from_config(n).map_err(|e| VmmError::Devices(e.to_string()))?;
        add(Arc::new(Mutex::new(dev)))?;
    }
    Ok(dm.cmdline_entries().to_vec())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
