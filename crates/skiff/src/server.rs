//! `skiff server`: opens the data dir, cleans what a previous run left, restores every stored
//! service, then serves the control API and the ingress until SIGTERM or SIGINT, when it
//! drains requests, stops every instance and exits 0.

use anyhow::{bail, Context};
use skiff_api::controller::Controller;
use skiff_api::ApiState;
use skiff_serving::{Serving, ServingConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Where services are served over HTTP (the ingress).
    #[arg(
        long = "http",
        visible_alias = "ingress",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    ingress: String,
    /// Where services are served over HTTPS (TLS 1.2/1.3, HTTP/2 or HTTP/1.1 by ALPN, the
    /// certificate by SNI), e.g. 0.0.0.0:443 [default: no HTTPS]. Plain HTTP to a host that has
    /// a certificate is then redirected here.
    #[arg(long, value_name = "ADDR")]
    https: Option<String>,
    /// The DNS name services get their URLs under: `https://SERVICE.DOMAIN` (with --https;
    /// `TAG---SERVICE-PROJECT.DOMAIN` for tags and projects other than `default`, so one
    /// `*.DOMAIN` certificate covers all) [default: localhost, `http://SERVICE.localhost:PORT`].
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
    /// The certificate chain (PEM, leaf first) the HTTPS ingress serves by default, reloaded
    /// when the file changes; needs --tls-key and --https.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    acme: crate::acme::AcmeArgs,
    /// A YAML file whose keys are these flags without their dashes (`api: 0.0.0.0:8081`);
    /// a flag on the command line wins over the file's key.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Where the control API listens.
    #[arg(long, default_value = "127.0.0.1:8081")]
    api: String,
    /// The addresses DNS records should point at for a domain mapping (`A` for IPv4, `AAAA`
    /// for IPv6) [default: the --http address if it names one; for 0.0.0.0 or [::], the
    /// address this host reaches the internet from].
    #[arg(long, value_name = "IP,...", value_delimiter = ',')]
    public_address: Vec<std::net::IpAddr>,
    /// Where the Pub/Sub API (gRPC and REST, as `PUBSUB_EMULATOR_HOST` clients call it)
    /// listens. Callers from loopback need no credentials; others need the admin token.
    #[arg(long, default_value = "127.0.0.1:8085")]
    pubsub: String,
    /// Idle time before an instance that no min-instances holds is stopped.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    scale_to_zero_after: Duration,
    /// Price table (YAML or JSON) for usage reports [default: Cloud Run's tier-1 list prices
    /// and free tier].
    #[arg(long, value_name = "FILE")]
    prices: Option<std::path::PathBuf>,
    /// The instance subnet: the bridge takes its first address, every instance and job task
    /// one of the others. It must not overlap any of the host's routes.
    #[arg(long, value_name = "CIDR", default_value_t = skiff_network::default_subnet())]
    network_subnet: ipnet::Ipv4Net,
    /// Destinations instances may not reach, besides the host, other instances, loopback,
    /// link-local and multicast addresses, which they never reach.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    network_deny: Vec<ipnet::Ipv4Net>,
    /// Instances and job tasks get loopback only: no outbound traffic, DNS or metadata server.
    #[arg(long)]
    no_instance_network: bool,
    /// Network sandboxes kept made ahead of demand, so that a cold start does not wait for one.
    #[arg(long, value_name = "N", default_value_t = 4)]
    network_prepared: usize,
    /// Revisions that keep one instance made ahead of demand (container created: namespaces,
    /// root filesystem, cgroup, network), so that a start from zero runs only the app; each
    /// holds a shim process, a network sandbox and its mounts. 0 turns it off.
    #[arg(long, value_name = "N", default_value_t = 8)]
    prepared_instances: usize,
    /// How long log entries are kept (Cloud Logging's default bucket keeps 30 days).
    #[arg(long, default_value = "30d", value_parser = parse_days)]
    log_retention: Duration,
    /// How many bytes of log entries one service or job keeps; past it, its oldest go.
    #[arg(long, default_value = "1Gi", value_parser = parse_size)]
    log_size_cap: u64,
    /// Run `skiff images prune` this often (e.g. 24h) [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    prune_images_every: Option<Duration>,
    /// How long a client has to send a request's head (and how long an idle HTTP/1.1
    /// keep-alive connection is kept) before the ingress closes the connection.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// How long an HTTP/2 connection may go without a request in flight before the ingress
    /// closes it (a GOAWAY, so nothing in progress is cut).
    #[arg(long, value_name = "DURATION", default_value = "75s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// The most connections one client address may hold open on the ingress; those past it
    /// are closed at once. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections_per_client: usize,
    /// Threads per ingress listener (HTTP, and HTTPS with --https), each with a runtime of its
    /// own that accepts, proxies and answers its connections' requests (nginx's worker
    /// processes) [default: one per core]. 0: the ingress shares the server's runtime.
    #[arg(long, value_name = "N")]
    ingress_workers: Option<usize>,
    /// The time limit of a source build (Cloud Build's default).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    build_timeout: Duration,
    /// CPU limit of a source build, e.g. 1, 2, 500m.
    #[arg(long, default_value = "2", value_parser = parse_cpu)]
    build_cpu: u64,
    /// The largest source archive (compressed) a build takes; a larger upload gets 413.
    #[arg(long, default_value = "512Mi", value_parser = parse_size)]
    build_max_source: u64,
    /// Memory limit of a source build (buildah and its RUN steps together).
    #[arg(long, default_value = "4Gi", value_parser = parse_size)]
    build_memory: u64,
    /// The most disk buildah's storage (the source builds' layer cache and the base images
    /// they pulled) may take; past it, after a build or `skiff images prune`, whole services',
    /// jobs' and image names' caches are dropped, least recently built first, never the one
    /// the build just made or used. 0: no layer cache is kept.
    #[arg(long, value_name = "SIZE", default_value = "10Gi", value_parser = parse_size_or_zero)]
    build_cache_max: u64,
    /// The base image source builds of a language use when no Dockerfile is given:
    /// LANG=REF with LANG one of python, nodejs, go, go-run (what a Go binary runs on),
    /// static [default: python:3.12-slim, node:22-slim, golang:1.23,
    /// gcr.io/distroless/static-debian12, busybox:stable].
    #[arg(long, value_name = "LANG=REF", value_parser = parse_base_image)]
    build_base_image: Vec<(String, String)>,
    /// Host directories services and jobs may mount read-only (as `nfs` volumes with
    /// `server: localhost`), each with what is below it [default: none].
    #[arg(long, value_name = "PATH,...", value_delimiter = ',')]
    allow_host_dir: Vec<std::path::PathBuf>,
}

