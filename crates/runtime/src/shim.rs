//! The shim: `skiff __shim DIR`, one single-threaded process per instance.
//!
//! libcontainer clones and changes directory process-wide, so it must never run on a tokio
//! worker thread; each instance gets this small helper instead. The shim
//! 1. mounts the overlayfs root (image layers read-only, a private writable upper dir) in a
//!    mount namespace of its own, so the host never sees that mount,
//! 2. joins the network namespace the server made for the instance, or unshares one with only
//!    loopback up (the container inherits it), and writes `/etc/hosts` and `/etc/resolv.conf`
//!    for it into the instance dir (bind-mounted, so the image's layers stay untouched),
//! 3. creates and starts the container through libcontainer, reporting `started` on fd 3
//!    (with `start_now` false, it reports `created` once the container exists and starts it
//!    only on `start`: an instance made ahead of demand),
//! 4. waits on a pidfd for the container and on fd 4 for commands (`term`, `kill`); end of
//!    file on fd 4 means the server is gone, and the container is killed,
//! 5. reports `exited`, then deletes the container (cgroups, state), unmounts and removes the
//!    instance directory.
//!
//! The container's stdout and stderr are the shim's own, which the server made pipes.

use crate::{spec, user, InstanceConfig, RuntimeError};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;

/// File descriptor the shim reports events on.
pub const EVENT_FD: i32 = 3;
/// File descriptor the shim reads commands from.
pub const COMMAND_FD: i32 = 4;

/// One line of JSON the shim writes on [`EVENT_FD`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// The container is created (namespaces, mounts, cgroup, network) and its init waits
    /// for `start` on fd 4: a single-container instance with `start_now` false, made ahead
    /// of demand. `pid` is the init process, which becomes the app's.
    Created {
        pid: i32,
        /// How long each step took so far: `(step, microseconds)` ([`Phases`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        phases: Vec<(String, u64)>,
    },
    Started {
        pid: i32,
        /// How long each step took since the previous event: `(step, microseconds)`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        phases: Vec<(String, u64)>,
        /// The container's name (empty for the one container of a single-container instance).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        container: String,
    },
    /// The first container of an instance with sidecars has ended (`code`/`signal` are its
    /// own): the others have been sent SIGTERM, and get SIGKILL after [`crate::STOP_GRACE`].
    Stopping {
        code: Option<i32>,
        signal: Option<i32>,
        container: String,
    },
    /// Every container has ended; `code`/`signal` are the first one's, `container` its name.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        /// The cgroup's final reading, taken before the cgroup is removed.
        #[serde(default)]
        usage: Option<crate::cgroup::CgroupStats>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        container: String,
    },
    Error {
        message: String,
    },
}

struct Events(File);

/// The steps of a single-container start, timed: `handoff` (the shim's own start until it
/// holds the server's descriptors), `rootfs` (mount namespace, network, overlay root, `/etc`
/// files, OCI bundle), `create` (libcontainer's create: the init's namespaces, cgroup, mounts,
/// `pivot_root`), `start` (the init told to exec the app).
struct Phases {
    last: std::time::Instant,
    done: Vec<(String, u64)>,
}

impl Phases {
    fn new(since: std::time::Instant) -> Phases {
        Phases {
            last: since,
            done: Vec::new(),
        }
    }

    /// Ends step `name` now.
    fn mark(&mut self, name: &str) {
        let now = std::time::Instant::now();
        let us = now.duration_since(self.last).as_micros() as u64;
        self.done.push((name.to_string(), us));
        self.last = now;
    }

    /// The steps ended since the last call.
    fn take(&mut self) -> Vec<(String, u64)> {
        std::mem::take(&mut self.done)
    }
}

impl Events {
    fn send(&mut self, e: &Event) {
        let mut line = serde_json::to_vec(e).unwrap_or_default();
        line.push(b'\n');
        // The server may be gone; the shim still has to clean up, so a failed write is ignored.
        let _ = self.0.write_all(&line);
    }
}

