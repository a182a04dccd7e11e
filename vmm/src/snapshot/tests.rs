use super::origin::FileId;
use super::*;

fn file_id() -> FileId {
    FileId {
        sha256: "00".repeat(32),
        size: 1,
        ino: 1,
        mtime_ns: 1,
    }
}

fn vcpu(id: u8) -> VcpuState {
    VcpuState {
        id,
        cpuid: Vec::new(),
        mp_state: Default::default(),
        regs: Default::default(),
        sregs: Default::default(),
        xsave: Default::default(),
        xcrs: Default::default(),
        debug_regs: Default::default(),
        lapic: Default::default(),
        msrs: Vec::new(),
        events: Default::default(),
    }
}

/// A state as a 2-vCPU, 128 MiB VM on this host would save it.
fn state() -> SnapshotState {
    let memory = crate::arch::x86_64::ram_ranges(128 << 20)
        .iter()
        .scan(0, |offset, &(gpa, len)| {
            let r = MemoryRange {
                gpa,
                len,
                offset: *offset,
            };
            *offset += len;
            Some(r)
        })
        .collect();
    SnapshotState {
        origin: Origin {
            kernel: file_id(),
            initrd: None,
            cpu: origin::host_cpu(),
            vcpus: 2,
            mem_mib: 128,
        },
        memory,
        data: vec![(0, 4096), (1 << 20, 8192)],
        vm: VmState {
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
            pit: Default::default(),
            clock: Default::default(),
        },
        vcpus: vec![vcpu(0), vcpu(1)],
        serial: SerialState {
            ier: 2,
            fcr: 1,
            lcr: 3,
            mcr: 8,
            scr: 0,
            dll: 12,
            dlm: 0,
            thr_interrupt: true,
        },
        devices: Vec::new(),
    }
}

/// Writes `state` and a memory file of `mem_len` bytes into a fresh dir.
fn written(state: &SnapshotState, mem_len: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_state(state, &dir.path().join(STATE_FILE)).unwrap();
    let mem = File::create(dir.path().join(MEMORY_FILE)).unwrap();
    mem.set_len(mem_len).unwrap();
    dir
}

fn full_len(s: &SnapshotState) -> u64 {
    s.memory.iter().map(|r| r.len).sum()
}

#[test]
fn a_written_snapshot_opens_with_its_state_intact() {
    let s = state();
    let dir = written(&s, full_len(&s));
    let snap = Snapshot::open(dir.path(), &Expected::default()).unwrap();
    assert_eq!(snap.state.vcpus.len(), 2);
    assert_eq!(snap.state.serial, s.serial);
    assert_eq!(snap.state.memory, s.memory);
    let exact = Expected {
        vcpus: Some(2),
        mem_mib: Some(128),
        ..Default::default()
    };
    assert!(Snapshot::open(dir.path(), &exact).is_ok());
}

#[test]
fn a_flipped_byte_is_refused_as_corrupted() {
    let s = state();
    let dir = written(&s, full_len(&s));
    let path = dir.path().join(STATE_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() - 10;
    bytes[i] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    let e = Snapshot::open(dir.path(), &Expected::default())
        .err()
        .unwrap();
    assert!(matches!(e, SnapshotError::Checksum(_)), "{e:?}");
    assert!(
        e.to_string()
            .ends_with("is corrupted (its state does not match its checksum)")
    );
}

#[test]
fn a_truncated_memory_file_is_refused() {
    let s = state();
    let dir = written(&s, full_len(&s) - 4096);
    let e = Snapshot::open(dir.path(), &Expected::default())
        .err()
        .unwrap();
    assert!(matches!(e, SnapshotError::MemorySize { .. }), "{e:?}");
    assert!(e.to_string().contains("(truncated?)"), "{e}");
}

#[test]
fn another_version_or_no_header_is_refused() {
    let p = Path::new("/s/state");
    let e = parse_state(p, b"hull-snapshot 9 sha256=00\n{}").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("snapshot /s/state has format version 9, this hull-vmm reads {SNAPSHOT_VERSION}")
    );
    let e = parse_state(p, b"{\"origin\": 1}").unwrap_err();
    assert_eq!(e.to_string(), "/s/state is not a hull snapshot state file");
    let e = parse_state(p, &[0xff; 64]).unwrap_err();
    assert!(matches!(e, SnapshotError::NotSnapshot(_)), "{e:?}");
}

#[test]
fn a_state_cut_short_or_with_bytes_after_it_is_unreadable_in_one_line() {
    let s = state();
    let dir = written(&s, full_len(&s));
    let bytes = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
    let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
    let body = &bytes[nl + 1..];
    let p = Path::new("/s/state");
    // A header whose checksum matches a body that is not a whole state
    // (as a hand-made or half-written file would be): refused, not read.
    for cut in [&body[..body.len() / 2], &[body, &[0u8; 3][..]].concat()[..]] {
        let mut f = format!(
            "hull-snapshot {SNAPSHOT_VERSION} sha256={}\n",
            hex(&Sha256::digest(cut))
        )
        .into_bytes();
        f.extend_from_slice(cut);
        let e = parse_state(p, &f).unwrap_err();
        assert!(matches!(e, SnapshotError::Parse { .. }), "{e:?}");
        assert_eq!(e.to_string(), "snapshot /s/state has an unreadable state");
    }
}

