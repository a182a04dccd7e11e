//! Percentiles over a set of samples, and process memory (PSS).

use std::time::Duration;

/// p50/p90/p99 (nearest rank) with min, max and count, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub n: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// None for an empty set.
    pub fn of(samples: &[Duration]) -> Option<Percentiles> {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            // Nearest rank: the smallest value with at least p of the samples at or below it.
            let idx = ((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1;
            ms[idx]
        };
        Some(Percentiles {
            n: ms.len(),
            min_ms: ms[0],
            p50_ms: rank(0.50),
            p90_ms: rank(0.90),
            p99_ms: rank(0.99),
            max_ms: ms[ms.len() - 1],
        })
    }
}

/// Proportional set size of a process in KiB, from /proc/PID/smaps_rollup.
/// None if the process is gone or the file cannot be read.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_pss_kib(&text)
}

fn parse_pss_kib(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// `root` and every process below it, from /proc (parent links).
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_ppid(&s))
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// The parent pid from /proc/PID/stat (the field after the parenthesised name,
/// which may itself hold spaces and parentheses).
fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles_are_ordered() {
        let p = Percentiles::of(&ms(&[5, 1, 4, 2, 3, 6, 7, 8, 9, 10])).unwrap();
        assert_eq!((p.n, p.min_ms, p.max_ms), (10, 1.0, 10.0));
        assert_eq!((p.p50_ms, p.p90_ms, p.p99_ms), (5.0, 9.0, 10.0));
        let one = Percentiles::of(&ms(&[42])).unwrap();
        assert_eq!((one.p50_ms, one.p99_ms), (42.0, 42.0));
        assert!(Percentiles::of(&[]).is_none());
    }

    #[test]
    fn parses_pss_and_ppid() {
        let rollup = "00400000-7fff [rollup]\nRss:  1200 kB\nPss:   800 kB\nPss_Anon: 10 kB\n";
        assert_eq!(parse_pss_kib(rollup), Some(800));
        assert_eq!(parse_pss_kib("Rss: 1 kB\n"), None);
        assert_eq!(parse_ppid("123 (a) b) S 77 123 123 0"), Some(77));
    }

    #[test]
    fn this_process_has_pss_and_is_in_its_tree() {
        let me = std::process::id();
        assert!(pss_kib(me).unwrap() > 0);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tree = process_tree(me);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(tree.contains(&me) && tree.contains(&child.id()));
    }
}