/// Entry point of `skiff __shim DIR`. Returns the process exit code.
pub fn shim_main(dir: &Path) -> i32 {
    let mut phases = Phases::new(std::time::Instant::now());
    // The server's descriptors arrive on stdin before anything else runs.
    if let Err(e) = crate::handoff::receive() {
        eprintln!("error: skiff __shim: receiving the server's descriptors: {e}");
        return 1;
    }
    // SAFETY: the hand-off placed fds 3 and 4 for this process and nothing else in the shim
    // owns them.
    let mut events = Events(unsafe { File::from_raw_fd(EVENT_FD) });
    // SAFETY: as above.
    let commands = unsafe { OwnedFd::from_raw_fd(COMMAND_FD) };
    let cfg = match InstanceConfig::load(dir) {
        Ok(c) => c,
        Err(e) => {
            events.send(&Event::Error {
                message: e.to_string(),
            });
            return 1;
        }
    };
    phases.mark("handoff");
    let mut container = None;
    let result = if cfg.sidecars.is_empty() {
        run(&cfg, &mut events, commands, &mut container, phases)
    } else {
        run_with_sidecars(&cfg, &mut events, commands, &mut container)
    };
    if let Err(e) = &result {
        events.send(&Event::Error {
            message: e.to_string(),
        });
    }
    cleanup(&cfg, container);
    i32::from(result.is_err())
}

fn run(
    cfg: &InstanceConfig,
    events: &mut Events,
    commands: OwnedFd,
    slot: &mut Option<Container>,
    mut phases: Phases,
) -> Result<(), RuntimeError> {
    private_mount_namespace()?;
    let (bundle, _secrets) = write_bundle(cfg)?;
    phases.mark("rootfs");
    std::fs::create_dir_all(&cfg.state_root).map_err(|e| RuntimeError::io(&cfg.state_root, e))?;

    let container = ContainerBuilder::new(cfg.id.clone(), SyscallType::Linux)
        .with_executor(DefaultExecutor {})
        .with_root_path(&cfg.state_root)
        .and_then(|b| b.validate_id())
        .map(|b| {
            b.as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
        })
        .and_then(|r| r)
        .map_err(|e| RuntimeError::Start(e.to_string()))?;
    let container = slot.insert(container);
    phases.mark("create");
    let mut commands = File::from(commands);
    if !cfg.start_now {
        let pid = container
            .pid()
            .ok_or_else(|| RuntimeError::Start("the container has no init process".into()))?;
        events.send(&Event::Created {
            pid: pid.as_raw(),
            phases: phases.take(),
        });
        give_back_free_memory();
        if !wait_for_start(&mut commands) {
            // Stopped (or the server went away) before it was needed: nothing ran in it.
            return Ok(());
        }
        phases = Phases::new(std::time::Instant::now());
    }
    container
        .start()
        .map_err(|e| RuntimeError::Start(e.to_string()))?;
    phases.mark("start");
    let pid = container
        .pid()
        .ok_or_else(|| RuntimeError::Start("the container has no init process".into()))?;
    events.send(&Event::Started {
        pid: pid.as_raw(),
        phases: phases.take(),
        container: cfg.name.clone(),
    });
    give_back_free_memory();
    let status = supervise(pid, OwnedFd::from(commands))?;
    let (code, signal) = exit_status(status);
    // The container is gone: let go of its output pipes, so the server's readers end now
    // rather than after the cleanup below.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto the process's own stdout/stderr; nothing else uses them now.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
    let usage = crate::cgroup::stats(&cfg.id);
    events.send(&Event::Exited {
        code,
        signal,
        usage,
        container: String::new(),
    });
    Ok(())
}

/// `container`'s shared volume mounts as `(source dir, path, read-only)` for its spec.
fn volume_binds(
    instance: &InstanceConfig,
    container: &InstanceConfig,
) -> Vec<(std::path::PathBuf, String, bool)> {
    container
        .volume_binds
        .iter()
        .map(|(n, p, ro)| (instance.shared_volume_dir(n), p.clone(), *ro))
        .collect()
}