fn parse_cpu(s: &str) -> Result<u64, String> {
    skiff_model::parse_cpu(s).map_err(|e| e.to_string())
}

fn parse_base_image(s: &str) -> Result<(String, String), String> {
    let (lang, image) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: give LANG=REF, e.g. python=python:3.12-slim"))?;
    if !skiff_build::detect::LANGUAGES.contains(&lang) {
        return Err(format!(
            "{lang:?} is no language Skiff detects: use one of {}",
            skiff_build::detect::LANGUAGES.join(", ")
        ));
    }
    skiff_image::parse_reference(image).map_err(|e| format!("{image:?}: {e}"))?;
    Ok((lang.to_string(), image.to_string()))
}

impl ServerArgs {
    /// The ingress's limits from the flags.
    fn ingress_limits(&self) -> skiff_serving::IngressLimits {
        skiff_serving::IngressLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections_per_client: self.max_connections_per_client,
            ..Default::default()
        }
    }
}

/// What domain mappings tell users to point DNS at: `--public-address` if given; else the
/// ingress's own address if it names one; else (0.0.0.0 or [::]) the local address of the
/// host's route to the internet, found by connecting a UDP socket, which sends nothing.
fn public_addresses(
    given: &[std::net::IpAddr],
    ingress: std::net::SocketAddr,
) -> Vec<std::net::IpAddr> {
    if !given.is_empty() {
        return given.to_vec();
    }
    if !ingress.ip().is_unspecified() {
        return vec![ingress.ip()];
    }
    // Documentation addresses (RFC 5737, RFC 3849): only the route to them is looked up.
    let probes: &[(&str, &str)] = if ingress.is_ipv4() {
        &[("0.0.0.0:0", "192.0.2.1:53")]
    } else {
        &[
            ("0.0.0.0:0", "192.0.2.1:53"),
            ("[::]:0", "[2001:db8::1]:53"),
        ]
    };
    let found: Vec<std::net::IpAddr> = probes
        .iter()
        .filter_map(|(bind, to)| {
            let sock = std::net::UdpSocket::bind(bind).ok()?;
            sock.connect(to).ok()?;
            let ip = sock.local_addr().ok()?.ip();
            (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
        })
        .collect();
    if found.is_empty() {
        tracing::warn!("domain mappings cannot say what DNS records to create: no route to the internet; pass --public-address IP");
    }
    found
}

/// A duration, also in days (`30d`).
fn parse_days(s: &str) -> Result<Duration, String> {
    match s.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) if days > 0 => Ok(Duration::from_secs(days * 24 * 3600)),
        _ => parse_duration(s),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    skiff_model::parse_size(s).map_err(|e| e.to_string())
}

/// A size as [`parse_size`] reads it, or `0` (for limits where 0 means "keep nothing").
fn parse_size_or_zero(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_size(s).map_err(|e| format!("{e} (or 0)"))
}

