//! `cairn debug preflight`: checks a machine against what a Cairn agent needs.
//!
//! Gathering the facts (limits, sysctls, kernel) is the only IO; judging them is a pure
//! function, so every rule is tested with made-up facts. Each finding says what to change
//! and where (the profiles in `tuning/`).

/// What the checks look at. `None`: could not be read on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Soft RLIMIT_MEMLOCK in bytes (`u64::MAX` = unlimited).
    pub memlock_bytes: Option<u64>,
    /// Soft RLIMIT_NOFILE.
    pub nofile: Option<u64>,
    /// Cores the agent will run executors on.
    pub cores: usize,
    /// `kernel.io_uring_disabled` (0 = allowed; missing on kernels before 6.6).
    pub io_uring_disabled: Option<u64>,
    /// Kernel version (major, minor).
    pub kernel: Option<(u32, u32)>,
    pub somaxconn: Option<u64>,
    pub rmem_max: Option<u64>,
    pub wmem_max: Option<u64>,
    pub swappiness: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub what: &'static str,
    pub detail: String,
}

/// The least io_uring memory glommio accepts per executor.
pub const MIN_MEMLOCK_PER_CORE: u64 = 512 * 1024;
/// What we want per executor: room for the full io_uring pool an executor registers
/// (`runtime::MAX_IO_MEMORY`, 1 MiB, taken from three quarters of the limit) and its rings.
pub const GOOD_MEMLOCK_PER_CORE: u64 = 2 * 1024 * 1024;
/// File descriptors for a server facing thousands of agents and clients.
pub const GOOD_NOFILE: u64 = 65_536;
/// Socket buffer ceiling that lets gossip and RPC sockets grow to 8 MiB.
pub const GOOD_SOCKET_BUFFER: u64 = 8 * 1024 * 1024;

fn finding(level: Level, what: &'static str, detail: String) -> Finding {
    Finding {
        level,
        what,
        detail,
    }
}

fn mib(b: u64) -> String {
    if b == u64::MAX {
        "unlimited".into()
    } else {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    }
}

