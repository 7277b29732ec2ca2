//! The thread-per-core runtime: one glommio executor per core, and the shard cores that
//! own the KV state (see [`shards`]).

pub mod shards;

/// glommio's io_uring buffers need this much locked memory per executor at the least.
pub const MIN_IO_MEMORY: usize = 512 * 1024;
/// What an executor registers when the limit allows (glommio's default is 10 MiB).
/// Registering pins every page of it, and Cairn's executors use the pool only as an
/// allocator for reads the kernel completes later (gossip datagrams, a socket peek): its
/// files are read and written with std IO, its TCP reads go straight into the
/// connection's buffer. At 6 MiB (three quarters of an 8 MiB memlock limit) it was a
/// third of an idle server's resident memory; glommio takes a buffer from the heap when
/// the pool is used up.
pub const MAX_IO_MEMORY: usize = 1024 * 1024;

/// Why the runtime cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "RLIMIT_MEMLOCK is {limit} bytes; {executors} executors need at least {needed} bytes \
         of locked memory for io_uring. Raise it: `ulimit -l unlimited` in the shell, \
         LimitMEMLOCK=infinity in the systemd unit, or `memlock` in \
         /etc/security/limits.conf (see tuning/)"
    )]
    MemlockTooLow {
        limit: u64,
        executors: usize,
        needed: u64,
    },
    #[error("starting the executors: {0}")]
    Spawn(String),
}

/// io_memory for each of `executors` executors under a locked-memory limit of
/// `limit_bytes` (`u64::MAX` = unlimited): three quarters of the limit split evenly (the
/// rest is left for io_uring's rings), capped at [`MAX_IO_MEMORY`], in 64 KiB steps.
pub fn io_memory_for(limit_bytes: u64, executors: usize) -> Result<usize, RuntimeError> {
    let executors = executors.max(1);
    let share = (limit_bytes / 4 * 3) / executors as u64;
    let per = (share.min(MAX_IO_MEMORY as u64) as usize) & !(64 * 1024 - 1);
    if per < MIN_IO_MEMORY {
        return Err(RuntimeError::MemlockTooLow {
            limit: limit_bytes,
            executors,
            needed: (MIN_IO_MEMORY as u64 * executors as u64).div_ceil(3) * 4,
        });
    }
    Ok(per)
}

/// [`io_memory_for`] with this process's RLIMIT_MEMLOCK.
pub fn io_memory_per_executor(executors: usize) -> Result<usize, RuntimeError> {
    let l = rustix::process::getrlimit(rustix::process::Resource::Memlock);
    io_memory_for(l.current.unwrap_or(u64::MAX), executors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_split_between_executors_and_capped() {
        assert_eq!(io_memory_for(u64::MAX, 4).unwrap(), MAX_IO_MEMORY);
        assert_eq!(io_memory_for(8 << 20, 1).unwrap(), MAX_IO_MEMORY);
        // 8 MiB over 8 executors: three quarters split, in 64 KiB steps.
        assert_eq!(io_memory_for(8 << 20, 8).unwrap(), 768 << 10);
        assert_eq!(io_memory_for(2 << 20, 2).unwrap(), 768 << 10);
    }

    #[test]
    fn a_limit_too_low_names_the_limit_and_the_fix() {
        let e = io_memory_for(1 << 20, 4).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("RLIMIT_MEMLOCK is 1048576"), "{msg}");
        assert!(msg.contains("ulimit -l"), "{msg}");
    }
}
