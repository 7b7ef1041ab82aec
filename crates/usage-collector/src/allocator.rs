//! The allocator's one setting: memory a burst freed goes back to the system at once.
//!
//! The collector's memory comes in bursts — a request decoded, mapped, spooled and freed — and
//! mimalloc (version 3) keeps freed pages for a second before it returns them, so the pages of
//! many bursts are held at once: the receive path's peak RSS was 49–57 MB with the delay and
//! 35–37 MB without, at the same rate (`docs/performance.md`). mimalloc reads its options from
//! the environment as the process starts, and setting one from Rust would take `unsafe` code,
//! which this workspace forbids; so [`settle`] starts the binary again in the same process
//! (`exec`: same PID, same arguments) with `MIMALLOC_PURGE_DELAY=0`, unless the environment
//! sets the variable already (an operator's own value is kept).

/// The variable mimalloc reads its purge delay (milliseconds) from.
pub const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";

/// Replaces this process with the same binary and arguments and `MIMALLOC_PURGE_DELAY=0` when
/// the variable is not set. Returns when nothing was needed, or when the `exec` failed (said on
/// stderr: the collector then runs with the allocator's default and holds freed memory
/// longer).
pub fn settle() {
    if std::env::var_os(PURGE_DELAY).is_some() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // The running image itself, even if its file has been replaced or removed since.
        let exe = if cfg!(target_os = "linux") {
            std::path::PathBuf::from("/proc/self/exe")
        } else {
            match std::env::current_exe() {
                Ok(exe) => exe,
                Err(e) => {
                    eprintln!(
                        "usage-collector: cannot find its own binary to set {PURGE_DELAY}=0 ({e}); running with the allocator's default"
                    );
                    return;
                }
            }
        };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(name) = args.next() {
            command.arg0(name);
        }
        let error = command.args(args).env(PURGE_DELAY, "0").exec();
        eprintln!(
            "usage-collector: cannot start again with {PURGE_DELAY}=0 ({error}); running with the allocator's default"
        );
    }
}
