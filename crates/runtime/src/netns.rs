//! TCP connections into an instance's network namespace.
//!
//! A socket belongs to the network namespace its creating thread was in at `socket(2)` time,
//! and stays there wherever it is used afterwards. So a blocking-pool thread enters the
//! instance's namespace, creates the socket, and returns to the host namespace before doing
//! anything else; tokio then connects and drives the socket as any other. The instance has
//! only loopback, and the server's ports are in another namespace: nothing inside can reach
//! them.

use nix::sched::{setns, CloneFlags};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::OnceLock;
use tokio::net::{TcpSocket, TcpStream};

fn host_netns() -> &'static std::fs::File {
    static HOST: OnceLock<std::fs::File> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::File::open("/proc/self/ns/net")
            .expect("the server's own network namespace is readable")
    })
}

/// Creates a TCP socket inside the namespace `netns` (a `/proc/PID/ns/net` file).
fn socket_in(netns: &std::fs::File) -> io::Result<socket2::Socket> {
    let host = host_netns();
    setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None);
    if let Err(e) = setns(host.as_fd(), CloneFlags::CLONE_NEWNET) {
        // This thread would keep serving the pool from inside an instance: never allowed.
        eprintln!("fatal: cannot return to the host network namespace: {e}");
        std::process::abort();
    }
    let sock = sock?;
    sock.set_nonblocking(true)?;
    sock.set_nodelay(true)?;
    Ok(sock)
}

/// Connects to `127.0.0.1:port` inside the instance whose namespace is `netns`.
pub async fn connect(netns: std::sync::Arc<std::fs::File>, port: u16) -> io::Result<TcpStream> {
    // Make sure the host namespace handle is taken from the host, not from inside.
    host_netns();
    let sock = tokio::task::spawn_blocking(move || socket_in(&netns))
        .await
        .map_err(io::Error::other)??;
    let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    sock.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
}