/// An instance of several containers: the ingress container as [`run`] makes it, then each
/// sidecar on its own root filesystem with its output on its own pipes, the shared in-memory
/// volumes mounted once for all. Containers marked `start_now` start at once, the others on
/// `start NAME`; when one ends (`stopping`) the others get SIGTERM, then SIGKILL after
/// [`crate::STOP_GRACE`] (Cloud Run replaces such an instance), and `exited` reports the
/// first to end once all have.
fn run_with_sidecars(
    cfg: &InstanceConfig,
    events: &mut Events,
    commands: OwnedFd,
    slot: &mut Option<Container>,
) -> Result<(), RuntimeError> {
    private_mount_namespace()?;
    // The sidecars' output pipes must not reach another container's process: close-on-exec
    // until each is dup2-ed onto the stdio of its own container.
    for i in 0..cfg.sidecars.len() as i32 {
        for fd in [
            crate::SIDECAR_OUTPUT_FD + 2 * i,
            crate::SIDECAR_OUTPUT_FD + 2 * i + 1,
        ] {
            // SAFETY: fcntl on a descriptor the server handed this process.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    for (name, size) in &cfg.shared_volumes {
        let dir = cfg.shared_volume_dir(name);
        std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::io(&dir, e))?;
        mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size},mode=1777").as_str()),
        )
        .map_err(|e| {
            RuntimeError::Sys(format!(
                "cannot mount volume {name} at {}: {e}",
                dir.display()
            ))
        })?;
    }
    // The ingress container is built (not started) first, as a single container would be.
    let mut ingress = cfg.clone();
    ingress.sidecars.clear();
    let mut all: Vec<(InstanceConfig, Container)> = Vec::new();
    let secrets = build_ingress(cfg, slot)?;
    let Some(c) = slot.take() else {
        return Err(RuntimeError::Start(
            "the ingress container was not built".into(),
        ));
    };
    all.push((ingress, c));
    for (i, sc) in cfg.sidecars.iter().enumerate() {
        let own = secrets.as_ref().and_then(|s| {
            let m = s.material.of_sidecar(&sc.name).filter(|m| !m.is_empty())?;
            Some((m, s.dir.join("containers").join(&sc.name)))
        });
        let bundle = container_bundle(cfg, sc, own.as_ref().map(|(m, d)| (*m, d.as_path())))?;
        let out = crate::SIDECAR_OUTPUT_FD + 2 * i as i32;
        let built = with_stdio(out, out + 1, || build_container(sc, &bundle));
        // SAFETY: the hand-off from the server placed the sidecar's pipes onto these fds for this
        // process; the container has its own copies now, and the shim needs none.
        unsafe {
            libc::close(out);
            libc::close(out + 1);
        }
        all.push((sc.clone(), built?));
    }
    give_back_free_memory();
    supervise_all(cfg, all, events, commands)
}

