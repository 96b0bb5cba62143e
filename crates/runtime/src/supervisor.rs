//! The server's side of a shim: spawn it, learn the container's pid, hand out its stdout and
//! stderr, watch for its exit and tell it to stop. Dropping an [`Instance`] closes the command
//! pipe, which makes the shim kill the container: an instance cannot outlive its owner.

use crate::shim::{Event, COMMAND_FD, EVENT_FD};
use crate::{InstanceConfig, RuntimeError, CONFIG_FILE};
use nix::fcntl::OFlag;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{ChildStderr, ChildStdout, Command};
use tokio::sync::{watch, Mutex};

/// How an instance's container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// The shim failed (or vanished) before the container could report an exit.
    Failed(String),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

/// A running container, owned by the server.
pub struct Instance {
    pub id: String,
    /// The container's init process (pid 1 inside its namespace).
    pub pid: i32,
    /// The instance's network namespace, for [`crate::netns::connect`]; `None` when the
    /// container was already gone by the time it was looked up.
    pub netns: Option<std::fs::File>,
    commands: Mutex<Option<pipe::Sender>>,
    exit: watch::Receiver<Option<Exit>>,
    /// The cgroup's final reading, reported with the exit.
    usage: std::sync::Arc<std::sync::OnceLock<crate::cgroup::CgroupStats>>,
    /// Turns true when the shim has cleaned up and exited.
    gone: watch::Receiver<bool>,
    /// Names of the containers started so far (instances with sidecars).
    started: watch::Receiver<Vec<String>>,
    /// Turns true when a container of an instance with sidecars has ended and the others
    /// are being stopped.
    stopping: watch::Receiver<bool>,
    /// The container whose end ended the instance (instances with sidecars).
    ended_by: std::sync::Arc<std::sync::OnceLock<String>>,
    /// The start's steps as timed so far: `spawn` (from [`spawn`]'s call to the shim's first
    /// report, less the shim's own steps: the shim's fork and exec), then the shim's
    /// (`handoff`, `rootfs`, `create`, `start`; see the shim's `Phases`).
    phases: std::sync::Arc<std::sync::Mutex<Vec<(String, Duration)>>>,
}

/// What the caller reads the container's output from.
pub struct Output {
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
    /// Each sidecar's output: `(name, stdout, stderr)`, in the config's order.
    pub sidecars: Vec<(String, pipe::Receiver, pipe::Receiver)>,
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| RuntimeError::Sys(format!("pipe: {e}")))
}

/// A memfd (memory only, never on disk) holding `secrets` as JSON, at offset 0.
fn secrets_memfd(secrets: &crate::SecretMaterial) -> Result<OwnedFd, RuntimeError> {
    use std::io::{Seek, Write};
    let fd = nix::sys::memfd::memfd_create(
        c"skiff-secrets",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| RuntimeError::Sys(format!("memfd_create: {e}")))?;
    let mut f = std::fs::File::from(fd);
    let data = serde_json::to_vec(secrets).expect("secrets serialize");
    f.write_all(&data)
        .and_then(|_| f.rewind())
        .map_err(|e| RuntimeError::Sys(format!("writing the secrets memfd: {e}")))?;
    Ok(OwnedFd::from(f))
}

