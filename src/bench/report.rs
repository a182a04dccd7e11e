//! The bench report: host fingerprint, per-backend figures, and its three
//! renderings (terminal table, JSON, SVG plot of the phase breakdown).
//!
//! The JSON schema is documented in docs/bench-schema.md; `SCHEMA_VERSION`
//! changes whenever a field changes meaning or goes away.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::Phase;
use super::stats::Percentiles;

pub const SCHEMA_VERSION: u32 = 1;

/// What the figures were measured on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostFingerprint {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_mib: u64,
    /// hardware, pvm, emulated-host (a KVM host under QEMU TCG), missing, unusable.
    pub kvm: String,
    pub cgroup: String,
    pub hull_version: String,
}

/// Memory of K idle instances, from PSS of every process each instance owns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryReport {
    pub instances: usize,
    pub total_pss_mib: f64,
    pub per_instance_pss_mib: f64,
    /// (PSS with K instances - PSS with 1) / (K - 1); null when K = 1.
    pub marginal_pss_mib: Option<f64>,
}

/// Figures for one backend, or why there are none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendReport {
    pub backend: String,
    pub available: bool,
    /// Why the backend was not measured, or failed part-way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Phase name -> percentiles over the runs, in phase order.
    pub phases: BTreeMap<String, Percentiles>,
    /// Phases that do not apply to this backend, e.g. `boot` for runc.
    pub not_applicable: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryReport>,
    /// Instances created and run to completion per second at the given concurrency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances_per_second: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub host: HostFingerprint,
    pub image: String,
    pub command: Vec<String>,
    pub runs: usize,
    pub concurrency: usize,
    pub backends: Vec<BackendReport>,
}

impl Report {
    /// A fixed-width table for the terminal.
    pub fn table(&self) -> String {
        let h = &self.host;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "host: {} | {} x{} | {} MiB | kvm: {} | cgroup: {} | hull {}",
            h.kernel, h.cpu, h.cpus, h.memory_mib, h.kvm, h.cgroup, h.hull_version
        );
        let _ = writeln!(
            out,
            "image: {}  command: {}  runs: {}  concurrency: {}\n",
            self.image,
            self.command.join(" "),
            self.runs,
            self.concurrency
        );
        let _ = writeln!(
            out,
            "{:<8} {:<13} {:>10} {:>10} {:>10}",
            "backend", "phase", "p50 ms", "p90 ms", "p99 ms"
        );
        for b in &self.backends {
            if !b.available {
                let _ = writeln!(
                    out,
                    "{:<8} not measured: {}",
                    b.backend,
                    b.reason.as_deref().unwrap_or("?")
                );
                continue;
            }
            for phase in Phase::ALL {
                let name = phase.name();
                if let Some(p) = b.phases.get(name) {
                    let _ = writeln!(
                        out,
                        "{:<8} {:<13} {:>10.1} {:>10.1} {:>10.1}",
                        b.backend, name, p.p50_ms, p.p90_ms, p.p99_ms
                    );
                }
            }
            if let Some(m) = &b.memory {
                let marginal = m
                    .marginal_pss_mib
                    .map_or("-".to_string(), |v| format!("{v:.1}"));
                let _ = writeln!(
                    out,
                    "{:<8} memory: {:.1} MiB PSS per instance ({} idle), marginal {} MiB",
                    b.backend, m.per_instance_pss_mib, m.instances, marginal
                );
            }
            if let Some(r) = b.instances_per_second {
                let _ = writeln!(out, "{:<8} throughput: {r:.2} instances/s", b.backend);
            }
            if let Some(reason) = &b.reason {
                let _ = writeln!(out, "{:<8} note: {reason}", b.backend);
            }
        }
        // Ratios of end-to-end medians against the first measured backend.
        let totals: Vec<(&str, f64)> = self
            .backends
            .iter()
            .filter_map(|b| {
                Some((
                    b.backend.as_str(),
                    b.phases.get(Phase::Total.name())?.p50_ms,
                ))
            })
            .collect();
        if let Some((base_name, base)) = totals.first().copied().filter(|(_, b)| *b > 0.0) {
            let _ = writeln!(out, "\nend to end (p50) relative to {base_name}:");
            for (name, t) in &totals {
                let _ = writeln!(out, "  {name:<8} {t:>10.1} ms  {:>6.2}x", t / base);
            }
        }
        out
    }

    /// A horizontal stacked bar per backend: the p50 of each phase, in order.
    pub fn svg(&self) -> String {
        const COLOURS: [&str; 8] = [
            "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
        ];
        let bars: Vec<(&str, Vec<(&str, f64)>)> = self
            .backends
            .iter()
            .filter(|b| b.available)
            .map(|b| {
                let parts = Phase::ALL
                    .iter()
                    .filter(|p| **p != Phase::Total)
                    .filter_map(|p| Some((p.name(), b.phases.get(p.name())?.p50_ms)))
                    .collect();
                (b.backend.as_str(), parts)
            })
            .collect();
        let widest = bars
            .iter()
            .map(|(_, parts)| parts.iter().map(|(_, v)| v).sum::<f64>())
            .fold(0.0_f64, f64::max)
            .max(1e-3);
        let (left, width, bar_h, gap, top) = (90.0, 560.0, 26.0, 14.0, 56.0);
        let height = top + bars.len() as f64 * (bar_h + gap) + 60.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
            w = left + width + 40.0
        );
        let _ = writeln!(
            s,
            r#"<text x="10" y="20" font-size="14">hull bench: phase medians (ms), {} runs — {}</text>"#,
            self.runs,
            xml_escape(&self.image)
        );
        let _ = writeln!(
            s,
            r##"<text x="10" y="38" fill="#555">{} | kvm: {} | cgroup: {}</text>"##,
            xml_escape(&self.host.kernel),
            xml_escape(&self.host.kvm),
            xml_escape(&self.host.cgroup)
        );
        for (i, (name, parts)) in bars.iter().enumerate() {
            let y = top + i as f64 * (bar_h + gap);
            let _ = writeln!(
                s,
                r#"<text x="10" y="{}">{}</text>"#,
                y + bar_h * 0.65,
                xml_escape(name)
            );
            let mut x = left;
            for (phase, v) in parts {
                let w = v / widest * width;
                let colour = COLOURS[Phase::index_of(phase) % COLOURS.len()];
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{bar_h}" fill="{colour}"><title>{phase}: {v:.1} ms</title></rect>"#
                );
                x += w;
            }
            let total: f64 = parts.iter().map(|(_, v)| v).sum();
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}">{total:.0}</text>"#,
                x + 4.0,
                y + bar_h * 0.65
            );
        }
        let legend_y = height - 30.0;
        for (i, phase) in Phase::ALL
            .iter()
            .filter(|p| **p != Phase::Total)
            .enumerate()
        {
            let x = 10.0 + i as f64 * 90.0;
            let colour = COLOURS[Phase::index_of(phase.name()) % COLOURS.len()];
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{legend_y}" width="10" height="10" fill="{colour}"/>"#
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}">{}</text>"#,
                x + 14.0,
                legend_y + 9.0,
                phase.name()
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