/// Returns the heap's free pages to the kernel before the shim settles into its long wait.
/// The start (the config's JSON, libcontainer's builder, the OCI spec) leaves the heap
/// fragmented, and glibc keeps its free pages: with one shim per instance, every KiB kept
/// counts a thousand times (BENCHMARKS.md, "Density").
fn give_back_free_memory() {
    // SAFETY: malloc_trim(3) only releases free memory; no allocation is in use by it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Builds (creates, without starting) the ingress container of an instance with sidecars:
/// its root filesystem, network, `/etc` files, secrets and bundle, as [`run`] does. Returns
/// the instance's secrets, for the sidecars.
fn build_ingress(
    cfg: &InstanceConfig,
    slot: &mut Option<Container>,
) -> Result<Option<Secrets>, RuntimeError> {
    let (bundle, secrets) = write_bundle(cfg)?;
    *slot = Some(build_container(cfg, &bundle)?);
    Ok(secrets)
}

/// An instance's secret values (read from fd 6) and the tmpfs of the shim's own mount
/// namespace they are written to.
struct Secrets {
    material: crate::SecretMaterial,
    dir: std::path::PathBuf,
}

/// Joins the instance's network, reads its secrets, and writes the bundle of its first (or
/// only) container with [`container_bundle`]; returns the bundle's directory and the
/// secrets.
fn write_bundle(
    cfg: &InstanceConfig,
) -> Result<(std::path::PathBuf, Option<Secrets>), RuntimeError> {
    join_network(cfg)?;
    let secrets = if cfg.secrets_on_fd {
        let material = read_secrets()?;
        let dir = mount_secrets_dir(cfg, material.value_bytes())?;
        Some(Secrets { material, dir })
    } else {
        None
    };
    let bundle = container_bundle(
        cfg,
        cfg,
        secrets.as_ref().map(|s| (&s.material, s.dir.as_path())),
    )?;
    Ok((bundle, secrets))
}

/// Mounts container `c`'s root filesystem (`c` is `instance` itself or one of its sidecars),
/// writes its `/etc` files and its OCI bundle; returns the bundle's directory. With
/// `secrets` (the container's values and a directory on the secrets tmpfs), the OCI spec
/// (which holds the env) and the secret files live there: nothing of them reaches the disk.
fn container_bundle(
    instance: &InstanceConfig,
    c: &InstanceConfig,
    secrets: Option<(&crate::SecretMaterial, &Path)>,
) -> Result<std::path::PathBuf, RuntimeError> {
    mount_rootfs(c)?;
    let user = user::resolve(&c.rootfs(), c.user.as_deref())?;
    for (name, text) in [
        ("hosts", &instance.hosts),
        ("resolv.conf", &instance.resolv_conf),
    ] {
        let path = c.etc_file(name);
        std::fs::write(&path, text).map_err(|e| RuntimeError::io(&path, e))?;
    }
    let binds = volume_binds(instance, c);
    let (bundle, spec) = match secrets {
        Some((material, dir)) => {
            let mut with_env = c.clone();
            for (k, v) in &material.env {
                with_env
                    .env
                    .retain(|kv| kv.split_once('=').map(|(n, _)| n) != Some(k));
                with_env.env.push(format!("{k}={v}"));
            }
            let mounts = write_secret_files(dir, material)?;
            (
                dir.join("bundle"),
                spec::build(&with_env, &user, &mounts, &binds),
            )
        }
        None => (c.dir.join("bundle"), spec::build(c, &user, &[], &binds)),
    };
    std::fs::create_dir_all(&bundle).map_err(|e| RuntimeError::io(&bundle, e))?;
    let config_json = bundle.join("config.json");
    let spec = serde_json::to_vec(&spec).expect("spec serializes");
    std::fs::write(&config_json, spec).map_err(|e| RuntimeError::io(&config_json, e))?;
    Ok(bundle)
}

/// Creates container `cfg.id` from `bundle` (its init waits for `start`).
fn build_container(cfg: &InstanceConfig, bundle: &Path) -> Result<Container, RuntimeError> {
    std::fs::create_dir_all(&cfg.state_root).map_err(|e| RuntimeError::io(&cfg.state_root, e))?;
    ContainerBuilder::new(cfg.id.clone(), SyscallType::Linux)
        .with_executor(DefaultExecutor {})
        .with_root_path(&cfg.state_root)
        .and_then(|b| b.validate_id())
        .map(|b| {
            b.as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
        })
        .and_then(|r| r)
        .map_err(|e| RuntimeError::Start(format!("container {}: {e}", cfg.name)))
}

/// Runs `f` with fds `out` and `err` as the process's stdout and stderr (what a container
/// created meanwhile inherits), then puts the shim's own back.
fn with_stdio<T>(out: i32, err: i32, f: impl FnOnce() -> T) -> T {
    // SAFETY: plain fd juggling on the single-threaded shim's own descriptors.
    unsafe {
        let saved = [
            libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 100),
            libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 100),
        ];
        libc::dup2(out, 1);
        libc::dup2(err, 2);
        let r = f();
        for (fd, s) in [1, 2].into_iter().zip(saved) {
            if s >= 0 {
                libc::dup2(s, fd);
                libc::close(s);
            }
        }
        r
    }
}

