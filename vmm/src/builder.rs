//! [`Vmm::build`]: everything a VM is made of, from a [`VmConfig`], before
//! any guest code runs.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{self, KernelLoader, elf::Elf, load_cmdline};
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
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::MmioTransportState;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::kvm::pause::Pause;
use crate::kvm::vm::Vm;
use crate::kvm::{KvmKind, detect_kvm_kind};
use crate::snapshot::origin::{FileId, host_cpu};
use crate::snapshot::vcpu_state::readable_msrs;
use crate::snapshot::{Origin, SNAPSHOT_LINE};
use crate::vmm::{SnapshotPlan, Vcpu, Vmm, VmmError};

/// Marker a PVM-enabled guest kernel carries (the PVM guest entry code).
const PVM_GUEST_MARKER: &[u8] = b"pvm_early_setup";

impl Vmm {
    /// Builds the VM `config` describes; boot-timer marks count from now.
    pub fn build(config: VmConfig) -> Result<Vmm, VmmError> {
        Vmm::build_since(config, Instant::now())
    }

    /// Builds the VM `config` describes; boot-timer marks count from
    /// `start` (hull-vmm passes the moment it started).
    pub fn build_since(cfg: VmConfig, start: Instant) -> Result<Vmm, VmmError> {
        cfg.validate()?;
        // The kernel and initrd are read from their files straight into
        // guest memory: only the vmlinux's loadable segments (about 11 of
        // its 19 MB here, the rest is symbols), and each byte copied once
        // (a first copy into a buffer cost ~0.3 s of a cold boot in the
        // emulated KVM host, where memory copies are slow).
        let mut kernel_file = open_kernel(&cfg.kernel)?;
        // A PVM host boots only a PVM-enabled kernel: there the file is
        // read whole once, searched for the marker and loaded from that copy.
        let pvm_kernel = if detect_kvm_kind() == KvmKind::Pvm {
            Some(read_pvm_kernel(&cfg.kernel, &mut kernel_file)?)
        } else {
            None
        };
        let mut initrd = match &cfg.initrd {
            Some(p) => Some(Initrd::open(p)?),
            None => None,
        };

        let ram = arch::ram_ranges(cfg.mem_mib << 20);
        let mem = guest_memory(&ram, cfg.mem_mib, cfg.huge_pages)?;
        log::debug!("guest memory mapped at {:?}", start.elapsed());
        // The kernel goes in before /dev/kvm is opened: a file that is not
        // a vmlinux is refused without touching KVM.
        let kernel = match pvm_kernel {
            Some(bytes) => load_kernel(&mem, &cfg.kernel, &mut std::io::Cursor::new(bytes))?,
            None => load_kernel(&mem, &cfg.kernel, &mut kernel_file)?,
        };
        drop(kernel_file);
        let entry = kernel.entry;
        log::debug!("kernel loaded at {:?}", start.elapsed());

        let vm = Vm::new()?;
        vm.set_memory(&mem)?;
        let mut mmio = Bus::new();
        let (exit_tx, exit_rx) = mpsc::channel::<VmExit>();
        let devices = attach_virtio(&cfg, &vm, &mem, &mut mmio, &exit_tx, None)?;
        let virtio_cmdline = devices
            .as_ref()
            .map(|dm| dm.cmdline_entries().to_vec())
            .unwrap_or_default();

        let initrd_loc = match initrd.as_mut() {
            Some(initrd) => {
                let addr = boot::initrd_addr(&ram, kernel.end, initrd.size)?;
                initrd.load(&mem, addr)?;
                Some((addr, initrd.size))
            }
            None => None,
        };
        drop(initrd);
        log::debug!(
            "VM and devices made, initrd loaded at {:?}",
            start.elapsed()
        );

        let cmdline_len = write_cmdline(&mem, &virtio_cmdline, &cfg.full_cmdline())?;
        let params = boot::boot_params_for(&ram, cmdline_len, initrd_loc)?;
        boot::write_boot_structures(&mem, &params)?;
        // validate() keeps vcpus within 1..=MAX_VCPUS, which fits in a u8.
        let vcpu_count =
            u8::try_from(cfg.vcpus).map_err(|_| crate::config::ConfigError::Vcpus(cfg.vcpus))?;
        mem.write_slice(&mptable::build(vcpu_count)?, GuestAddress(arch::EBDA_START))
            .map_err(|source| VmmError::GuestMemoryWrite {
                what: "the MP table",
                source,
            })?;

        // Legacy devices on the I/O port bus.
        let plan = match &cfg.snapshot_at_ready {
            Some(dir) => Some(SnapshotPlan {
                dir: dir.clone(),
                origin: origin_of(&cfg)?,
                pause: Arc::new(Pause::new()),
                msrs: Vec::new(),
            }),
            None => None,
        };
        let legacy = legacy_devices(&cfg, &vm, &exit_tx, start, plan.as_ref())?;

        let vcpus = create_vcpus(&vm, vcpu_count, entry)?;
        let plan = match plan {
            Some(mut p) => {
                p.msrs = readable_msrs(&vcpus[0].fd, &vm.msr_index_list()?);
                Some(p)
            }
            None => None,
        };
        log::debug!("VM built in {:?}", start.elapsed());
        let core = Core {
            vm,
            mem,
            vcpus,
            mmio,
            devices,
            exit: (exit_tx, exit_rx),
        };
        Ok(Vmm::assemble(core, legacy, plan))
    }