/// Writes the instance config, starts `SHIM_EXE __shim DIR` and waits until the container's
/// process exists (not until the app listens: that is the caller's startup probe). A
/// single-container instance with `start_now` false is only created: its app starts on
/// [`Instance::start`].
///
/// `netns`, when given, is the network namespace the container joins (`cfg.joins_netns` must
/// say so); the shim gets it on [`crate::NETNS_FD`].
pub async fn spawn(
    shim_exe: &Path,
    cfg: &InstanceConfig,
    netns: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(Instance, Output), RuntimeError> {
    if cfg.joins_netns != netns.is_some() {
        return Err(RuntimeError::Config(
            "joins_netns and the namespace given disagree".into(),
        ));
    }
    let began = std::time::Instant::now();
    let netns_raw = netns.map(|fd| fd.as_raw_fd());
    std::fs::create_dir_all(&cfg.dir).map_err(|e| RuntimeError::io(&cfg.dir, e))?;
    let config_path = cfg.dir.join(CONFIG_FILE);
    // The secret values go to the shim in a memfd, never into the instance dir on disk.
    let secrets = if cfg.secrets.is_empty() {
        None
    } else {
        Some(secrets_memfd(&cfg.secrets)?)
    };
    let secrets_raw = secrets.as_ref().map(|fd| fd.as_raw_fd());
    let mut on_disk = serde_json::to_value(cfg).expect("config serializes");
    on_disk["secrets_on_fd"] = serde_json::Value::Bool(secrets.is_some());
    let data = serde_json::to_vec(&on_disk).expect("config serializes");
    std::fs::write(&config_path, data).map_err(|e| RuntimeError::io(&config_path, e))?;

    let (event_r, event_w) = pipe_pair()?;
    let (cmd_r, cmd_w) = pipe_pair()?;
    let (event_w_raw, cmd_r_raw) = (event_w.as_raw_fd(), cmd_r.as_raw_fd());
    // Each sidecar's stdout and stderr: the read ends stay here, the write ends go to the
    // shim on SIDECAR_OUTPUT_FD + 2i and the next.
    let mut sidecar_pipes = Vec::new();
    for sc in &cfg.sidecars {
        let (out_r, out_w) = pipe_pair()?;
        let (err_r, err_w) = pipe_pair()?;
        sidecar_pipes.push((sc.name.clone(), out_r, out_w, err_r, err_w));
    }
    let mut sources = vec![Some(event_w_raw), Some(cmd_r_raw), netns_raw, secrets_raw];
    let mut targets = vec![EVENT_FD, COMMAND_FD, crate::NETNS_FD, crate::SECRETS_FD];
    for (i, (_, _, out_w, _, err_w)) in sidecar_pipes.iter().enumerate() {
        let fd = crate::SIDECAR_OUTPUT_FD + 2 * i as i32;
        sources.extend([Some(out_w.as_raw_fd()), Some(err_w.as_raw_fd())]);
        targets.extend([fd, fd + 1]);
    }
    // The shim's stdin is one end of a socket pair: its descriptors come over it (see
    // `handoff`), so no code runs between fork and exec and the spawn copies nothing.
    let (handoff, shim_end) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| RuntimeError::Sys(format!("socket pair for the shim: {e}")))?;
    let mut cmd = Command::new(shim_exe);
    cmd.arg("__shim")
        .arg(&cfg.dir)
        .stdin(Stdio::from(OwnedFd::from(shim_end)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    // Its own process group: a Ctrl-C meant for the server must not reach instances directly;
    // the server stops them in order.
    cmd.as_std_mut().process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        RuntimeError::Start(format!("cannot start the shim {}: {e}", shim_exe.display()))
    })?;
    let fds: Vec<(i32, i32)> = sources
        .iter()
        .zip(&targets)
        .filter_map(|(src, dst)| src.map(|s| (s, *dst)))
        .collect();
    if let Err(e) = crate::handoff::send(&handoff, &fds) {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(RuntimeError::Start(format!(
            "cannot hand the shim its descriptors: {e}"
        )));
    }
    drop(handoff);
    drop((event_w, cmd_r, secrets));
    let mut sidecar_out = Vec::new();
    for (name, out_r, out_w, err_r, err_w) in sidecar_pipes {
        drop((out_w, err_w));
        let rx = |fd| {
            pipe::Receiver::from_owned_fd(fd)
                .map_err(|e| RuntimeError::Sys(format!("output pipe: {e}")))
        };
        sidecar_out.push((name, rx(out_r)?, rx(err_r)?));
    }
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let events = pipe::Receiver::from_owned_fd(event_r)
        .map_err(|e| RuntimeError::Sys(format!("event pipe: {e}")))?;
    let commands = pipe::Sender::from_owned_fd(cmd_w)
        .map_err(|e| RuntimeError::Sys(format!("command pipe: {e}")))?;
    let mut lines = BufReader::new(events).lines();

    let first = lines.next_line().await.ok().flatten();
    let (pid, first_started, shim_phases) =
        match first.as_deref().map(serde_json::from_str::<Event>) {
            Some(Ok(Event::Started {
                pid,
                phases,
                container,
            })) => (pid, Some(container), phases),
            Some(Ok(Event::Created { pid, phases })) => (pid, None, phases),
            Some(Ok(Event::Error { message })) => {
                let _ = child.wait().await;
                return Err(RuntimeError::Start(message));
            }
            other => {
                let _ = child.wait().await;
                return Err(RuntimeError::Start(format!(
                    "the shim ended without starting the container ({other:?})"
                )));
            }
        };
    // The shim made the namespace and the container shares it; the shim lives until the
    // container is gone, so its handle is the steadier one. Both may be gone already when the
    // container exited at once: then there is no namespace to reach, only an exit to report.
    let netns = [child.id().map(|p| p as i32), Some(pid)]
        .into_iter()
        .flatten()
        .find_map(|p| std::fs::File::open(format!("/proc/{p}/ns/net")).ok());

    let (exit_tx, exit_rx) = watch::channel(None);
    let (gone_tx, gone_rx) = watch::channel(false);
    let (started_tx, started_rx) = watch::channel(first_started.into_iter().collect::<Vec<_>>());
    let in_shim: Duration = shim_phases
        .iter()
        .map(|(_, us)| Duration::from_micros(*us))
        .sum();
    let mut timed = vec![("spawn".to_string(), began.elapsed().saturating_sub(in_shim))];
    timed.extend(micros(shim_phases));
    let phases = std::sync::Arc::new(std::sync::Mutex::new(timed));
    let more_phases = phases.clone();
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let usage = std::sync::Arc::new(std::sync::OnceLock::new());
    let final_usage = usage.clone();
    let ended_by = std::sync::Arc::new(std::sync::OnceLock::new());
    let ended = ended_by.clone();
    tokio::spawn(async move {
        let mut exit = None;
        while let Ok(Some(line)) = lines.next_line().await {
            let event = serde_json::from_str::<Event>(&line);
            if let Ok(Event::Exited { usage: Some(u), .. }) = &event {
                let _ = final_usage.set(*u);
            }
            match &event {
                Ok(Event::Started {
                    container, phases, ..
                }) => {
                    more_phases
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(micros(phases.clone()));
                    started_tx.send_modify(|s| s.push(container.clone()));
                }
                Ok(Event::Exited { container, .. }) if !container.is_empty() => {
                    let _ = ended.set(container.clone());
                }
                Ok(Event::Stopping { container, .. }) => {
                    let _ = ended.set(container.clone());
                    let _ = stopping_tx.send(true);
                }
                _ => {}
            }
            let reported = match event {
                Ok(Event::Exited { code: Some(c), .. }) => Some(Exit::Code(c)),
                Ok(Event::Exited {
                    signal: Some(s), ..
                }) => Some(Exit::Signal(s)),
                Ok(Event::Error { message }) => Some(Exit::Failed(message)),
                _ => None,
            };
            if exit.is_none() {
                if let Some(e) = reported {
                    // The container is gone; the shim now cleans up, which nobody need wait for.
                    exit = Some(e.clone());
                    let _ = exit_tx.send(Some(e));
                }
            }
        }
        // End of the event pipe: the shim has cleaned up (or died); reap it.
        let status = child.wait().await;
        if exit.is_none() {
            let _ = exit_tx.send(Some(Exit::Failed(format!("the shim ended ({status:?})"))));
        }
        let _ = gone_tx.send(true);
    });
    Ok((
        Instance {
            id: cfg.id.clone(),
            pid,
            netns,
            commands: Mutex::new(Some(commands)),
            exit: exit_rx,
            usage,
            gone: gone_rx,
            started: started_rx,
            stopping: stopping_rx,
            ended_by,
            phases,
        },
        Output {
            stdout,
            stderr,
            sidecars: sidecar_out,
        },
    ))
}