/// One container of an instance with sidecars, as the shim supervises it.
struct Member {
    cfg: InstanceConfig,
    container: Container,
    /// Set once started: its init's pid and pidfd.
    running: Option<(Pid, OwnedFd)>,
    done: bool,
}

/// Starts the containers marked `start_now`, then waits for exits and commands (`term`,
/// `kill`, `start NAME`) until every container has ended, and reports the first exit.
fn supervise_all(
    cfg: &InstanceConfig,
    all: Vec<(InstanceConfig, Container)>,
    events: &mut Events,
    commands: OwnedFd,
) -> Result<(), RuntimeError> {
    let mut members: Vec<Member> = all
        .into_iter()
        .map(|(cfg, container)| Member {
            cfg,
            container,
            running: None,
            done: false,
        })
        .collect();
    let start = |m: &mut Member, events: &mut Events| -> Result<(), RuntimeError> {
        m.container
            .start()
            .map_err(|e| RuntimeError::Start(format!("container {}: {e}", m.cfg.name)))?;
        let pid = m.container.pid().ok_or_else(|| {
            RuntimeError::Start(format!("container {} has no init process", m.cfg.name))
        })?;
        m.running = Some((pid, pidfd_open(pid)?));
        events.send(&Event::Started {
            pid: pid.as_raw(),
            phases: Vec::new(),
            container: m.cfg.name.clone(),
        });
        Ok(())
    };
    // Kills every container still there: started ones with `sig`, ones never started with
    // SIGKILL (reaped at once: nothing of them ever ran).
    let stop_all = |members: &mut Vec<Member>, sig: Signal| {
        for m in members.iter_mut().filter(|m| !m.done) {
            match &m.running {
                Some((pid, _)) => {
                    let _ = kill(*pid, sig);
                }
                None => {
                    if let Some(pid) = m.container.pid() {
                        let _ = kill(pid, Signal::SIGKILL);
                        let _ = waitpid(pid, None);
                    }
                    m.done = true;
                }
            }
        }
    };
    for m in members.iter_mut().filter(|m| m.cfg.start_now) {
        start(m, events)?;
    }
    let mut first: Option<(String, WaitStatus)> = None;
    // When the containers still running after the first one ended get SIGKILL.
    let mut kill_at: Option<std::time::Instant> = None;
    let mut commands = Some(File::from(commands));
    let mut pending = Vec::new();
    while members.iter().any(|m| !m.done) {
        if kill_at.is_some_and(|t| t <= std::time::Instant::now()) {
            kill_at = None;
            stop_all(&mut members, Signal::SIGKILL);
        }
        let live: Vec<usize> = (0..members.len())
            .filter(|i| !members[*i].done && members[*i].running.is_some())
            .collect();
        let mut fds: Vec<PollFd> = live
            .iter()
            .map(|i| {
                let (_, fd) = members[*i].running.as_ref().expect("live");
                PollFd::new(fd.as_fd(), PollFlags::POLLIN)
            })
            .collect();
        if let Some(c) = &commands {
            fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
        }
        let timeout = match kill_at {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t
                    .saturating_duration_since(std::time::Instant::now())
                    .as_millis()
                    + 1;
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::NONE)
            }
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(RuntimeError::Sys(format!("poll: {e}"))),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        drop(fds);
        let mut ended_now = false;
        for (k, i) in live.iter().enumerate() {
            if !ready[k] {
                continue;
            }
            let (pid, _) = members[*i].running.as_ref().expect("live");
            let status = loop {
                match waitpid(*pid, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(RuntimeError::Sys(format!("waitpid: {e}"))),
                    Ok(s) => break s,
                }
            };
            members[*i].done = true;
            if first.is_none() {
                let (code, signal) = exit_status(status);
                events.send(&Event::Stopping {
                    code,
                    signal,
                    container: members[*i].cfg.name.clone(),
                });
                first = Some((members[*i].cfg.name.clone(), status));
                ended_now = true;
            }
        }
        if ended_now {
            // One container ended: the instance is over. The others get SIGTERM and Cloud
            // Run's grace period before SIGKILL, as an instance scaled down does.
            stop_all(&mut members, Signal::SIGTERM);
            kill_at = Some(std::time::Instant::now() + crate::STOP_GRACE);
        }
        if ready.len() > live.len() && ready[live.len()] {
            let mut buf = [0u8; 256];
            let n = commands
                .as_mut()
                .map_or(Ok(0), |c| c.read(&mut buf))
                .unwrap_or(0);
            if n == 0 {
                commands = None;
                stop_all(&mut members, Signal::SIGKILL);
                continue;
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                let line = String::from_utf8_lossy(line.trim_ascii()).to_string();
                match line.as_str() {
                    "term" => stop_all(&mut members, Signal::SIGTERM),
                    "kill" => stop_all(&mut members, Signal::SIGKILL),
                    other => {
                        let Some(name) = other.strip_prefix("start ") else {
                            continue;
                        };
                        if first.is_some() {
                            continue;
                        }
                        if let Some(m) = members
                            .iter_mut()
                            .find(|m| m.cfg.name == name && m.running.is_none() && !m.done)
                        {
                            start(m, events)?;
                        }
                    }
                }
            }
        }
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto the process's own stdout/stderr; nothing else uses them now.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
    let (container, status) = first.unwrap_or((String::new(), WaitStatus::StillAlive));
    let (code, signal) = exit_status(status);
    let usage = crate::cgroup::stats(&cfg.id);
    events.send(&Event::Exited {
        code,
        signal,
        usage,
        container,
    });
    Ok(())
}

