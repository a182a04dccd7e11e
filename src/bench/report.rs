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
    /// Instances created and run to completion per second at the given
    /// concurrency (with a sweep, at its last concurrency).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances_per_second: Option<f64>,
    /// Throughput and end-to-end latency at each concurrency of the sweep.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<SweepPoint>,
}

/// The load at one concurrency: K workers running the command back to back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPoint {
    pub concurrency: usize,
    /// Runs completed.
    pub runs: usize,
    pub instances_per_second: f64,
    /// End-to-end time of one run under this load.
    pub total_p50_ms: f64,
    pub total_p99_ms: f64,
}

/// How many idle instances of `marginal_mib` each fit in `host_mib`.
pub fn density(host_mib: u64, marginal_mib: f64) -> Option<u64> {
    (marginal_mib > 0.0).then(|| (host_mib as f64 / marginal_mib).floor() as u64)
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
                let per = m.marginal_pss_mib.unwrap_or(m.per_instance_pss_mib);
                if let Some(n) = density(self.host.memory_mib, per) {
                    let _ = writeln!(
                        out,
                        "{:<8} density: about {n} idle instances in this host's {} MiB",
                        b.backend, self.host.memory_mib
                    );
                }
            }
            if b.sweep.len() > 1 {
                for p in &b.sweep {
                    let _ = writeln!(
                        out,
                        "{:<8} concurrency {:>3}: {:>7.2} instances/s, total p50 {:>9.1} ms, p99 {:>9.1} ms ({} runs)",
                        b.backend,
                        p.concurrency,
                        p.instances_per_second,
                        p.total_p50_ms,
                        p.total_p99_ms,
                        p.runs
                    );
                }
            } else if let Some(r) = b.instances_per_second {
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
        let bars_height = top + bars.len() as f64 * (bar_h + gap) + 60.0;
        let swept = self.backends.iter().any(|b| b.sweep.len() > 1);
        let height = bars_height + if swept { SWEEP_PANEL_H } else { 0.0 };
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
        let legend_y = bars_height - 30.0;
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
        if swept {
            self.sweep_panel(&mut s, bars_height, left, width);
        }
        s.push_str("</svg>\n");
        s
    }

    /// Throughput against concurrency, one line per backend, below the bars.
    fn sweep_panel(&self, s: &mut String, y0: f64, left: f64, width: f64) {
        const COLOURS: [&str; 4] = ["#4e79a7", "#e15759", "#59a14f", "#b07aa1"];
        let (top, plot_h) = (y0 + 40.0, SWEEP_PANEL_H - 90.0);
        let lines: Vec<&BackendReport> =
            self.backends.iter().filter(|b| b.sweep.len() > 1).collect();
        let max_k = lines
            .iter()
            .flat_map(|b| b.sweep.iter().map(|p| p.concurrency))
            .max()
            .unwrap_or(1)
            .max(2) as f64;
        let max_r = lines
            .iter()
            .flat_map(|b| b.sweep.iter().map(|p| p.instances_per_second))
            .fold(0.0_f64, f64::max)
            .max(1e-3);
        // Concurrency on a log2 axis: the sweep doubles.
        let x_of = |k: usize| left + (k.max(1) as f64).log2() / max_k.log2() * width;
        let y_of = |r: f64| top + plot_h - r / max_r * plot_h;
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}" font-size="14">throughput (instances/s) against concurrency</text>"#,
            y0 + 20.0
        );
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="#999"/><line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="#999"/>"##,
            b = top + plot_h,
            r = left + width
        );
        let _ = writeln!(s, r#"<text x="10" y="{}">{max_r:.2}/s</text>"#, top + 4.0);
        for (i, b) in lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let points: Vec<String> = b
                .sweep
                .iter()
                .map(|p| {
                    format!(
                        "{:.1},{:.1}",
                        x_of(p.concurrency),
                        y_of(p.instances_per_second)
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
            for p in &b.sweep {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{} at {}: {:.2}/s, p50 {:.0} ms, p99 {:.0} ms</title></circle>"#,
                    x_of(p.concurrency),
                    y_of(p.instances_per_second),
                    xml_escape(&b.backend),
                    p.concurrency,
                    p.instances_per_second,
                    p.total_p50_ms,
                    p.total_p99_ms
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" fill="{colour}">{}</text>"#,
                left + width + 4.0,
                top + 14.0 * (i as f64 + 1.0),
                xml_escape(&b.backend)
            );
        }
        for k in lines[0].sweep.iter().map(|p| p.concurrency) {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{k}</text>"#,
                x_of(k),
                top + plot_h + 16.0
            );
        }
    }
}

/// Height of the throughput panel under the phase bars.
const SWEEP_PANEL_H: f64 = 260.0;

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