/// The shim's `(step, microseconds)` as durations.
fn micros(phases: Vec<(String, u64)>) -> impl Iterator<Item = (String, Duration)> {
    phases
        .into_iter()
        .map(|(n, us)| (n, Duration::from_micros(us)))
}

impl Instance {
    /// The start's steps timed so far, in order: `spawn`, then the shim's `handoff`,
    /// `rootfs`, `create` and `start` (single-container instances).
    pub fn phases(&self) -> Vec<(String, Duration)> {
        self.phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn command(&self, c: &str) {
        let mut guard = self.commands.lock().await;
        if let Some(tx) = guard.as_mut() {
            if tx.write_all(c.as_bytes()).await.is_err() {
                *guard = None;
            }
        }
    }

    /// Starts the container of an instance spawned with `start_now` false (created ahead of
    /// demand); [`Instance::wait_started`]`("")` then says when it has started.
    pub async fn start(&self) {
        self.command("start\n").await;
    }

    /// Tells the shim to start container `name` (one that starts after others).
    pub async fn start_container(&self, name: &str) {
        self.command(&format!("start {name}\n")).await;
    }

    /// Resolves when container `name` has started (true), or the instance has ended (false).
    pub async fn wait_started(&self, name: &str) -> bool {
        let mut rx = self.started.clone();
        let mut exit = self.exit.clone();
        loop {
            if rx.borrow_and_update().iter().any(|n| n == name) {
                return true;
            }
            if exit.borrow_and_update().is_some() {
                return false;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return false },
                r = exit.changed() => if r.is_err() { return false },
            }
        }
    }

    /// Resolves when one container of an instance with sidecars has ended (the others then
    /// have [`crate::STOP_GRACE`] to finish), or when the instance has ended.
    pub async fn wait_stopping(&self) {
        let mut rx = self.stopping.clone();
        let mut exit = self.exit.clone();
        loop {
            if *rx.borrow_and_update() || exit.borrow_and_update().is_some() {
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                r = exit.changed() => if r.is_err() { return },
            }
        }
    }

    /// The container whose end ended an instance with sidecars, once it has ended.
    pub fn ended_by(&self) -> Option<String> {
        self.ended_by.get().cloned()
    }

    /// The exit, once the shim has reported it.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// What the container used (CPU time, peak memory), once it has exited.
    pub fn final_usage(&self) -> Option<crate::cgroup::CgroupStats> {
        self.usage.get().copied()
    }

    /// Resolves when the shim has removed every mount, cgroup and directory of the instance.
    pub async fn cleaned(&self) {
        let mut rx = self.gone.clone();
        let _ = rx.wait_for(|g| *g).await;
    }

    /// Resolves when the container has exited (its shim may still be cleaning up).
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.clone();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                return Exit::Failed("the supervisor task ended".into());
            }
        }
    }

    /// SIGTERM, then SIGKILL once `grace` has passed; returns when all is cleaned up.
    pub async fn stop(&self, grace: Duration) -> Exit {
        let exit = match self.exit() {
            Some(e) => e,
            None => {
                self.command("term\n").await;
                match tokio::time::timeout(grace, self.wait()).await {
                    Ok(e) => e,
                    Err(_) => {
                        self.command("kill\n").await;
                        self.wait().await
                    }
                }
            }
        };
        self.cleaned().await;
        exit
    }
}