/// A wait status as `(exit code, signal)`.
fn exit_status(status: WaitStatus) -> (Option<i32>, Option<i32>) {
    match status {
        WaitStatus::Exited(_, code) => (Some(code), None),
        WaitStatus::Signaled(_, sig, _) => (None, Some(sig as i32)),
        _ => (None, None),
    }
}

/// Reads the [`crate::SecretMaterial`] the server handed over on [`crate::SECRETS_FD`].
fn read_secrets() -> Result<crate::SecretMaterial, RuntimeError> {
    // SAFETY: the hand-off from the server placed the secrets memfd onto this fd for this process.
    let mut f = unsafe { File::from_raw_fd(crate::SECRETS_FD) };
    let mut data = Vec::new();
    f.read_to_end(&mut data)
        .map_err(|e| RuntimeError::Sys(format!("cannot read the instance's secrets: {e}")))?;
    serde_json::from_slice(&data)
        .map_err(|e| RuntimeError::Config(format!("the instance's secrets: {e}")))
}

/// Where the shim keeps what holds secret values (the OCI bundle, the secret files).
fn secrets_dir(cfg: &InstanceConfig) -> std::path::PathBuf {
    cfg.dir.join("secrets")
}

/// Mounts a tmpfs (mode 0700) for the secrets at [`secrets_dir`], big enough for `bytes` of
/// values twice over (the files and the spec's env) and the rest of the spec.
fn mount_secrets_dir(
    cfg: &InstanceConfig,
    bytes: usize,
) -> Result<std::path::PathBuf, RuntimeError> {
    let dir = secrets_dir(cfg);
    std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::io(&dir, e))?;
    let size = 2 * bytes + (16 << 20);
    mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("size={size},mode=0700").as_str()),
    )
    .map_err(|e| {
        RuntimeError::Sys(format!(
            "cannot mount the secrets tmpfs at {}: {e}",
            dir.display()
        ))
    })?;
    Ok(dir)
}