/// Reads `--prices FILE`; an error names the file and the field.
fn load_prices(path: Option<&Path>) -> anyhow::Result<skiff_metering::Prices> {
    let Some(path) = path else {
        return Ok(skiff_metering::Prices::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --prices {}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "invalid --prices {}: {e}: give the shape of `prices` in `skiff billing report --format json`",
            path.display()
        )
    })
}

fn pubsub_addr(args: &ServerArgs) -> anyhow::Result<std::net::SocketAddr> {
    args.pubsub.parse().with_context(|| {
        format!(
            "invalid --pubsub {:?}: use HOST:PORT like 127.0.0.1:8085",
            args.pubsub
        )
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    skiff_model::parse_duration(s).map_err(|e| e.0)
}

/// Reads a secret file, or creates it (mode 0600) with 32 random bytes as hex.
fn secret(path: &Path) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let value = hex::encode(rand::random::<[u8; 32]>());
    skiff_cli::write_private(path, value.as_bytes())?;
    Ok(value)
}

pub fn run(global: &skiff_cli::GlobalArgs, args: ServerArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("skiff server needs root: it creates namespaces, overlay mounts and cgroups; run it with sudo");
    }
    let data_dir = global.data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    if let Some(n) = args.ingress_workers {
        skiff_serving::set_ingress_workers(n);
    }
    let ingress_addr: std::net::SocketAddr = args.ingress.parse().with_context(|| {
        format!(
            "invalid --http {:?}: use HOST:PORT like 127.0.0.1:8080",
            args.ingress
        )
    })?;
    let api_addr: std::net::SocketAddr = args.api.parse().with_context(|| {
        format!(
            "invalid --api {:?}: use HOST:PORT like 127.0.0.1:8081",
            args.api
        )
    })?;

    pubsub_addr(&args)?;
    let https_addr = https_addr(&args)?;
    args.acme
        .check(https_addr.is_some(), args.domain.is_some())?;
    skiff_model::ServiceUrls::new(args.domain.as_deref(), 0, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // A bad pair stops start-up here, naming the files.
    let user_cert = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            if https_addr.is_none() {
                bail!("--tls-cert and --tls-key need --https ADDR (e.g. --https 0.0.0.0:443) to serve them on");
            }
            let mut user = skiff_tls::UserCertificate::new(cert.clone(), key.clone());
            let certs = skiff_tls::CertStore::new();
            user.install(&certs).map_err(|e| anyhow::anyhow!("{e}"))?;
            Some((user, certs))
        }
        (None, None) => None,
        _ => bail!("give both --tls-cert FILE and --tls-key FILE, or neither"),
    };

    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    if https_addr.is_some() && user_cert.is_none() && args.acme.acme_directory.is_none() {
        tracing::warn!(
            "--https has no certificate to serve yet: TLS handshakes fail until one exists; give --tls-cert and --tls-key, or --acme-directory to obtain them"
        );
    }

    // Before any thread exists: libcontainer's cleanup must not run on tokio threads.
    let swept = skiff_runtime::sweep::sweep(&Serving::instances_dir(&data_dir));
    if swept > 0 {
        tracing::info!("cleaned {swept} instance(s) left by a previous run");
    }
    let prices = load_prices(args.prices.as_deref())?;
    let admin_token = secret(&data_dir.join("admin.token"))?;
    let signing_key = secret(&data_dir.join("signing.key"))?;

    let run_dir = data_dir.join("run");
    skiff_runtime::sweep::mount_run_dir(&run_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = rt.block_on(serve(
        data_dir,
        args,
        Addrs {
            ingress: ingress_addr,
            https: https_addr,
            api: api_addr,
        },
        user_cert,
        admin_token,
        signing_key,
        prices,
    ));
    // Every instance has ended (or none started, when serving failed).
    drop(rt);
    skiff_runtime::sweep::unmount_run_dir(&run_dir);
    served
}

/// The listeners' addresses, checked.
struct Addrs {
    ingress: std::net::SocketAddr,
    https: Option<std::net::SocketAddr>,
    api: std::net::SocketAddr,
}

fn https_addr(args: &ServerArgs) -> anyhow::Result<Option<std::net::SocketAddr>> {
    args.https
        .as_deref()
        .map(|a| {
            a.parse().with_context(|| {
                format!("invalid --https {a:?}: use HOST:PORT like 0.0.0.0:443 or 127.0.0.1:8443")
            })
        })
        .transpose()
}

/// Blocks of this many bytes or more get their own mapping, given back to the system when
/// freed (see [`trim_heap`]).
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// How often the server hands freed heap memory back to the system (see [`trim_heap`]): soon
/// enough that what a burst of requests and instance starts freed is not still counted a few
/// seconds after it ended (30 MiB of 66 after 1 000 requests over 200 instances and 100
/// deploys, BENCHMARKS.md), rarely enough that pages given back and touched again cost
/// nothing measurable.
const HEAP_TRIM_EVERY: Duration = Duration::from_secs(5);

