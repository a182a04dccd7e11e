//! What kind of `/dev/kvm` this host offers, without creating a VM.
//!
//! Hardware KVM (kvm_intel / kvm_amd) runs a stock Linux guest at native speed.
//! PVM (kvm_pvm, "pagetable-based virtual machine") runs only PVM-enlightened
//! guest kernels; anything else goes through KVM's instruction emulator and a
//! stock kernel cannot boot. hull needs to tell these apart before it boots.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;

/// The kind of KVM device found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware-assisted KVM; `vendor` is `intel` or `amd`.
    Hardware { vendor: String },
    /// PVM: only PVM-enabled guest kernels run at native speed.
    Pvm,
    /// No `/dev/kvm` at all.
    Missing,
    /// `/dev/kvm` exists but cannot be used (permissions, unknown module, ...).
    Unusable(String),
}

impl KvmKind {
    /// Whether a stock Linux guest (hull's guest kernel) can run on it.
    pub fn runs_stock_guest(&self) -> bool {
        matches!(self, KvmKind::Hardware { .. })
    }
}

impl fmt::Display for KvmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmKind::Hardware { vendor } => write!(f, "hardware ({vendor})"),
            KvmKind::Pvm => f.write_str("PVM"),
            KvmKind::Missing => f.write_str("missing"),
            KvmKind::Unusable(why) => write!(f, "unusable: {why}"),
        }
    }
}

/// Inspects the host: `/dev/kvm` and the KVM modules under `/sys/module`.
pub fn detect_kvm_kind() -> KvmKind {
    detect_in(Path::new("/"))
}

/// Same as [`detect_kvm_kind`] with every path taken relative to `root`.
fn detect_in(root: &Path) -> KvmKind {
    let dev = root.join("dev/kvm");
    if !dev.exists() {
        return KvmKind::Missing;
    }
    let module = |name: &str| root.join("sys/module").join(name).exists();
    let kind = if module("kvm_pvm") {
        KvmKind::Pvm
    } else if module("kvm_intel") {
        KvmKind::Hardware {
            vendor: "intel".into(),
        }
    } else if module("kvm_amd") {
        KvmKind::Hardware {
            vendor: "amd".into(),
        }
    } else {
        return KvmKind::Unusable("no kvm_intel, kvm_amd or kvm_pvm module is loaded".to_string());
    };
    match OpenOptions::new().read(true).write(true).open(&dev) {
        Ok(_) => kind,
        Err(e) => KvmKind::Unusable(format!("cannot open {}: {e}", dev.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake_root(modules: &[&str], with_dev: bool) -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        for m in modules {
            fs::create_dir_all(dir.path().join("sys/module").join(m)).unwrap();
        }
        if with_dev {
            fs::create_dir_all(dir.path().join("dev")).unwrap();
            fs::write(dir.path().join("dev/kvm"), b"").unwrap();
        }
        dir
    }

    #[test]
    fn missing_device() {
        let root = fake_root(&["kvm", "kvm_intel"], false);
        assert_eq!(detect_in(root.path()), KvmKind::Missing);
    }

    #[test]
    fn pvm_wins_over_vendor_modules() {
        let root = fake_root(&["kvm", "kvm_pvm", "kvm_intel"], true);
        assert_eq!(detect_in(root.path()), KvmKind::Pvm);
        assert!(!KvmKind::Pvm.runs_stock_guest());
    }

    #[test]
    fn hardware_amd() {
        let root = fake_root(&["kvm", "kvm_amd"], true);
        let kind = detect_in(root.path());
        assert_eq!(
            kind,
            KvmKind::Hardware {
                vendor: "amd".into()
            }
        );
        assert!(kind.runs_stock_guest());
    }

    #[test]
    fn unknown_module_is_unusable() {
        let root = fake_root(&["kvm"], true);
        assert!(matches!(detect_in(root.path()), KvmKind::Unusable(_)));
    }

    /// A minimal self-removing temporary directory (no extra dependency).
    mod tempdir {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicUsize, Ordering};

        pub struct Dir(PathBuf);
        static NEXT: AtomicUsize = AtomicUsize::new(0);

        impl Dir {
            pub fn new() -> Self {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("hull-kvm-detect-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