/// Writes each secret volume's files under `dir/vN/` (files 0444, directories 0555) and
/// returns `(source, mount path in the container)` for the spec's read-only bind mounts.
fn write_secret_files(
    dir: &Path,
    secrets: &crate::SecretMaterial,
) -> Result<Vec<(std::path::PathBuf, String)>, RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let mut mounts = Vec::new();
    for (i, v) in secrets.volumes.iter().enumerate() {
        let root = dir.join(format!("v{i}"));
        std::fs::create_dir_all(&root).map_err(|e| RuntimeError::io(&root, e))?;
        for (rel, data) in &v.files {
            let path = root.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io(parent, e))?;
            }
            std::fs::write(&path, data).map_err(|e| RuntimeError::io(&path, e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))
                .map_err(|e| RuntimeError::io(&path, e))?;
        }
        for d in walk_dirs(&root) {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555))
                .map_err(|e| RuntimeError::io(&d, e))?;
        }
        mounts.push((root, v.mount_path.clone()));
    }
    Ok(mounts)
}

/// `root` and every directory below it.
fn walk_dirs(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// Gives the shim a mount namespace of its own, private all the way down, before it mounts
/// anything. The overlay root then never appears in the host's mount table (which every new
/// container's mount namespace copies, so it stays small however many instances run), and it
/// goes away with the shim even if the shim is killed.
fn private_mount_namespace() -> Result<(), RuntimeError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| RuntimeError::Sys(format!("cannot create the shim's mount namespace: {e}")))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| RuntimeError::Sys(format!("cannot make the shim's mounts private: {e}")))
}

fn mount_rootfs(cfg: &InstanceConfig) -> Result<(), RuntimeError> {
    // The writable layer lives in memory, as Cloud Run's does: a tmpfs as large as the
    // memory limit, whose pages are charged to the container's memory cgroup as it writes.
    let layer = writable_layer(cfg);
    std::fs::create_dir_all(&layer).map_err(|e| RuntimeError::io(&layer, e))?;
    mount(
        Some("tmpfs"),
        &layer,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={},mode=0700", cfg.memory_bytes).as_str()),
    )
    .map_err(|e| {
        RuntimeError::Sys(format!(
            "cannot mount the writable layer at {}: {e}",
            layer.display()
        ))
    })?;
    let upper = layer.join("upper");
    let work = layer.join("work");
    let rootfs = cfg.rootfs();
    let empty = cfg.dir.join("empty");
    for d in [&upper, &work, &rootfs, &empty] {
        std::fs::create_dir_all(d).map_err(|e| RuntimeError::io(d, e))?;
    }
    // overlayfs lists lower dirs top first; an image without layers gets one empty lower dir.
    let mut lowers: Vec<String> = cfg
        .layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    if lowers.is_empty() {
        lowers.push(empty.display().to_string());
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| {
        RuntimeError::Sys(format!(
            "cannot mount the overlay root at {}: {e}",
            rootfs.display()
        ))
    })
}

/// Joins the network namespace the server made for the instance (fd [`crate::NETNS_FD`]), or
/// makes one with only loopback up when the instance has no network.
fn join_network(cfg: &InstanceConfig) -> Result<(), RuntimeError> {
    if cfg.joins_netns {
        // SAFETY: the hand-off from the server placed the namespace onto this fd for this process.
        let ns = unsafe { OwnedFd::from_raw_fd(crate::NETNS_FD) };
        return nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            RuntimeError::Sys(format!("cannot join the instance's network namespace: {e}"))
        });
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| RuntimeError::Sys(format!("cannot create the network namespace: {e}")))?;
    loopback_up()
}

/// Where the container's writable layer (overlay upper and work dirs) is mounted.
fn writable_layer(cfg: &InstanceConfig) -> std::path::PathBuf {
    cfg.dir.join("layer")
}

fn loopback_up() -> Result<(), RuntimeError> {
    let err = |what: &str| {
        RuntimeError::Sys(format!(
            "cannot bring up loopback: {what}: {}",
            std::io::Error::last_os_error()
        ))
    };
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket"));
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS reads into a valid, properly sized ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(err("SIOCGIFFLAGS"));
    }
    // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(err("SIOCSIFFLAGS"));
    }
    Ok(())
}

