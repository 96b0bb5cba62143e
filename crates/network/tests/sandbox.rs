//! Real sandboxes on a real bridge (needs root): an instance namespace reaches a listener on
//! the gateway's allowed port, not one on another port, and everything is gone after stop.

use skiff_network::{Network, NetworkConfig, Owner};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;

/// Connects from inside the namespace `ns` to `addr` on a fresh thread; true if it connected.
fn connect_from(ns: std::os::fd::BorrowedFd<'_>, addr: SocketAddr) -> bool {
    let ns = ns.try_clone_to_owned().unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_ok()
    })
    .join()
    .unwrap()
}

fn owner() -> Owner {
    Owner {
        project: "default".into(),
        project_number: 1,
        instance_id: "i".into(),
        service_account: "sa@x".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_reach_only_allowed_gateway_ports() {
    let dir = tempfile::tempdir().unwrap();
    let subnet = format!("10.231.{}.0/24", std::process::id() % 200 + 20)
        .parse()
        .unwrap();
    let allowed = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let denied = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let allowed_port = allowed.local_addr().unwrap().port();
    let net = Network::start(
        dir.path(),
        NetworkConfig {
            subnet,
            deny: vec![],
            host_ports: vec![allowed_port],
            prepared: 2,
        },
    )
    .await
    .expect("network starts");
    let gw = net.gateway();
    let a = net.acquire(owner()).await.expect("sandbox");
    let b = net.acquire(owner()).await.expect("sandbox");
    assert_ne!(a.ip(), b.ip());
    assert_eq!(net.owner_of(a.ip()), Some(owner()));
    let ok = connect_from(a.netns(), SocketAddr::from((gw, allowed_port)));
    let blocked = connect_from(
        a.netns(),
        SocketAddr::from((gw, denied.local_addr().unwrap().port())),
    );
    // Another instance: nothing listens there, but the attempt must not even reach it.
    let host_if = a.host_interface().to_string();
    drop(a);
    // A let-go sandbox's namespace goes with its last reference, and takes the veth pair
    // with it: nothing of the lease (its netlink connection inside, say) may keep it.
    let link = std::path::PathBuf::from(format!("/sys/class/net/{host_if}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while link.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let gone_before_stop = !link.exists();
    drop(b);
    net.stop().await;
    assert!(ok, "the allowed gateway port is reachable");
    assert!(!blocked, "another host port is not");
    assert!(
        gone_before_stop,
        "the veth of a let-go sandbox goes with its namespace"
    );
    assert!(!link.exists());
    let _ = Ipv4Addr::LOCALHOST;
}

/// With every address of the subnet in use, a start waits for one to be handed back (an
/// instance stopping) instead of failing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waits_for_an_address_when_every_one_is_in_use() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    // A /29: five instance addresses besides the network, the gateway and the broadcast.
    let subnet = format!("10.233.{}.8/29", std::process::id() % 200 + 20)
        .parse()
        .unwrap();
    let net = Network::start(
        dir.path(),
        NetworkConfig {
            subnet,
            deny: vec![],
            host_ports: vec![],
            prepared: 0,
        },
    )
    .await
    .expect("network starts");
    let mut leases = Vec::new();
    for _ in 0..5 {
        let lease = tokio::time::timeout(Duration::from_secs(10), net.acquire(owner()))
            .await
            .expect("a free address is given at once")
            .expect("sandbox");
        leases.push(lease);
    }
    let waiting = tokio::spawn({
        let net = net.clone();
        async move { net.acquire(owner()).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waited = !waiting.is_finished();
    let handed_back = leases.pop().unwrap().ip();
    let got = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    drop(leases);
    let ip = match got {
        Ok(Ok(Ok(lease))) => {
            let ip = lease.ip();
            drop(lease);
            Some(ip)
        }
        _ => None,
    };
    net.stop().await;
    assert!(
        waited,
        "the sixth start waits while every address is in use"
    );
    assert_eq!(ip, Some(handed_back), "it gets the address handed back");
}
