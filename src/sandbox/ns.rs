//! The `ns` backend: `hull-agent ns` as PID 1 of new namespaces on the
//! host, in a cgroup of its own and (by default) a user namespace with ids
//! of its own, with the layers stacked read-only, over a Unix socket.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{CGROUP_FILE, Isolation, Sandbox, SandboxError, Spec, agent_socket, io};
use crate::cgroups::{Cgroup, CgroupLimits};
use crate::{paths, sys, userns, volume};

pub(super) fn launch(spec: &Spec<'_>) -> Result<Sandbox, SandboxError> {
    let agent = paths::agent_binary()
        .filter(|a| a.is_file())
        .ok_or(SandboxError::NoAgent)?;
    let socket = agent_socket(Isolation::Ns, spec.dir);
    let scratch = spec.dir.join("scratch");
    std::fs::create_dir_all(&scratch).map_err(io(format!("creating {}", scratch.display())))?;
    let log = spec.dir.join("agent.log");
    let logf = std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
    let limits = CgroupLimits {
        memory_bytes: Some(spec.memory_mib << 20),
        cpus: Some(f64::from(spec.vcpus)),
        pids: None,
    };
    let cgroup = Cgroup::create(&format!("ns-{}", spec.name), &limits)?;
    // Recorded so that `rm -f` and `kill` can remove it when the monitor
    // that would have is gone.
    if let Ok(json) = serde_json::to_vec(&cgroup) {
        let _ = std::fs::write(spec.dir.join(CGROUP_FILE), json);
    }
    let mut cmd = Command::new(&agent);
    cmd.arg("ns")
        .arg("--listen")
        .arg(&socket)
        .arg("--scratch")
        .arg(&scratch);
    for l in &spec.layers {
        cmd.arg("--lower").arg(l);
    }
    for m in &spec.mounts {
        let agent_mount = volume::agent_mount(m)
            .ok_or_else(|| SandboxError::UnresolvedMount(m.target.clone()))?;
        let json = serde_json::to_string(&agent_mount).expect("a Mount serializes");
        cmd.arg("--mount").arg(json);
    }
    if spec.read_only {
        cmd.arg("--read-only");
    }
    match &spec.netns {
        super::NetNs::New => {}
        super::NetNs::Host => {
            cmd.args(["--netns", "host"]);
        }
        super::NetNs::Path(p) => {
            cmd.arg("--netns").arg(p);
        }
    }
    if let Some(upper) = &spec.upper {
        cmd.arg("--upper").arg(upper);
    }
    // A launch that fails takes back what it made: the cgroup, the range.
    let abandon = |owner: Option<&Path>| {
        let _ = cgroup.remove();
        if let Some(owner) = owner {
            userns::release(owner);
        }
    };
    let mut warnings = Vec::new();
    let userns_owner = match (spec.userns, userns::host_refuses()) {
        (userns::Mode::Host, _) => None,
        (userns::Mode::Private, Some(why)) => {
            abandon(None);
            return Err(userns::UsernsError::Disabled(why).into());
        }
        (userns::Mode::Auto, Some(why)) => {
            warnings.push(format!(
                "warning: no user namespace ({why}): the container runs with host ids"
            ));
            None
        }
        (mode, None) => {
            let range = userns::claim(spec.dir).inspect_err(|_| abandon(None))?;
            cmd.args(["--userns", &range.arg()]);
            if mode == userns::Mode::Auto {
                cmd.arg("--userns-optional");
            }
            Some(spec.dir.to_path_buf())
        }
    };
    // The agent waits for a byte on stdin before it forks into the new
    // namespaces, so it is in its cgroup before any container process exists.
    cmd.env("HULL_AGENT_SYNC", "1");
    sys::die_with_parent(&mut cmd);
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .map_err(io(format!("starting {}", agent.display())));
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            abandon(userns_owner.as_deref());
            return Err(e);
        }
    };
    let go = cgroup.add_process(child.id());
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"g");
    }
    if let Err(e) = go {
        let _ = child.kill();
        let _ = child.wait();
        abandon(userns_owner.as_deref());
        return Err(e.into());
    }
    Ok(Sandbox {
        isolation: Isolation::Ns,
        child,
        socket,
        console: PathBuf::new(),
        log,
        cgroup: Some(cgroup),
        userns_owner,
        warnings,
        restored: None,
        cold_reason: None,
        discardable: false,
    })
}