    /// The VM of `core` and `legacy` (built or restored), with the
    /// snapshot to take at the agent's ready line, if any.
    pub(crate) fn assemble(core: Core, legacy: Legacy, snapshot: Option<SnapshotPlan>) -> Vmm {
        let (exit_tx, exit_rx) = core.exit;
        Vmm {
            vm: core.vm,
            mem: core.mem,
            vcpus: core.vcpus,
            pio: legacy.pio,
            mmio: core.mmio,
            devices: core.devices,
            serial: legacy.serial,
            panic_note: legacy.panic_note,
            boot_marks: legacy.boot_marks,
            exit_tx,
            exit_rx,
            snapshot,
        }
    }
}

/// A VM, its memory, vCPUs and virtio devices, and the channel its
/// threads report exits on: what building and restoring both make.
pub(crate) struct Core {
    pub(crate) vm: Vm,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) mmio: Bus,
    pub(crate) devices: Option<DeviceManager>,
    pub(crate) exit: (mpsc::Sender<VmExit>, mpsc::Receiver<VmExit>),
}

/// The legacy devices on the I/O port bus, and what the VMM keeps of them.
pub(crate) struct Legacy {
    pub(crate) pio: Bus,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) panic_note: PanicNote,
    pub(crate) boot_marks: Arc<Mutex<Vec<BootMark>>>,
}

/// The serial port, the i8042 (reset) and the boot timer; the serial port
/// pauses the VM at the agent's ready line when `plan` asks for a snapshot.
pub(crate) fn legacy_devices(
    cfg: &VmConfig,
    vm: &Vm,
    exit_tx: &mpsc::Sender<VmExit>,
    start: Instant,
    plan: Option<&SnapshotPlan>,
) -> Result<Legacy, VmmError> {
    let panic_note = PanicNote::default();
    let boot_marks = Arc::new(Mutex::new(Vec::new()));
    let serial = Arc::new(Mutex::new(Serial::new(
        serial_output(&cfg.serial)?,
        serial_irq(vm)?,
        panic_note.clone(),
    )));
    let mut pio = Bus::new();
    pio.insert(serial.clone(), COM1_BASE, 8)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(exit_tx.clone()))),
        I8042_DATA,
        I8042_COMMAND - I8042_DATA + 1,
    )?;
    let timer = BootTimer::new(start, cfg.boot_timer, boot_marks.clone());
    pio.insert(Arc::new(Mutex::new(timer)), BOOT_TIMER_PORT, 1)?;
    if let Some(plan) = plan {
        let pause = plan.pause.clone();
        serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pause_at_line(SNAPSHOT_LINE, Arc::new(move || pause.request()));
    }
    Ok(Legacy {
        pio,
        serial,
        panic_note,
        boot_marks,
    })
}

/// What the snapshot will say it was made from.
fn origin_of(cfg: &VmConfig) -> Result<Origin, VmmError> {
    let id = |path: &Path| {
        FileId::of(path).map_err(|source| VmmError::KernelFile {
            path: path.to_path_buf(),
            source,
        })
    };
    Ok(Origin {
        kernel: id(&cfg.kernel)?,
        initrd: cfg.initrd.as_deref().map(id).transpose()?,
        cpu: host_cpu(),
        vcpus: cfg.vcpus,
        mem_mib: cfg.mem_mib,
    })
}