#[test]
fn another_memory_size_vcpu_count_kernel_or_cpu_is_refused() {
    let s = state();
    let dir = written(&s, full_len(&s));
    let open = |e: Expected| {
        Snapshot::open(dir.path(), &e)
            .err()
            .expect("refused")
            .to_string()
    };
    let mem = open(Expected {
        mem_mib: Some(256),
        ..Default::default()
    });
    assert!(
        mem.ends_with("was made with 128 MiB of memory, not 256"),
        "{mem}"
    );
    let cpus = open(Expected {
        vcpus: Some(1),
        ..Default::default()
    });
    assert!(cpus.ends_with("was made with 2 vCPUs, not 1"), "{cpus}");
    let other = dir.path().join("vmlinux");
    std::fs::write(&other, b"another kernel").unwrap();
    let kernel = open(Expected {
        kernel: Some(other.clone()),
        ..Default::default()
    });
    assert!(
        kernel.contains("was made from another kernel than"),
        "{kernel}"
    );

    let mut elsewhere = state();
    elsewhere.origin.cpu = "GenuineIntel 0x906ea Some Other CPU".into();
    let dir = written(&elsewhere, full_len(&elsewhere));
    let e = Snapshot::open(dir.path(), &Expected::default())
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("was made on another CPU model"),
        "{e}"
    );
}

#[test]
fn a_state_that_disagrees_with_itself_is_refused() {
    let mut s = state();
    s.vcpus.pop();
    let dir = written(&s, full_len(&s));
    let e = Snapshot::open(dir.path(), &Expected::default())
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "snapshot {} is inconsistent: 1 vCPU states for 2 vCPUs",
            dir.path().display()
        )
    );
    let mut s = state();
    s.origin.mem_mib = u64::MAX;
    let dir = written(&s, full_len(&s));
    let e = Snapshot::open(dir.path(), &Expected::default())
        .err()
        .unwrap();
    assert!(matches!(e, SnapshotError::Inconsistent { .. }), "{e:?}");
}

/// Data extents that are not page-aligned, out of order, empty or past
/// the memory file are refused before anything is mapped.
#[test]
fn bad_data_extents_are_refused() {
    let total = full_len(&state());
    for bad in [
        vec![(1, 4096)],
        vec![(0, 100)],
        vec![(0, 0)],
        vec![(8192, 4096), (0, 4096)],
        vec![(0, 8192), (4096, 4096)],
        vec![(total - 4096, 8192)],
        vec![(u64::MAX - 4095, 4096)],
    ] {
        let mut s = state();
        s.data = bad.clone();
        let dir = written(&s, full_len(&s));
        let e = Snapshot::open(dir.path(), &Expected::default())
            .err()
            .unwrap_or_else(|| panic!("{bad:?} was taken"));
        assert!(e.to_string().contains("data extent"), "{bad:?}: {e}");
    }
}

/// What write_memory lists as data is where the non-zero pages are (short
/// holes merged in), and a mapping made from that list reads back every
/// byte of guest memory, holes as zeros, while a clone's writes stay its
/// own.
#[test]
fn memory_written_and_mapped_back_by_its_data_extents() {
    use crate::kvm::memory::{file_backed, guest_memory};
    use vm_memory::{Bytes, GuestAddress};
    let mem = guest_memory(&[(GuestAddress(0), 4 << 20)], false).unwrap();
    let page = 4096u64;
    for (at, byte) in [
        (0, 1u8),
        (page, 2),
        (5 * page, 3),
        (300 * page, 4),
        ((4 << 20) - page, 5),
    ] {
        mem.write_obj(byte, GuestAddress(at + 7)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(MEMORY_FILE);
    let data = write_memory(&mem, &path).unwrap();
    // Pages 0-1, 5 and 300 (holes under 2 MiB between them: merged), and
    // the last one, 2.8 MiB further.
    assert_eq!(data, vec![(0, 301 * page), ((4 << 20) - page, page)]);
    let file = std::fs::File::open(&path).unwrap();
    for huge in [false, true] {
        let clone = file_backed(&[(GuestAddress(0), 4 << 20, 0)], &file, &data, huge).unwrap();
        for at in (0..(4u64 << 20)).step_by(2048) {
            let want: u8 = mem.read_obj(GuestAddress(at + 7)).unwrap();
            let got: u8 = clone.read_obj(GuestAddress(at + 7)).unwrap();
            assert_eq!(got, want, "byte at {:#x} (huge pages {huge})", at + 7);
        }
        clone.write_obj(9u8, GuestAddress(7)).unwrap();
        clone.write_obj(9u8, GuestAddress(100 * page)).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        (bytes[7], bytes[409_600]),
        (1, 0),
        "the file is not written"
    );
}

#[test]
fn a_file_id_matches_the_same_bytes_even_after_a_touch() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    std::fs::write(&k, b"kernel bytes").unwrap();
    let id = FileId::of(&k).unwrap();
    let touched = FileId {
        mtime_ns: id.mtime_ns - 1,
        ..id.clone()
    };
    let expected = Expected {
        kernel: Some(k.clone()),
        ..Default::default()
    };
    let origin = |kernel| Origin {
        kernel,
        initrd: None,
        cpu: origin::host_cpu(),
        vcpus: 1,
        mem_mib: 128,
    };
    assert!(expected.check(&origin(id), dir.path()).is_ok());
    assert!(expected.check(&origin(touched), dir.path()).is_ok());
    std::fs::write(&k, b"kernel bytez").unwrap();
    let fresh = FileId::of(&k).unwrap();
    std::fs::write(&k, b"kernel bytes").unwrap();
    let stale = FileId {
        mtime_ns: 0,
        ..fresh
    };
    let e = expected.check(&origin(stale), dir.path()).unwrap_err();
    assert!(e.to_string().contains("another kernel"), "{e}");
}