/// Judges the facts. Pure.
pub fn evaluate(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    let cores = f.cores.max(1) as u64;
    let raise = "raise it: `ulimit -l unlimited`, or tuning/limits.conf, or LimitMEMLOCK= in \
                 tuning/cairn.service";
    match f.memlock_bytes {
        None => out.push(finding(
            Level::Warn,
            "RLIMIT_MEMLOCK",
            "could not be read".into(),
        )),
        Some(m) if m < MIN_MEMLOCK_PER_CORE * cores => out.push(finding(
            Level::Fail,
            "RLIMIT_MEMLOCK",
            format!(
                "{} for {cores} cores; io_uring needs at least {} per core; {raise}",
                mib(m),
                mib(MIN_MEMLOCK_PER_CORE)
            ),
        )),
        Some(m) if m < GOOD_MEMLOCK_PER_CORE * cores => out.push(finding(
            Level::Warn,
            "RLIMIT_MEMLOCK",
            format!(
                "{} for {cores} cores; runs with smaller io_uring buffers, {} per core is \
                 better; {raise}",
                mib(m),
                mib(GOOD_MEMLOCK_PER_CORE)
            ),
        )),
        Some(m) => out.push(finding(Level::Ok, "RLIMIT_MEMLOCK", mib(m))),
    }
    match f.nofile {
        Some(n) if n < 4096 => out.push(finding(
            Level::Fail,
            "RLIMIT_NOFILE",
            format!(
                "{n}: a server runs out of sockets; set nofile {GOOD_NOFILE} (tuning/limits.conf)"
            ),
        )),
        Some(n) if n < GOOD_NOFILE => out.push(finding(
            Level::Warn,
            "RLIMIT_NOFILE",
            format!("{n}; {GOOD_NOFILE} or more for servers (tuning/limits.conf)"),
        )),
        Some(n) => out.push(finding(Level::Ok, "RLIMIT_NOFILE", n.to_string())),
        None => out.push(finding(
            Level::Warn,
            "RLIMIT_NOFILE",
            "could not be read".into(),
        )),
    }
    match f.kernel {
        Some((maj, min)) if (maj, min) < (5, 8) => out.push(finding(
            Level::Fail,
            "kernel",
            format!("{maj}.{min}: glommio's io_uring needs 5.8 or newer"),
        )),
        Some((maj, min)) => out.push(finding(Level::Ok, "kernel", format!("{maj}.{min}"))),
        None => out.push(finding(Level::Warn, "kernel", "version unknown".into())),
    }
    match f.io_uring_disabled {
        Some(0) | None => {}
        Some(v) => out.push(finding(
            Level::Fail,
            "kernel.io_uring_disabled",
            format!("{v}: io_uring is restricted; set it to 0 (tuning/sysctl.conf)"),
        )),
    }
    if let Some(s) = f.somaxconn {
        let level = if s < 1024 { Level::Warn } else { Level::Ok };
        out.push(finding(
            level,
            "net.core.somaxconn",
            format!("{s} (4096 recommended: agents reconnect in bursts after a leader change)"),
        ));
    }
    for (what, v) in [
        ("net.core.rmem_max", f.rmem_max),
        ("net.core.wmem_max", f.wmem_max),
    ] {
        if let Some(v) = v {
            let level = if v < GOOD_SOCKET_BUFFER {
                Level::Warn
            } else {
                Level::Ok
            };
            out.push(finding(
                level,
                what,
                format!(
                    "{} ({} lets the gossip socket absorb bursts at 10,000 members)",
                    mib(v),
                    mib(GOOD_SOCKET_BUFFER)
                ),
            ));
        }
    }
    if let Some(s) = f.swappiness {
        let level = if s > 10 { Level::Warn } else { Level::Ok };
        out.push(finding(
            level,
            "vm.swappiness",
            format!("{s} (1 recommended: a swapped-out server misses Raft and gossip deadlines)"),
        ));
    }
    out
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn limit(res: rustix::process::Resource) -> Option<u64> {
    let l = rustix::process::getrlimit(res);
    Some(l.current.unwrap_or(u64::MAX))
}

fn kernel_version() -> Option<(u32, u32)> {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = rel.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Reads the facts of this machine.
pub fn gather(cores: usize) -> Facts {
    Facts {
        memlock_bytes: limit(rustix::process::Resource::Memlock),
        nofile: limit(rustix::process::Resource::Nofile),
        cores,
        io_uring_disabled: read_u64("/proc/sys/kernel/io_uring_disabled"),
        kernel: kernel_version(),
        somaxconn: read_u64("/proc/sys/net/core/somaxconn"),
        rmem_max: read_u64("/proc/sys/net/core/rmem_max"),
        wmem_max: read_u64("/proc/sys/net/core/wmem_max"),
        swappiness: read_u64("/proc/sys/vm/swappiness"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Facts {
        Facts {
            memlock_bytes: Some(u64::MAX),
            nofile: Some(1 << 20),
            cores: 8,
            io_uring_disabled: Some(0),
            kernel: Some((6, 8)),
            somaxconn: Some(4096),
            rmem_max: Some(8 << 20),
            wmem_max: Some(8 << 20),
            swappiness: Some(1),
        }
    }

    fn worst(f: &Facts) -> Level {
        evaluate(f).iter().map(|x| x.level).max().unwrap()
    }

    #[test]
    fn a_well_tuned_machine_passes_every_check() {
        assert_eq!(worst(&good()), Level::Ok);
    }

    #[test]
    fn memlock_below_512_kib_per_core_fails_and_names_the_fix() {
        let f = Facts {
            memlock_bytes: Some(8 * 512 * 1024 - 1),
            ..good()
        };
        let fs = evaluate(&f);
        let m = fs.iter().find(|x| x.what == "RLIMIT_MEMLOCK").unwrap();
        assert_eq!(m.level, Level::Fail);
        assert!(m.detail.contains("ulimit -l"), "{}", m.detail);
    }

    #[test]
    fn the_default_8_mib_memlock_is_enough_for_four_cores_and_warns_on_eight() {
        let on = |cores| Facts {
            memlock_bytes: Some(8 << 20),
            cores,
            ..good()
        };
        assert_eq!(worst(&on(4)), Level::Ok);
        assert_eq!(worst(&on(8)), Level::Warn);
    }

    #[test]
    fn an_old_kernel_or_disabled_io_uring_fails() {
        assert_eq!(
            worst(&Facts {
                kernel: Some((5, 4)),
                ..good()
            }),
            Level::Fail
        );
        assert_eq!(
            worst(&Facts {
                io_uring_disabled: Some(2),
                ..good()
            }),
            Level::Fail
        );
    }

    #[test]
    fn few_file_descriptors_fail_and_small_socket_buffers_warn() {
        assert_eq!(
            worst(&Facts {
                nofile: Some(1024),
                ..good()
            }),
            Level::Fail
        );
        assert_eq!(
            worst(&Facts {
                rmem_max: Some(212_992),
                ..good()
            }),
            Level::Warn
        );
    }
}