/// `count` vCPUs, set up to enter the kernel at `entry`; they run in
/// [`Vmm::run`].
fn create_vcpus(vm: &Vm, count: u8, entry: u64) -> Result<Vec<Vcpu>, VmmError> {
    let base_cpuid = vm.supported_cpuid()?;
    let tsc_deadline = vm.has_tsc_deadline_timer();
    let mut vcpus = Vec::with_capacity(usize::from(count));
    for id in 0..count {
        let fd = vm.create_vcpu(id)?;
        let mut cpuid = base_cpuid.clone();
        cpuid::normalize(cpuid.as_mut_slice(), id, count, tsc_deadline);
        fd.set_cpuid2(&cpuid)
            .map_err(|source| VmmError::Cpuid { id, source })?;
        regs::setup(&fd, entry, id == 0)?;
        vcpus.push(Vcpu { id, fd });
    }
    Ok(vcpus)
}

fn open_kernel(path: &Path) -> Result<File, VmmError> {
    File::open(path).map_err(|source| VmmError::KernelFile {
        path: path.to_path_buf(),
        source,
    })
}

/// The whole kernel at `path` (open as `file`), if it carries the PVM
/// guest entry code: only on PVM hosts, where a stock kernel cannot boot.
/// The marker is a symbol name, outside the loadable segments, so the
/// whole file is read.
fn read_pvm_kernel(path: &Path, file: &mut File) -> Result<Vec<u8>, VmmError> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(file, &mut bytes).map_err(|source| VmmError::KernelFile {
        path: path.to_path_buf(),
        source,
    })?;
    if !contains(&bytes, PVM_GUEST_MARKER) {
        return Err(VmmError::PvmHost);
    }
    Ok(bytes)
}

/// An initrd file, opened and sized before guest memory is laid out.
#[derive(Debug)]
struct Initrd {
    path: std::path::PathBuf,
    file: File,
    size: u64,
}

impl Initrd {
    fn open(path: &Path) -> Result<Initrd, VmmError> {
        let err = |source| VmmError::InitrdFile {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok(Initrd {
            path: path.to_path_buf(),
            file,
            size,
        })
    }

    /// Reads the whole file into guest memory at `addr`.
    fn load(&mut self, mem: &GuestMemoryMmap, addr: u64) -> Result<(), VmmError> {
        let len = usize::try_from(self.size).map_err(|_| VmmError::InitrdFile {
            path: self.path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::FileTooLarge),
        })?;
        mem.read_exact_volatile_from(GuestAddress(addr), &mut self.file, len)
            .map_err(|source| VmmError::GuestMemoryWrite {
                what: "the initrd",
                source,
            })
    }
}

fn guest_memory(ram: &[(u64, u64)], mib: u64, huge: bool) -> Result<GuestMemoryMmap, VmmError> {
    let memory_err = |source| VmmError::Memory { mib, source };
    let ranges = ram
        .iter()
        .map(|&(start, len)| {
            let len = usize::try_from(len)
                .map_err(|_| memory_err(crate::kvm::memory::MemoryError::TooLarge(start)))?;
            Ok((GuestAddress(start), len))
        })
        .collect::<Result<Vec<_>, VmmError>>()?;
    crate::kvm::memory::guest_memory(&ranges, huge).map_err(memory_err)
}

/// Where the kernel landed.
#[derive(Debug)]
struct LoadedKernel {
    /// Its 64-bit entry point.
    entry: u64,
    /// The first guest address after it.
    end: u64,
}

/// Loads the ELF vmlinux `image` at the addresses its headers give,
/// reading only its headers and loadable segments.
fn load_kernel<F>(
    mem: &GuestMemoryMmap,
    path: &Path,
    image: &mut F,
) -> Result<LoadedKernel, VmmError>
where
    F: std::io::Read + std::io::Seek + vm_memory::ReadVolatile,
{
    let loaded = Elf::load(mem, None, image, Some(GuestAddress(arch::HIMEM_START))).map_err(
        |e| match e {
            loader::Error::Elf(source) => VmmError::NotElf {
                path: path.to_path_buf(),
                source,
            },
            source => VmmError::KernelLoad {
                path: path.to_path_buf(),
                source,
            },
        },
    )?;
    Ok(LoadedKernel {
        entry: loaded.kernel_load.0,
        end: loaded.kernel_end,
    })
}

