//! `hull-vmm`: runs one microVM.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use hull_vmm::config::{DiskConfig, NetConfig, SerialOutput, VmConfig, VsockConfig};

/// Boot a Linux guest (an uncompressed ELF vmlinux) in a KVM microVM.
///
/// Exit status: 0 when the guest reboots (how a hull guest ends), 1 for a bad
/// configuration or host problem, 2 when the guest fails (triple fault, KVM
/// error), 3 when the guest kernel panics.
#[derive(Debug, Parser)]
#[command(name = "hull-vmm", version)]
struct Args {
    /// JSON file with the same fields as the flags (kernel, initrd, cmdline,
    /// vcpus, mem_mib, serial, boot_timer); flags given too override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Uncompressed ELF vmlinux.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Appended to hull's default kernel command line.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs (1-32).
    #[arg(long, value_name = "N")]
    vcpus: Option<u32>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB")]
    mem: Option<u64>,
    /// Where the serial console goes: stdout, none, or a file.
    #[arg(long, value_name = "stdout|none|FILE")]
    serial: Option<String>,
    /// Print each boot-timer mark the guest writes to stderr.
    #[arg(long)]
    boot_timer: bool,
    /// A virtio-blk disk backed by a raw file; repeatable (up to 16).
    #[arg(long = "disk", value_name = "PATH[,ro][,id=NAME]")]
    disks: Vec<DiskConfig>,
    /// A virtio-net device on a tap, by name (opened here: needs
    /// CAP_NET_ADMIN where the tap lives) or an inherited fd of a tap opened
    /// with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR; the guest sees MAC if given.
    /// Repeatable: eth0, eth1, ...
    #[arg(long = "net", value_name = "tap=NAME|fd=N[,mac=MAC]")]
    nets: Vec<NetConfig>,
    /// Attach a virtio-rng device (the guest's /dev/hwrng).
    #[arg(long)]
    rng: bool,
    /// Back guest RAM with 4 KiB pages only. By default it is laid out for
    /// (and advised to use) transparent huge pages: guest memory access is
    /// much faster, at a few MiB more host memory per VM.
    #[arg(long)]
    no_huge_pages: bool,
    /// The guest's vsock CID (3 or more); needs --vsock-uds.
    #[arg(long, value_name = "N", requires = "vsock_uds")]
    vsock_cid: Option<u64>,
    /// Host side of the vsock device: connect here and write "CONNECT <port>\n"
    /// to reach a guest listener; guest connections to host port P go to PATH_P.
    #[arg(long, value_name = "PATH", requires = "vsock_cid")]
    vsock_uds: Option<PathBuf>,
}

fn config(args: Args) -> Result<VmConfig, hull_vmm::config::ConfigError> {
    let mut cfg = match &args.config {
        Some(path) => VmConfig::from_file(path)?,
        None => VmConfig::new(args.kernel.clone().unwrap_or_default()),
    };
    if let Some(k) = args.kernel {
        cfg.kernel = k;
    }
    if args.initrd.is_some() {
        cfg.initrd = args.initrd;
    }
    if let Some(c) = args.cmdline {
        cfg.cmdline = c;
    }
    if let Some(n) = args.vcpus {
        cfg.vcpus = n;
    }
    if let Some(m) = args.mem {
        cfg.mem_mib = m;
    }
    if let Some(s) = args.serial {
        cfg.serial = SerialOutput::try_from(s)?;
    }
    cfg.boot_timer |= args.boot_timer;
    cfg.disks.extend(args.disks);
    cfg.nets.extend(args.nets);
    cfg.rng |= args.rng;
    cfg.huge_pages &= !args.no_huge_pages;
    if let (Some(cid), Some(uds)) = (args.vsock_cid, args.vsock_uds) {
        cfg.vsock = Some(VsockConfig { cid, uds });
    }
    Ok(cfg)
}

fn main() {
    let start = Instant::now();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cfg = match config(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hull-vmm: {e}");
            std::process::exit(1);
        }
    };
    match hull_vmm::vmm::run(&cfg, start) {
        Ok(outcome) => {
            log::info!(
                "guest rebooted after {:?}; boot-timer marks: {:?}",
                start.elapsed(),
                outcome.boot_marks
            );
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("hull-vmm: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
