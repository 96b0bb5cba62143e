//! Reading and adjusting one instance's cgroup from outside the container: what it used (CPU
//! time, peak memory) and its CPU quota, which the serving plane lowers while a request-based
//! instance has no request in flight.
//!
//! libcontainer creates the cgroups from the spec; these are the few files read or written
//! after that, directly, because the request path needs a write to an already open file (a
//! cgroup manager would re-apply every resource on each change).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

pub use skiff_metering::registry::CgroupStats;

/// The CFS period every instance gets (µs).
pub const CFS_PERIOD_US: u64 = 100_000;
/// The quota of a throttled instance: 1 % of one CPU, the smallest quota cgroup v1 takes.
pub const THROTTLED_QUOTA_US: u64 = 1_000;

const ROOT: &str = "/sys/fs/cgroup";

/// The instance's directory in a cgroup v1 hierarchy that holds `controller`, or in the
/// unified hierarchy when there is no v1 one.
fn dir(id: &str, controller: &str) -> Option<(PathBuf, bool)> {
    for h in [controller.to_string(), "cpu,cpuacct".into()] {
        let d = PathBuf::from(ROOT)
            .join(&h)
            .join(crate::CGROUP_PARENT)
            .join(id);
        if d.is_dir() {
            return Some((d, false));
        }
    }
    let d = PathBuf::from(ROOT).join(crate::CGROUP_PARENT).join(id);
    d.join("cgroup.controllers").exists().then_some((d, true))
}

fn read_u64(p: PathBuf) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// CPU time and peak memory of an instance's cgroup so far (`None` once it is gone).
pub fn stats(id: &str) -> Option<CgroupStats> {
    let (cpu_dir, v2) = dir(id, "cpuacct")?;
    if v2 {
        let stat = std::fs::read_to_string(cpu_dir.join("cpu.stat")).ok()?;
        let usec: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))?
            .trim()
            .parse()
            .ok()?;
        let peak = read_u64(cpu_dir.join("memory.peak"))
            .or_else(|| read_u64(cpu_dir.join("memory.current")))
            .unwrap_or(0);
        return Some(CgroupStats {
            cpu_ns: usec * 1000,
            memory_peak_bytes: peak,
        });
    }
    let cpu_ns = read_u64(cpu_dir.join("cpuacct.usage"))?;
    let peak = dir(id, "memory")
        .and_then(|(d, _)| read_u64(d.join("memory.max_usage_in_bytes")))
        .unwrap_or(0);
    Some(CgroupStats {
        cpu_ns,
        memory_peak_bytes: peak,
    })
}

/// An instance's CPU quota file, held open so that switching costs one write.
pub struct CpuQuota {
    file: File,
    full: Vec<u8>,
    throttled: Vec<u8>,
}

impl CpuQuota {
    /// Opens the quota of instance `id`, whose full allowance is `cpu_millis`.
    pub fn open(id: &str, cpu_millis: u64) -> std::io::Result<CpuQuota> {
        let (d, v2) = dir(id, "cpu").ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no cpu cgroup for instance {id}"),
            )
        })?;
        let name = if v2 { "cpu.max" } else { "cpu.cfs_quota_us" };
        let file = std::fs::OpenOptions::new().write(true).open(d.join(name))?;
        let text = |quota: u64| {
            if v2 {
                format!("{quota} {CFS_PERIOD_US}").into_bytes()
            } else {
                quota.to_string().into_bytes()
            }
        };
        Ok(CpuQuota {
            file,
            full: text((cpu_millis * CFS_PERIOD_US / 1000).max(THROTTLED_QUOTA_US)),
            throttled: text(THROTTLED_QUOTA_US),
        })
    }

    /// Throttles the instance to [`THROTTLED_QUOTA_US`] per period, or gives it its full
    /// allowance back.
    pub fn set_throttled(&self, throttled: bool) -> std::io::Result<()> {
        let text = if throttled {
            &self.throttled
        } else {
            &self.full
        };
        self.file.write_at(text, 0).map(|_| ())
    }
}