/// Writes the kernel command line (device entries first, then `rest`);
/// returns its length with the terminating NUL.
fn write_cmdline(mem: &GuestMemoryMmap, devices: &[String], rest: &str) -> Result<usize, VmmError> {
    let mut cmdline = Cmdline::new(arch::CMDLINE_MAX)?;
    for part in devices.iter().map(String::as_str).chain([rest]) {
        cmdline.insert_str(part)?;
    }
    load_cmdline(mem, GuestAddress(arch::CMDLINE_ADDR), &cmdline).map_err(VmmError::CmdlineLoad)?;
    Ok(cmdline.as_cstring()?.as_bytes_with_nul().len())
}

pub(crate) fn serial_output(
    serial: &SerialOutput,
) -> Result<Option<Box<dyn Write + Send>>, VmmError> {
    Ok(match serial {
        SerialOutput::Stdout => Some(Box::new(std::io::stdout())),
        SerialOutput::None => None,
        SerialOutput::File(path) => Some(Box::new(File::create(path).map_err(|source| {
            VmmError::Serial {
                path: path.clone(),
                source,
            }
        })?)),
    })
}

/// The serial port's interrupt: an eventfd wired to COM1's IRQ.
pub(crate) fn serial_irq(vm: &Vm) -> Result<EventFd, VmmError> {
    let irq =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::EventFd("the serial port", e))?;
    vm.fd()
        .register_irqfd(&irq, COM1_IRQ)
        .map_err(|e| VmmError::Irqfd("the serial port", e))?;
    Ok(irq)
}

/// Creates the virtio devices the configuration asks for and wires them
/// in; None when it asks for none (then no event loop runs either). With
/// `saved`, each device carries on from its saved state instead (the
/// configuration must name the same devices in the same order).
pub(crate) fn attach_virtio(
    cfg: &VmConfig,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    exit: &mpsc::Sender<VmExit>,
    saved: Option<&[MmioTransportState]>,
) -> Result<Option<DeviceManager>, VmmError> {
    let count = cfg.block_devices()
        + usize::from(cfg.rng)
        + usize::from(cfg.vsock.is_some())
        + cfg.nets.len()
        + cfg.fs_devices();
    if let Some(saved) = saved.filter(|s| s.len() != count) {
        return Err(VmmError::DeviceCount {
            saved: saved.len(),
            configured: count,
        });
    }
    if count == 0 {
        return Ok(None);
    }
    // A panic on the device thread ends the VM ("device thread panicked: ...").
    let exit = exit.clone();
    let on_panic = move |msg: String| {
        let _ = exit.send(VmExit::Error(msg));
    };
    let event_loop = EventLoop::start(on_panic).map_err(VmmError::EventLoop)?;
    let mut dm = DeviceManager::new(mem.clone(), event_loop.clone());
    let mut states = saved.unwrap_or_default().iter();
    let mut add = |dev: Arc<Mutex<dyn VirtioDevice>>| match states.next() {
        Some(state) => dm.restore(vm.fd(), mmio, dev, state),
        None => dm.add(vm.fd(), mmio, dev),
    };
    for d in &cfg.disks {
        let disk = Block::open(&d.path, d.read_only, d.id.as_deref())?;
        add(Arc::new(Mutex::new(disk)))?;
    }
    for _ in cfg.disks.len()..cfg.disk_slots {
        add(Arc::new(Mutex::new(Block::empty()?)))?;
    }
    if cfg.rng {
        add(Arc::new(Mutex::new(Rng::new())))?;
    }
    if let Some(v) = &cfg.vsock {
        let dev = Vsock::new(v.cid, &v.uds)?;
        add(Arc::new(Mutex::new(dev)))?;
    }
    for n in &cfg.nets {
        add(Arc::new(Mutex::new(Net::from_config(n)?)))?;
    }
    for (i, slot) in (0..cfg.fs_devices()).zip(DAX_FIRST_SLOT..) {
        let dev = match cfg.fs.get(i) {
            Some(f) => Fs::new(&f.tag, &f.path, f.read_only, &event_loop)?.with_cache(f.cache),
            None => Fs::empty(&crate::config::fs_slot_tag(i), &event_loop)?,
        };
        let dev = match dax_window(cfg, vm, i, slot)? {
            Some(w) => dev.with_window(w),
            None => dev,
        };
        add(Arc::new(Mutex::new(dev)))?;
    }
    Ok(Some(dm))
}