/// Hands the heap's free pages back to the system every [`HEAP_TRIM_EVERY`]. glibc's malloc
/// keeps what a burst freed (10 000 deploys, each starting and stopping an instance, leave
/// the control plane with a fraction of the memory they touched) in per-thread arenas, where
/// it counts in the server's RSS until the same thread allocates again; `malloc_trim` returns
/// it. A walk of the free lists, a few milliseconds at most, off the async workers.
///
/// It also fixes glibc's mmap threshold at [`MMAP_THRESHOLD`]: by default the threshold rises
/// to the size of the largest block freed (up to 32 MiB), after which the whole list of
/// 10 000 services (10 MB, kept ready between calls) sits in an arena among small objects;
/// each new list then lands past the old one and the small objects fill the holes, and that
/// memory can no longer be given back whole pages at a time.
fn trim_heap() -> tokio::task::JoinHandle<()> {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt has no preconditions; it only changes where later blocks come from.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEAP_TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim has no preconditions; it only releases free memory.
            let trimmed = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
            #[cfg(not(target_env = "gnu"))]
            let trimmed: Result<(), tokio::task::JoinError> = Ok(());
            if trimmed.is_err() {
                return;
            }
        }
    })
}

/// How soon after services change the kept `services.list` answers are brought up to date (see
/// [`keep_lists`]): within a second, a list after a deploy finds its answer ready; at most
/// once a second, a stream of deploys costs one pass over each answer per second.
const LIST_REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Keeps the answers of `services.list` that gcloud and the CLI ask for ready from the start
/// ([`skiff_api::list_cache::ListCache::warm`]), then brings every kept answer up to date
/// each [`LIST_REFRESH_EVERY`] in which services changed. All of it in the background: the API
/// answers meanwhile, building what a call needs.
fn keep_lists(state: Arc<ApiState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let kept = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || {
                let version = state.controller.store.services_version();
                (state.lists.warm(&state.controller.store), version)
            })
        };
        let Ok((warmed, mut seen)) = kept.await else {
            return;
        };
        if let Err(e) = warmed {
            tracing::warn!("building the kept service lists: {}", e.message);
        }
        let mut tick = tokio::time::interval(LIST_REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let version = state.controller.store.services_version();
            if version == seen {
                continue;
            }
            seen = version;
            let state = state.clone();
            let refreshed =
                tokio::task::spawn_blocking(move || state.lists.refresh(&state.controller.store));
            match refreshed.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!("bringing the kept service lists up to date: {}", e.message)
                }
                Err(_) => return,
            }
        }
    })
}

/// How often `--tls-cert`/`--tls-key` are read again to see whether they changed.
const USER_CERT_POLL: Duration = Duration::from_secs(2);

/// Reloads the user's certificate when its files change, for as long as the server runs; a
/// pair that does not load is logged (file names and the reason, never key material) and the
/// certificate being served is kept.
fn watch_user_certificate(
    mut user: skiff_tls::UserCertificate,
    certs: Arc<skiff_tls::CertStore>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(USER_CERT_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (u, c) = (user, certs.clone());
            let (u, outcome) = match tokio::task::spawn_blocking(move || {
                let mut u = u;
                let r = u.reload_if_changed(&c);
                (u, r)
            })
            .await
            {
                Ok(r) => r,
                Err(_) => return,
            };
            user = u;
            match outcome {
                Some(Ok(())) => tracing::info!("reloaded the --tls-cert certificate"),
                Some(Err(e)) => {
                    tracing::warn!("{e}; still serving the previous certificate")
                }
                None => {}
            }
        }
    })
}

