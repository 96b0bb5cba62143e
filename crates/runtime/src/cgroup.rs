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
            oom_kills: oom_kills(cpu_dir.join("memory.events")),
        });
    }
    let cpu_ns = read_u64(cpu_dir.join("cpuacct.usage"))?;
    let mem = dir(id, "memory").map(|(d, _)| d);
    let peak = mem
        .as_ref()
        .and_then(|d| read_u64(d.join("memory.max_usage_in_bytes")))
        .unwrap_or(0);
    Some(CgroupStats {
        cpu_ns,
        memory_peak_bytes: peak,
        oom_kills: mem.map_or(0, |d| oom_kills(d.join("memory.oom_control"))),
    })
}

/// The `oom_kill N` line of cgroup v1's `memory.oom_control` or v2's `memory.events`.
fn oom_kills(p: PathBuf) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Cloud Run's words for an instance the memory cgroup killed: `Memory limit of 128 MiB
/// exceeded with 131 MiB used`, from its final reading and its limit (bytes); `None` when the
/// OOM killer did not act.
pub fn oom_message(usage: Option<&CgroupStats>, memory_limit: u64) -> Option<String> {
    let u = usage.filter(|u| u.oom_kills > 0)?;
    Some(format!(
        "Memory limit of {} MiB exceeded with {} MiB used",
        memory_limit.div_ceil(1 << 20),
        u.memory_peak_bytes.max(memory_limit).div_ceil(1 << 20)
    ))
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