/// First KVM memory slot of the DAX windows (guest RAM takes the first ones).
const DAX_FIRST_SLOT: u32 = 16;

/// The DAX window of fs device `index`, when the configuration asks for
/// windows: reserved on the host and given to the guest as memory slot
/// `slot`.
/// Its place depends only on the memory size and the index, so a restore
/// puts it where the template's guest found it.
fn dax_window(
    cfg: &VmConfig,
    vm: &Vm,
    index: usize,
    slot: u32,
) -> Result<Option<Arc<crate::devices::virtio::fs::dax::DaxWindow>>, VmmError> {
    if cfg.fs_dax_mib == 0 {
        return Ok(None);
    }
    let len = cfg.fs_dax_mib << 20;
    let gpa = arch::dax_windows_start(cfg.mem_mib << 20) + index as u64 * len;
    let w = crate::devices::virtio::fs::dax::DaxWindow::new(gpa, len)
        .map_err(crate::devices::virtio::fs::FsError::from)?;
    vm.add_window(slot, gpa, w.host_addr(), len)?;
    Ok(Some(Arc::new(w)))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    /// Every message of the chain, outermost first.
    fn chain(e: &dyn Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut cur = e.source();
        while let Some(s) = cur {
            out.push(s.to_string());
            cur = s.source();
        }
        out
    }

    /// No message in the chain contains the next one: each cause is shown
    /// once, by itself.
    fn assert_no_repeated_cause(e: &dyn Error) {
        let c = chain(e);
        for pair in c.windows(2) {
            assert!(
                !pair[0].contains(pair[1].as_str()),
                "{:?} repeats its cause {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn a_missing_kernel_names_the_file_and_the_cause_once() {
        let e = open_kernel(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(e, VmmError::KernelFile { .. }), "{e:?}");
        assert_no_repeated_cause(&e);
        let c = chain(&e);
        assert_eq!(c[0], "cannot read the kernel /nonexistent/vmlinux");
        assert!(c[1].contains("No such file"), "{c:?}");
    }

    #[test]
    fn a_kernel_that_is_not_elf_is_refused_with_the_reason_once() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut image = std::io::Cursor::new(vec![0x4d; 4096]);
        let e = load_kernel(&mem, Path::new("/k/bzImage"), &mut image).unwrap_err();
        assert!(matches!(e, VmmError::NotElf { .. }), "{e:?}");
        assert_no_repeated_cause(&e);
        let c = chain(&e);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].starts_with("/k/bzImage is not a bootable ELF vmlinux"));
        assert!(c[1].contains("Invalid Elf magic"), "{c:?}");
    }

    #[test]
    fn the_initrd_arrives_whole_at_its_address() {
        let dir = std::env::temp_dir().join(format!("hull-initrd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("initrd");
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut initrd = Initrd::open(&path).unwrap();
        assert_eq!(initrd.size, content.len() as u64);
        initrd.load(&mem, 0x10_0000).unwrap();
        let mut back = vec![0u8; content.len()];
        mem.read_slice(&mut back, GuestAddress(0x10_0000)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(back == content, "initrd bytes differ in guest memory");
        let e = Initrd::open(&dir.join("missing")).unwrap_err();
        assert!(matches!(e, VmmError::InitrdFile { .. }), "{e:?}");
        assert_no_repeated_cause(&e);
    }

    #[test]
    fn a_command_line_that_is_too_long_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let len = write_cmdline(
            &mem,
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
            "quiet",
        )
        .unwrap();
        assert_eq!(len, "virtio_mmio.device=4K@0xd0000000:5 quiet".len() + 1);
        let e = write_cmdline(&mem, &[], &"x".repeat(arch::CMDLINE_MAX + 1)).unwrap_err();
        assert!(matches!(e, VmmError::Cmdline(_)), "{e:?}");
        assert_no_repeated_cause(&e);
    }
}
