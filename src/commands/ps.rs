//! `hull ps [-a] [-q] [--json]`: containers, as `docker ps` lists them.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;

use hull::Container;
use hull::state::{ContainerState, Status};

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default: running ones only).
    #[arg(short, long)]
    pub all: bool,
    /// Only print container ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the full state of each container as a JSON array.
    #[arg(long)]
    pub json: bool,
}

pub fn run(state_dir: &Path, args: PsArgs) -> anyhow::Result<i32> {
    let list: Vec<ContainerState> = Container::list(state_dir)?
        .into_iter()
        .filter(|c| args.all || c.status == Status::Running)
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    if args.quiet {
        for c in &list {
            println!("{}", c.short_id());
        }
        return Ok(0);
    }
    let now = now();
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|c| {
            [
                c.short_id().to_string(),
                c.image.clone(),
                truncate(&format!("\"{}\"", c.command.join(" ")), 24),
                format!("{} ago", human_duration(now.saturating_sub(c.created))),
                status_line(c, now),
                c.name.clone(),
            ]
        })
        .collect();
    let header = [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "NAMES",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let print = |cells: &[String]| {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    };
    print(&header.map(String::from));
    for r in &rows {
        print(r);
    }
    Ok(0)
}

/// "Up 3 minutes", "Exited (0) 2 hours ago", "Created", as docker words it.
pub fn status_line(c: &ContainerState, now: u64) -> String {
    match c.status {
        Status::Created => "Created".into(),
        Status::Running => format!("Up {}", human_duration(now.saturating_sub(c.created))),
        Status::Exited => {
            let ago = c
                .finished
                .map(|f| format!(" {} ago", human_duration(now.saturating_sub(f))))
                .unwrap_or_default();
            format!("Exited ({}){ago}", c.exit_code.unwrap_or(-1))
        }
    }
}

pub fn human_duration(secs: u64) -> String {
    let plural = |n: u64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    match secs {
        0 => "Less than a second".into(),
        1..=59 => plural(secs, "second"),
        60..=3599 => plural(secs / 60, "minute"),
        3600..=86_399 => plural(secs / 3600, "hour"),
        _ => plural(secs / 86_400, "day"),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(1), "1 second");
        assert_eq!(human_duration(150), "2 minutes");
        assert_eq!(human_duration(7200), "2 hours");
    }

    #[test]
    fn status_lines() {
        let mut c = ContainerState::new(
            "a".repeat(64),
            "n".into(),
            "i".into(),
            vec![],
            hull::Isolation::Vm,
        );
        assert_eq!(status_line(&c, c.created), "Created");
        c.mark_exited(3, None);
        let f = c.finished.unwrap();
        assert_eq!(status_line(&c, f + 120), "Exited (3) 2 minutes ago");
    }

    #[test]
    fn long_commands_are_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
