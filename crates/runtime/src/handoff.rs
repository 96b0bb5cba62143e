//! Handing a shim its file descriptors without running code between fork and exec.
//!
//! The shim needs a handful of descriptors at fixed numbers (the event and command pipes, the
//! network namespace, the secrets memfd, the sidecars' output pipes). Placing them with `dup2`
//! in a `pre_exec` hook would force a real `fork` of the server, whose cost (copying its page
//! tables) grows with the server's memory: with many instances or a 10 000-task execution it
//! became the server's largest cost per start. Instead the server starts the shim with
//! `posix_spawn` (a `vfork`-style clone that copies nothing) with one end of a Unix socket pair
//! as its stdin, and sends the descriptors over it (`SCM_RIGHTS`); the shim places them at their
//! numbers before anything else and puts `/dev/null` on its stdin.
//!
//! The message: the target numbers as little-endian `i32`s, one per descriptor, in the order
//! of the descriptors in the `SCM_RIGHTS` control message (at most [`MAX_FDS`]).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The most descriptors one hand-off carries: four fixed ones and two per sidecar (at most
/// nine), with room to spare.
pub const MAX_FDS: usize = 32;

/// Sends `(descriptor, target number)` pairs to the shim on `sock`.
///
/// Errors: more than [`MAX_FDS`] pairs, or the socket refused the message (the shim is gone).
pub fn send(sock: &UnixStream, fds: &[(RawFd, i32)]) -> std::io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(std::io::Error::other(format!(
            "{} descriptors for the shim: at most {MAX_FDS}",
            fds.len()
        )));
    }
    let targets: Vec<u8> = fds.iter().flat_map(|(_, t)| t.to_le_bytes()).collect();
    let raw: Vec<RawFd> = fds.iter().map(|(fd, _)| *fd).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&targets)],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

/// In the shim, first thing: receives the descriptors on stdin, places each at its target
/// number (without close-on-exec, as a `dup2` in the child would have), and puts `/dev/null` on
/// stdin. Returns how many descriptors were placed.
///
/// Errors: stdin is not the server's socket, the message is malformed, or a `dup2` failed.
pub fn receive() -> std::io::Result<usize> {
    let mut buf = [0u8; MAX_FDS * 4];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, received) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(0, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(std::io::Error::from)?;
        let mut received: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the kernel just installed these descriptors in this process; nothing
                // else owns them.
                received.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, received)
    };
    let targets: Vec<i32> = buf[..len]
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if len % 4 != 0 || targets.len() != received.len() {
        return Err(std::io::Error::other(format!(
            "the server sent {} descriptors for {} targets",
            received.len(),
            targets.len()
        )));
    }
    // The received descriptors took the lowest free numbers, which may be targets: move every
    // one above the targets first, then place them.
    let high: Vec<OwnedFd> = received
        .iter()
        .map(|fd| {
            // SAFETY: fcntl on a descriptor this process owns.
            let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                // SAFETY: F_DUPFD_CLOEXEC just made `n`; nothing else owns it.
                Ok(unsafe { OwnedFd::from_raw_fd(n) })
            }
        })
        .collect::<std::io::Result<_>>()?;
    drop(received);
    for (fd, target) in high.iter().zip(&targets) {
        // SAFETY: dup2 onto a number this process reserves for the server's descriptors.
        if unsafe { libc::dup2(fd.as_raw_fd(), *target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: replaces stdin, which this process owns.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(targets.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// The child side of [`descriptors_arrive_at_their_numbers`]: runs only in the process
    /// that test starts (marked by the environment), with the socket as its stdin.
    #[test]
    fn child_side() {
        if std::env::var_os("SKIFF_HANDOFF_CHILD").is_none() {
            return;
        }
        assert_eq!(receive().unwrap(), 2);
        for (fd, text) in [(40, "hello from 40"), (41, "!")] {
            // SAFETY: receive placed these descriptors; this process owns them.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            f.write_all(text.as_bytes()).unwrap();
        }
        // Stdin is /dev/null now.
        let mut rest = Vec::new();
        std::io::stdin().read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    /// The round trip through a real socket pair into a process of its own (this test binary
    /// again, running [`child_side`]), as the server hands descriptors to a shim.
    #[test]
    fn descriptors_arrive_at_their_numbers() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (mut r, w) = UnixStream::pair().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "handoff::tests::child_side", "--test-threads=1"])
            .env("SKIFF_HANDOFF_CHILD", "1")
            .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        send(&ours, &[(w.as_raw_fd(), 40), (w.as_raw_fd(), 41)]).unwrap();
        drop((ours, w));
        assert!(child.wait().unwrap().success());
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello from 40!");
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let fds = vec![(0, 3); MAX_FDS + 1];
        assert!(send(&ours, &fds).is_err());
    }
}