async fn serve(
    data_dir: std::path::PathBuf,
    args: ServerArgs,
    addrs: Addrs,
    user_cert: Option<(skiff_tls::UserCertificate, Arc<skiff_tls::CertStore>)>,
    admin_token: String,
    signing_key: String,
    prices: skiff_metering::Prices,
) -> anyhow::Result<()> {
    let (ingress_addr, api_addr) = (addrs.ingress, addrs.api);
    let ingress = tokio::net::TcpListener::bind(ingress_addr)
        .await
        .with_context(|| format!("cannot listen on --http {ingress_addr}"))?;
    let https_listener = match addrs.https {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on --https {a}"))?,
        ),
        None => None,
    };
    // One certificate store for the process: the user's certificate is its default, and
    // ACME and domain mappings add theirs (through `Serving::certs`).
    let (user_cert, certs) = match user_cert {
        Some((user, certs)) => (Some(user), certs),
        None => (None, skiff_tls::CertStore::new()),
    };
    let https_port = match &https_listener {
        Some(l) => Some(l.local_addr()?.port()),
        None => None,
    };
    let https = skiff_serving::HttpsConfig {
        certs: certs.clone(),
        http01: skiff_tls::Http01Challenges::new(),
        port: https_port,
    };
    let urls = skiff_model::ServiceUrls::new(
        args.domain.as_deref(),
        ingress.local_addr()?.port(),
        https_port,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let api = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("cannot listen on --api {api_addr}"))?;
    let pubsub_addr = pubsub_addr(&args)?;
    let pubsub_listener = tokio::net::TcpListener::bind(pubsub_addr)
        .await
        .with_context(|| format!("cannot listen on --pubsub {pubsub_addr}"))?;
    let store = Arc::new(skiff_store::Store::open(&data_dir.join("skiff.db"))?);
    let pubsub = skiff_pubsub::Broker::open(&data_dir.join("pubsub"))
        .map_err(|e| anyhow::anyhow!("opening the Pub/Sub store: {e}"))?;
    let images = Arc::new(skiff_image::ImageStore::open(&data_dir.join("images"))?);
    let secrets = Arc::new(skiff_secrets::SecretStore::open(&data_dir)?);
    let mut host_dirs = Vec::new();
    for d in &args.allow_host_dir {
        let c = std::fs::canonicalize(d).with_context(|| {
            format!(
                "invalid --allow-host-dir {}: give an existing directory",
                d.display()
            )
        })?;
        anyhow::ensure!(
            c.is_dir(),
            "invalid --allow-host-dir {}: not a directory",
            d.display()
        );
        host_dirs.push(c);
    }
    // Instances a killed server left metering end at their last checkpoint.
    let closed = store.close_open_usage()?;
    if closed > 0 {
        tracing::info!("closed the usage of {closed} instance(s) at their last checkpoint");
    }
    let meters = Arc::new(skiff_metering::Registry::new());
    let metrics = Arc::new(skiff_metering::Metrics::new());
    let ingress_port = ingress.local_addr()?.port();
    let network = if args.no_instance_network {
        None
    } else {
        let network = skiff_network::Network::start(
            &data_dir,
            skiff_network::NetworkConfig {
                subnet: args.network_subnet,
                deny: args.network_deny.clone(),
                // The ingress's ports on the gateway: HTTP, and HTTPS so that a service calls
                // another by its `https://` URL under --domain; and the Pub/Sub API.
                host_ports: std::iter::once(ingress_port)
                    .chain(https_port)
                    .chain(Some(pubsub_listener.local_addr()?.port()))
                    .collect(),
                prepared: args.network_prepared,
            },
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot set up instance networking: {e} (or run with --no-instance-network)"
            )
        })?;
        Some(network)
    };
    let logs = skiff_runtime::logs::LogSink::open(
        &data_dir.join("logs"),
        skiff_runtime::logs::Limits {
            retention: args.log_retention,
            max_bytes_per_resource: args.log_size_cap,
        },
    )?;
    let serving = Serving::new(ServingConfig {
        network: network.clone(),
        logs,
        meters: meters.clone(),
        metrics: metrics.clone(),
        data_dir: data_dir.clone(),
        shim_exe: std::env::current_exe().context("cannot find the skiff executable")?,
        scale_to_zero_after: args.scale_to_zero_after,
        token_secret: signing_key.into_bytes(),
        secrets: secrets.clone(),
        host_dirs,
        https,
        urls: urls.clone(),
        prepared_instances: args.prepared_instances,
    });
    let cert_watch = user_cert.map(|u| watch_user_certificate(u, certs.clone()));
    let heap_trim = trim_heap();
    // Before the restore below sets the services' routes, so each gets its certificate.
    let acme = crate::acme::start(&args.acme, &data_dir, &serving)?;
    let platform = match &network {
        Some(net) => {
            match services_for_instances(
                net,
                &serving,
                InstanceIngress {
                    http: ingress_addr,
                    https: addrs.https.zip(https_port),
                    certs: certs.clone(),
                },
                args.ingress_limits(),
            )
            .await
            {
                Ok(p) => Some(p),
                Err(e) => {
                    net.stop().await;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let jobs = skiff_jobs::Jobs::new(
        skiff_jobs::JobsConfig {
            shim_exe: std::env::current_exe().context("cannot find the skiff executable")?,
            instances_dir: Serving::instances_dir(&data_dir),
            state_root: data_dir.join("run").join("state"),
            logs: serving.logs().clone(),
            meters: meters.clone(),
            network: network.clone(),
            secrets,
        },
        store.clone(),
        images.clone(),
    );
    let minter = {
        let serving = serving.clone();
        Arc::new(move |aud: &str| serving.mint_token(Some(aud)))
            as skiff_jobs::scheduler::TokenMinter
    };
    let scheduler =
        skiff_jobs::scheduler::Scheduler::new(store.clone(), jobs.clone(), urls.clone(), minter);
    let checkpoints =
        skiff_api::usage::start_checkpoints(meters.clone(), store.clone(), metrics.clone());
    let controller = Controller::new(store.clone(), images, serving.clone(), ingress_port);
    controller
        .restore()
        .await
        .map_err(|e| anyhow::anyhow!("restoring services: {}", e.message))?;
    let triggers = skiff_events::Triggers::new(store.clone(), pubsub.clone(), urls.clone());
    // Domain mappings report from the certificate store whether their certificate is there.
    let domains = skiff_domains::DomainMappings::new(
        store.clone(),
        certs.clone(),
        skiff_domains::Settings {
            addresses: public_addresses(&args.public_address, ingress_addr),
            http_port: ingress_port,
            https_port,
        },
        {
            let serving = serving.clone();
            Box::new(move |table| serving.set_domains(table))
        },
    )
    .context("loading domain mappings")?;
    // Set before resuming, so executions a previous run left running are reported too.
    jobs.on_finished({
        let triggers = triggers.clone();
        Arc::new(move |ns: &str, job: &str, _execution: &str| {
            let (triggers, ns, job) = (triggers.clone(), ns.to_string(), job.to_string());
            tokio::spawn(async move {
                triggers
                    .audit(
                        &ns,
                        "google.cloud.run.v1.Jobs.RunJob",
                        &format!("namespaces/{ns}/jobs/{job}"),
                    )
                    .await;
            });
        })
    });
    triggers.set_job_launcher({
        // Weak: the jobs engine's finished hook holds the triggers, so a strong reference
        // here would be a cycle that keeps both (and the log writer they feed) alive at exit.
        let (store, jobs) = (store.clone(), Arc::downgrade(&jobs));
        Arc::new(move |ns: &str, job: &str, env: Vec<(String, String)>| {
            let jobs = jobs
                .upgrade()
                .ok_or_else(|| "the server is stopping".to_string())?;
            let j: skiff_model::Job = store
                .get_object(skiff_store::kind::JOB, ns, job)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("job {job} does not exist in project {ns}"))?;
            let o = skiff_jobs::Overrides {
                env,
                ..Default::default()
            };
            jobs.execute(ns, &j, &o)
                .map(|e| e.metadata.name)
                .map_err(|e| e.to_string())
        })
    });
    let resumed = jobs.resume().context("resuming job executions")?;
    if resumed > 0 {
        tracing::info!("resumed {resumed} job execution(s)");
    }
    scheduler.start();
    if let Some(every) = args.prune_images_every {
        skiff_api::controller::start_pruning(controller.clone(), every);
    }
    let mut base_images = skiff_build::detect::default_base_images();
    base_images.extend(args.build_base_image.iter().cloned());
    let own_registry = if api_addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", api.local_addr()?.port())
    } else {
        api.local_addr()?.to_string()
    };
    let builds = skiff_build::Builds::new(
        skiff_build::BuildsConfig {
            root: data_dir.join("builds"),
            own_registry: Some(own_registry),
            admin_token: admin_token.clone(),
            timeout: args.build_timeout,
            cpu_millis: args.build_cpu,
            memory_bytes: args.build_memory,
            base_images,
            max_source_bytes: 8 << 30,
            max_archive_bytes: args.build_max_source,
            cache_max_bytes: args.build_cache_max,
        },
        store.clone(),
        controller.images.clone(),
        network.clone(),
        controller.puller.registries().clone(),
    );
    let failed = builds
        .recover()
        .await
        .map_err(|e| anyhow::anyhow!("recovering builds: {e}"))?;
    if failed > 0 {
        tracing::info!("{failed} build(s) a previous run left unfinished are marked FAILURE");
    }
    let state = Arc::new(ApiState {
        jobs: jobs.clone(),
        scheduler,
        controller,
        admin_token: admin_token.clone(),
        tmp_dir: data_dir.join("tmp"),
        metrics: metrics.clone(),
        prices,
        builds: builds.clone(),
        pubsub: pubsub.clone(),
        triggers: triggers.clone(),
        domains,
        lists: Default::default(),
    });
    let lists = keep_lists(state.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let api_task = tokio::spawn({
        let app = skiff_api::router(state);
        let stop = wait_stop(stop_rx.clone());
        async move { axum::serve(api, app).with_graceful_shutdown(stop).await }
    });
    let ingress_task = tokio::spawn(
        skiff_serving::serve_ingress_workers(
            serving.clone(),
            ingress,
            None,
            stop_rx.clone(),
            Duration::from_secs(30),
            args.ingress_limits(),
        )
        .context("cannot start the ingress workers")?,
    );
    let https_task = match https_listener {
        Some(listener) => Some(tokio::spawn(
            skiff_serving::serve_ingress_workers(
                serving.clone(),
                listener,
                Some(Arc::new(skiff_tls::server_config(certs.clone()))),
                stop_rx.clone(),
                Duration::from_secs(30),
                args.ingress_limits(),
            )
            .context("cannot start the HTTPS ingress workers")?,
        )),
        None => None,
    };
    pubsub.set_pusher(skiff_pubsub::push::starter(
        skiff_pubsub::push::PushSettings {
            ingress_port,
            domain: urls.domain().map(str::to_string),
            mint: {
                let serving = serving.clone();
                Arc::new(move |account: &str, aud: &str| serving.mint_token_for(account, Some(aud)))
            },
        },
    ));
    // Instances reach the Pub/Sub API on the gateway (unless it already listens on every
    // address), and call it without credentials, as loopback callers do.
    let pubsub_for_instances = match &network {
        Some(net) if !pubsub_addr.ip().is_unspecified() => {
            let at = (net.gateway(), pubsub_listener.local_addr()?.port());
            Some(tokio::net::TcpListener::bind(at).await.with_context(|| {
                format!(
                    "cannot listen for instances' Pub/Sub calls on {}:{}",
                    at.0, at.1
                )
            })?)
        }
        _ => None,
    };
    let pubsub_task = tokio::spawn({
        let serving = serving.clone();
        let check: skiff_pubsub::listener::TokenCheck = Arc::new(move |t: &str| {
            use skiff_pubsub::iam::Caller;
            if skiff_api::same_token(t, &admin_token) || serving.token_is_admin(t) {
                Some(Caller::Admin)
            } else {
                serving.pubsub_subject(t).map(Caller::Account)
            }
        });
        let trusted: skiff_pubsub::listener::PeerCheck = {
            let network = network.clone();
            Arc::new(move |local, peer| {
                network
                    .as_ref()
                    .is_some_and(|n| n.from_instance(local.ip(), peer.ip()))
            })
        };
        let (broker, stop) = (pubsub.clone(), wait_stop(stop_rx.clone()));
        let gateway = pubsub_for_instances.map(|l| {
            tokio::spawn(skiff_pubsub::listener::serve(
                l,
                broker.clone(),
                check.clone(),
                trusted.clone(),
                std::future::pending(),
            ))
        });
        async move {
            let r =
                skiff_pubsub::listener::serve(pubsub_listener, broker, check, trusted, stop).await;
            if let Some(g) = gateway {
                g.abort();
            }
            r
        }
    });
    let https_note = match addrs.https {
        Some(a) => format!(" and https://{a}"),
        None => String::new(),
    };
    tracing::info!(
        "serving: ingress http://{ingress_addr}{https_note}, API http://{api_addr}, Pub/Sub {pubsub_addr}, data {}",
        data_dir.display()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: draining requests, stopping instances");
    let _ = stop_tx.send(true);
    if let Some(t) = cert_watch {
        t.abort();
    }
    heap_trim.abort();
    lists.abort();
    // Orders under way end with the runtime; what was issued is already on disk.
    drop(acme);
    let _ = tokio::join!(ingress_task, async {
        if let Some(t) = https_task {
            let _ = t.await;
        }
    });
    // The API may hold a follow-mode log stream open forever: do not wait long for it.
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    // Streaming pulls stay open until their clients go: do not wait long for them.
    let _ = tokio::time::timeout(Duration::from_secs(5), pubsub_task).await;
    tokio::join!(serving.shutdown(), jobs.shutdown(), builds.shutdown());
    // Every instance has ended: the last checkpoint closes their usage.
    checkpoints.abort();
    skiff_api::usage::checkpoint(&meters, &store, &metrics).await;
    skiff_runtime::sweep::remove_cgroup_parents();
    if let Some(p) = platform {
        p.stop().await;
    }
    if let Some(net) = network {
        net.stop().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// What instances find on the gateway address: the ingress (so that a service calls another by
/// its URL), the DNS resolver and the metadata server.
struct InstanceServices {
    dns: skiff_network::dns::DnsServer,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl InstanceServices {
    async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.dns.shutdown().await;
    }
}

/// The ingress's listeners, as instances are to find them on the gateway.
struct InstanceIngress {
    http: std::net::SocketAddr,
    /// The HTTPS listener's address (as given) and port (as bound).
    https: Option<(std::net::SocketAddr, u16)>,
    certs: Arc<skiff_tls::CertStore>,
}

async fn services_for_instances(
    net: &Arc<skiff_network::Network>,
    serving: &Arc<Serving>,
    ingress_at: InstanceIngress,
    limits: skiff_serving::IngressLimits,
) -> anyhow::Result<InstanceServices> {
    use skiff_network::dns::LocalAnswer;
    let gw = net.gateway();
    let ingress_port = ingress_at.http.port();
    // An ingress on every address already answers on the gateway's.
    let ingress = if ingress_at.http.ip().is_unspecified() {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind((gw, ingress_port))
                .await
                .with_context(|| format!("cannot listen for instances on {gw}:{ingress_port}"))?,
        )
    };
    let https_ingress = match ingress_at.https {
        Some((addr, port)) if !addr.ip().is_unspecified() => Some(
            tokio::net::TcpListener::bind((gw, port))
                .await
                .with_context(|| format!("cannot listen for instances on {gw}:{port}"))?,
        ),
        _ => None,
    };
    let domain = serving.urls().domain().map(|d| format!(".{d}"));
    let metadata = tokio::net::TcpListener::bind((gw, 80))
        .await
        .with_context(|| format!("cannot listen for the metadata server on {gw}:80"))?;
    let answer: skiff_network::dns::Answerer = Arc::new(move |name: &str| {
        if name == "localhost" {
            LocalAnswer::A(std::net::Ipv4Addr::LOCALHOST)
        } else if name.ends_with(".localhost")
            || domain.as_deref().is_some_and(|d| name.ends_with(d))
        {
            // Service hosts: the ingress as instances see it.
            LocalAnswer::A(gw)
        } else if name == "metadata.google.internal" {
            LocalAnswer::A(skiff_network::firewall::METADATA_ADDR)
        } else {
            LocalAnswer::Forward
        }
    });
    let dns = skiff_network::dns::DnsServer::start((gw, 53).into(), answer, None)
        .await
        .context("cannot start the instances' DNS resolver")?;
    let issuer: skiff_network::metadata::TokenIssuer = {
        let serving = serving.clone();
        Arc::new(move |owner: &skiff_network::Owner, aud: Option<&str>| {
            serving.mint_token_for(&owner.service_account, aud)
        })
    };
    // Stopped by abort once every instance is gone.
    let ingress_task = ingress.map(|listener| {
        tokio::spawn(skiff_serving::serve_ingress(
            serving.clone(),
            listener,
            std::future::pending(),
            Duration::from_secs(1),
            limits.clone(),
        ))
    });
    let metadata_task = tokio::spawn({
        let net = net.clone();
        async move {
            if let Err(e) = skiff_network::metadata::serve(
                metadata,
                net,
                issuer,
                skiff_model::REGION.to_string(),
            )
            .await
            {
                tracing::warn!("metadata server: {e}");
            }
        }
    });
    let https_task = https_ingress.map(|listener| {
        tokio::spawn(skiff_serving::serve_ingress_tls(
            serving.clone(),
            listener,
            Arc::new(skiff_tls::server_config(ingress_at.certs.clone())),
            std::future::pending(),
            Duration::from_secs(1),
            limits.clone(),
        ))
    });
    Ok(InstanceServices {
        dns,
        tasks: ingress_task
            .into_iter()
            .chain(https_task)
            .chain([metadata_task])
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_that_may_be_zero() {
        assert_eq!(super::parse_size_or_zero("0"), Ok(0));
        assert_eq!(super::parse_size_or_zero(" 0 "), Ok(0));
        assert_eq!(super::parse_size_or_zero("10Gi"), Ok(10 << 30));
        for bad in ["", "lots", "-1", "0.1", "1Q"] {
            let e = super::parse_size_or_zero(bad).unwrap_err();
            assert!(e.contains("512Mi") && e.ends_with("(or 0)"), "{bad}: {e}");
        }
    }

    #[test]
    fn public_addresses() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let at = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        let cases: &[(&[&str], &str, &[&str])] = &[
            (
                &["203.0.113.7", "2001:db8::7"],
                "0.0.0.0:80",
                &["203.0.113.7", "2001:db8::7"],
            ),
            (&["203.0.113.7"], "198.51.100.1:80", &["203.0.113.7"]),
            (&[], "198.51.100.1:80", &["198.51.100.1"]),
            (&[], "127.0.0.1:8080", &["127.0.0.1"]),
            (&[], "[2001:db8::1]:443", &["2001:db8::1"]),
        ];
        for (given, ingress, want) in cases {
            let given: Vec<_> = given.iter().map(|s| ip(s)).collect();
            let want: Vec<_> = want.iter().map(|s| ip(s)).collect();
            assert_eq!(
                super::public_addresses(&given, at(ingress)),
                want,
                "{ingress}"
            );
        }
        // On every address: what the host's routes say, never a wildcard or loopback.
        for found in super::public_addresses(&[], at("0.0.0.0:80")) {
            assert!(!found.is_unspecified() && !found.is_loopback(), "{found}");
        }
    }

    #[test]
    fn build_base_images() {
        assert_eq!(
            super::parse_base_image("python=registry.corp/py:3.12").unwrap(),
            ("python".to_string(), "registry.corp/py:3.12".to_string())
        );
        for (input, want) in [
            ("python", "give LANG=REF"),
            (
                "ruby=ruby:3",
                "no language Skiff detects: use one of python, nodejs",
            ),
            ("static=a b", "\"a b\""),
        ] {
            let e = super::parse_base_image(input).unwrap_err();
            assert!(e.contains(want), "{input}: {e}");
        }
    }
}
