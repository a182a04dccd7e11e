//! `hull bench` end to end on this host: the report a script reads is valid
//! against the documented schema, every requested backend is there (measured
//! with every phase, or with the reason it was not), and the figures are sane.
//! Needs root and runc (scripts/install-deps.sh); the vm backend is expected
//! to report why it cannot run where /dev/kvm cannot boot a stock guest.

#[path = "support/busybox.rs"]
mod busybox;
#[path = "support/schema.rs"]
mod schema;

use serde_json::Value;
use std::process::Command;

const PHASES: &[&str] = &[
    "prepare",
    "create",
    "boot",
    "start",
    "first_output",
    "exit",
    "teardown",
    "total",
];

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "hull bench needs root for the namespace runtimes: run the tests as root"
    );
}

fn run_bench(dir: &std::path::Path, backends: &str) -> (Value, String, String) {
    let rootfs = busybox::rootfs(&dir.join("rootfs"));
    let json = dir.join("report.json");
    let svg = dir.join("report.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_hull"))
        .args([
            "bench",
            "--backends",
            backends,
            "-n",
            "3",
            "--concurrency",
            "2",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .arg("--rootfs")
        .arg(&rootfs)
        .args(["echo", "hello"])
        .output()
        .expect("running hull bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "hull bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).expect("JSON report"))
        .expect("report is JSON");
    let plot = std::fs::read_to_string(&svg).expect("SVG plot");
    assert!(
        plot.starts_with("<svg") || plot.contains("<svg "),
        "not SVG: {plot:.80}"
    );
    (report, stdout, plot)
}

#[test]
fn bench_report_matches_schema_and_covers_every_backend() {
    require_root();
    assert!(
        hull_test_which("runc"),
        "runc is not installed: run scripts/install-deps.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let (report, table, plot) = run_bench(dir.path(), "vm,ns,runc,crun");

    let schema: Value = serde_json::from_str(include_str!("../docs/bench-schema.json")).unwrap();
    let errors = schema::validate(&schema, &report);
    assert!(
        errors.is_empty(),
        "report violates docs/bench-schema.json:\n{}",
        errors.join("\n")
    );

    let backends = report["backends"].as_array().unwrap();
    let names: Vec<&str> = backends
        .iter()
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["vm", "ns", "runc", "crun"],
        "backends in the requested order"
    );

    for b in backends {
        let name = b["backend"].as_str().unwrap();
        assert!(
            table.contains(name),
            "table does not mention {name}:\n{table}"
        );
        if b["available"] != Value::Bool(true) {
            let reason = b["reason"].as_str().unwrap_or_default();
            assert!(
                !reason.trim().is_empty(),
                "{name} unavailable without a reason"
            );
            assert!(
                table.contains(reason.lines().next().unwrap()),
                "reason not shown for {name}"
            );
            continue;
        }
        let not_applicable: Vec<&str> = b["not_applicable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for phase in PHASES.iter().filter(|p| !not_applicable.contains(p)) {
            let p = &b["phases"][*phase];
            assert!(p.is_object(), "{name}: phase {phase} missing");
            let get = |k: &str| p[k].as_f64().unwrap();
            assert!(
                get("min_ms") <= get("p50_ms")
                    && get("p50_ms") <= get("p90_ms")
                    && get("p90_ms") <= get("p99_ms")
                    && get("p99_ms") <= get("max_ms"),
                "{name}/{phase}: percentiles out of order: {p}"
            );
            assert_eq!(p["n"], 3, "{name}/{phase}: not every run counted");
        }
        let mem = &b["memory"];
        assert!(
            mem["per_instance_pss_mib"].as_f64().unwrap() > 0.0,
            "{name}: no memory figure"
        );
        assert!(
            b["instances_per_second"].as_f64().unwrap() > 0.0,
            "{name}: no throughput"
        );
        assert!(plot.contains(name), "plot has no bar for {name}");
    }
    // runc works on this kind of host: a bench that could not measure it is broken.
    let runc = &backends[2];
    assert_eq!(
        runc["available"], true,
        "runc not measured: {}",
        runc["reason"]
    );
}

#[test]
fn unknown_backend_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_hull"))
        .args(["bench", "--backends", "lxc", "--rootfs", "/", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown backend \"lxc\""), "stderr: {err}");
}

fn hull_test_which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}
