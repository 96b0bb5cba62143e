//! The OCI runtime spec (`config.json`) of one instance: the isolation Cloud Run's container
//! contract promises, written as the runtime-spec JSON that libcontainer loads.
//!
//! The network namespace is deliberately absent from `namespaces`: the shim has already
//! unshared one (loopback only) and the container inherits it, so the server can reach it
//! through `/proc/PID/ns/net` without a bind mount to clean up.

use crate::user::ResolvedUser;
use crate::InstanceConfig;
use serde_json::{json, Value};

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

use crate::cgroup::CFS_PERIOD_US;

/// System calls every container is refused (`EPERM`): those Docker's default seccomp profile
/// allows only with capabilities Skiff's containers do not have (`CAP_SYS_ADMIN`,
/// `CAP_SYS_MODULE`, `CAP_SYS_BOOT`, `CAP_SYS_TIME`, `CAP_SYS_PTRACE`, ...) or never.
/// Written as a deny list over an allowing default, so that it is the same on every
/// architecture; new namespaces through `clone` are refused by the flag rules below.
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "_sysctl",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// `clone` flags that make a new namespace (`CLONE_NEWNS`, `NEWCGROUP`, `NEWUTS`, `NEWIPC`,
/// `NEWUSER`, `NEWPID`, `NEWNET`): a `clone` with any of them is refused.
const CLONE_NEW_FLAGS: &[u64] = &[
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

/// The seccomp filter of every container (runtime-spec `linux.seccomp`).
fn seccomp() -> Value {
    const EPERM: u32 = 1;
    const ENOSYS: u32 = 38;
    let mut syscalls = vec![json!({
        "names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
    })];
    // Each flag a rule of its own: `(flags & F) == F` (value and valueTwo alike, so that it
    // reads the same whichever of them a runtime takes as the mask).
    for f in CLONE_NEW_FLAGS {
        syscalls.push(json!({
            "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
            "args": [{ "index": 0, "value": f, "valueTwo": f, "op": "SCMP_CMP_MASKED_EQ" }],
        }));
    }
    // clone3 takes its flags in memory, out of a filter's reach: as in Docker's profile it is
    // "not implemented", and the C library falls back to clone.
    syscalls.push(json!({
        "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS,
    }));
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": syscalls,
    })
}

/// The OCI runtime spec for `cfg`; `secret_mounts` are `(source dir, path in the container)`
/// pairs, bind-mounted read-only; `shared_volumes` `(source dir, path, read-only)`, the
/// instance's shared in-memory volumes, bind-mounted.
pub fn build(
    cfg: &InstanceConfig,
    user: &ResolvedUser,
    secret_mounts: &[(std::path::PathBuf, String)],
    shared_volumes: &[(std::path::PathBuf, String, bool)],
) -> Value {
    let caps = DEFAULT_CAPS;
    let tmp_size = cfg.memory_bytes.max(64 << 20);
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "root": { "path": cfg.rootfs(), "readonly": false },
        "hostname": cfg.hostname,
        "process": {
            "terminal": false,
            "user": {
                "uid": user.uid,
                "gid": user.gid,
                "additionalGids": user.additional_gids,
            },
            "args": cfg.args,
            "env": cfg.env,
            "cwd": if cfg.cwd.is_empty() { "/" } else { cfg.cwd.as_str() },
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
        },
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "nodev", "mode=1777", format!("size={tmp_size}")] },
            { "destination": "/etc/hosts", "type": "bind", "source": cfg.etc_file("hosts"),
              "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec"] },
            { "destination": "/etc/resolv.conf", "type": "bind",
              "source": cfg.etc_file("resolv.conf"),
              "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec"] },
        ],
        "linux": {
            "cgroupsPath": cfg.cgroup_path(),
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" },
            ],
            "resources": {
                "devices": [ { "allow": false, "access": "rwm" } ],
                "memory": { "limit": cfg.memory_bytes, "swap": cfg.memory_bytes },
                "cpu": {
                    "quota": (cfg.cpu_millis * CFS_PERIOD_US / 1000) as i64,
                    "period": CFS_PERIOD_US,
                },
                "pids": { "limit": cfg.pids_limit },
            },
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp(),
        },
    });
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for (path, size, read_only) in &cfg.memory_volumes {
            let mut options = vec![
                "nosuid".to_string(),
                "nodev".into(),
                "mode=1777".into(),
                format!("size={size}"),
            ];
            if *read_only {
                options.push("ro".into());
            }
            mounts.push(json!({
                "destination": path, "type": "tmpfs", "source": "tmpfs", "options": options,
            }));
        }
        for (source, path, read_only) in shared_volumes {
            let mut options = vec!["rbind", "rprivate", "nosuid", "nodev"];
            if *read_only {
                options.push("ro");
            }
            mounts.push(json!({
                "destination": path, "type": "bind", "source": source, "options": options,
            }));
        }
        for (source, path) in &cfg.host_volumes {
            mounts.push(json!({
                "destination": path, "type": "bind", "source": source,
                "options": ["rbind", "rprivate", "ro", "nosuid", "nodev"],
            }));
        }
        for (source, path) in secret_mounts {
            mounts.push(json!({
                "destination": path, "type": "bind", "source": source,
                "options": ["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"],
            }));
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_is_valid_and_isolated() {
        let cfg = InstanceConfig {
            id: "i1".into(),
            dir: "/run/x/i1".into(),
            state_root: "/run/x/state".into(),
            layers: vec![],
            args: vec!["httpd".into()],
            env: vec!["PORT=8080".into()],
            cwd: String::new(),
            user: None,
            hostname: "localhost".into(),
            cpu_millis: 500,
            memory_bytes: 256 << 20,
            pids_limit: 100,
            joins_netns: false,
            hosts: String::new(),
            resolv_conf: String::new(),
            memory_volumes: vec![("/cache".into(), 64 << 20, false)],
            host_volumes: vec![],
            secrets_on_fd: false,
            secrets: Default::default(),
            name: String::new(),
            sidecars: vec![],
            start_now: true,
            cgroup: None,
            shared_volumes: vec![],
            volume_binds: vec![],
        };
        let user = ResolvedUser {
            uid: 1,
            gid: 2,
            additional_gids: vec![],
        };
        let v = build(
            &cfg,
            &user,
            &[("/run/x/i1/secrets/v0".into(), "/secrets".into())],
            &[],
        );
        let spec: oci_spec::runtime::Spec = serde_json::from_value(v.clone()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<String> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| format!("{:?}", n.typ()))
            .collect();
        assert_eq!(ns, ["Pid", "Ipc", "Uts", "Mount"]);
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().unwrap().limit(), Some(256 << 20));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(res.pids().unwrap().limit(), 100);
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(process.cwd().to_str(), Some("/"));
        let caps = process.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), DEFAULT_CAPS.len());
        assert!(!v.to_string().contains("CAP_SYS_ADMIN"));
    }
}