fn pidfd_open(pid: Pid) -> Result<OwnedFd, RuntimeError> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(RuntimeError::Sys(format!(
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reads commands until `start` (true); `term`, `kill` or the end of the pipe (the server is
/// gone) mean the created container is not wanted (false). Reads a byte at a time, so that
/// nothing after the line is taken from [`supervise`].
fn wait_for_start(commands: &mut File) -> bool {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match commands.read(&mut byte) {
            Ok(0) => return false,
            Ok(_) if byte[0] == b'\n' => {
                let cmd = std::mem::take(&mut line);
                match cmd.trim_ascii() {
                    b"term" | b"kill" => return false,
                    c if c == b"start" || c.starts_with(b"start ") => return true,
                    _ => {}
                }
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Waits for the container's init to exit while obeying commands on fd 4.
fn supervise(pid: Pid, commands: OwnedFd) -> Result<WaitStatus, RuntimeError> {
    let pidfd = pidfd_open(pid)?;
    let mut commands = Some(File::from(commands));
    let mut pending = Vec::new();
    loop {
        let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        if let Some(c) = &commands {
            fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(RuntimeError::Sys(format!("poll: {e}"))),
        }
        let exited = fds[0].any().unwrap_or(false);
        let command_ready = fds.get(1).and_then(|f| f.any()).unwrap_or(false);
        drop(fds);
        if exited {
            loop {
                match waitpid(pid, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(RuntimeError::Sys(format!("waitpid: {e}"))),
                    Ok(s) => return Ok(s),
                }
            }
        }
        if command_ready {
            let mut buf = [0u8; 64];
            let n = commands
                .as_mut()
                .map_or(Ok(0), |c| c.read(&mut buf))
                .unwrap_or(0);
            if n == 0 {
                // The server is gone: nobody supervises this instance any more.
                commands = None;
                let _ = kill(pid, Signal::SIGKILL);
                continue;
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                let sig = match line.trim_ascii() {
                    b"term" => Signal::SIGTERM,
                    b"kill" => Signal::SIGKILL,
                    _ => continue,
                };
                let _ = kill(pid, sig);
            }
        }
    }
}

/// Removes everything the instance had, in reverse order of creation. Each step tolerates
/// the ones before it not having happened.
pub fn cleanup(cfg: &InstanceConfig, container: Option<Container>) {
    for sc in &cfg.sidecars {
        if let Ok(mut c) = Container::load(sc.state_root.join(&sc.id)) {
            if let Err(e) = c.delete(true) {
                tracing::warn!(id = sc.id, "deleting container: {e}");
            }
        }
        let _ = umount2(&sc.rootfs(), MntFlags::MNT_DETACH);
        let _ = umount2(&writable_layer(sc), MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(sc.state_root.join(&sc.id));
    }
    for (name, _) in &cfg.shared_volumes {
        let _ = umount2(&cfg.shared_volume_dir(name), MntFlags::MNT_DETACH);
    }
    let container = container.or_else(|| Container::load(cfg.state_root.join(&cfg.id)).ok());
    if let Some(mut c) = container {
        if let Err(e) = c.delete(true) {
            tracing::warn!(id = cfg.id, "deleting container: {e}");
        }
    }
    remove_cgroups(&cfg.id);
    let rootfs = cfg.rootfs();
    let _ = umount2(&rootfs, MntFlags::MNT_DETACH);
    let _ = umount2(&writable_layer(cfg), MntFlags::MNT_DETACH);
    let _ = umount2(&secrets_dir(cfg), MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(cfg.state_root.join(&cfg.id));
    let _ = std::fs::remove_dir_all(&cfg.dir);
}

/// Removes the instance's cgroup in every hierarchy where it is left (libcontainer removes
/// them on delete; this covers a container that never got that far).
fn remove_cgroups(id: &str) {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    dirs.push("/sys/fs/cgroup".into());
    for d in dirs {
        let cg = d.join(crate::CGROUP_PARENT).join(id);
        if cg.exists() {
            // With sidecars, each container's cgroup is below the instance's.
            if let Ok(children) = std::fs::read_dir(&cg) {
                for c in children.flatten() {
                    if c.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = std::fs::remove_dir(c.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&cg);
        }
    }
}
