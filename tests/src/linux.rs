//! What Linux says about a process: its threads (name, CPU affinity,
//! context switches) from `/proc`, and signals.

use std::path::Path;

/// One thread of a process, read from `/proc/<pid>/task/<tid>/`.
#[derive(Clone, Debug)]
pub struct ThreadInfo {
    pub tid: u32,
    /// `comm`: the thread name, truncated by the kernel to 15 bytes.
    pub name: String,
    /// The cores the thread may run on (`Cpus_allowed_list`, expanded).
    pub cpus_allowed: Vec<usize>,
    /// Voluntary plus involuntary context switches so far: it grows whenever
    /// the thread wakes up to do something.
    pub context_switches: u64,
}

/// The threads of process `pid`, in no particular order. Threads that exit
/// while being read are left out.
pub fn threads_of(pid: u32) -> Vec<ThreadInfo> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let entries = std::fs::read_dir(&tasks)
        .unwrap_or_else(|error| panic!("read {}: {error}", tasks.display()));
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let tid = entry.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            Some(ThreadInfo {
                tid,
                name: name.trim_end().to_owned(),
                cpus_allowed: parse_cpu_list(status_field(&status, "Cpus_allowed_list")?),
                context_switches: status_field(&status, "voluntary_ctxt_switches")?
                    .parse::<u64>()
                    .ok()?
                    + status_field(&status, "nonvoluntary_ctxt_switches")?
                        .parse::<u64>()
                        .ok()?,
            })
        })
        .collect()
}

/// The cores this (test) process may run on; a child inherits them.
pub fn allowed_cores() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    parse_cpu_list(status_field(&status, "Cpus_allowed_list").expect("Cpus_allowed_list"))
}

/// Sends SIGTERM to `pid`.
pub fn send_sigterm(pid: u32) {
    send_signal(pid, libc::SIGTERM);
}

/// Sends `signal` (e.g. `libc::SIGSTOP`) to `pid`.
#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        result,
        0,
        "kill -{signal} {pid}: {}",
        std::io::Error::last_os_error()
    );
}

fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

/// Expands a kernel CPU list such as `0-2,5` into `[0, 1, 2, 5]`.
pub fn parse_cpu_list(list: &str) -> Vec<usize> {
    list.split(',')
        .filter(|part| !part.is_empty())
        .flat_map(|part| {
            let (first, last) = part.split_once('-').unwrap_or((part, part));
            let first: usize = first.trim().parse().expect("a CPU number");
            let last: usize = last.trim().parse().expect("a CPU number");
            first..=last
        })
        .collect()
}

#[cfg(test)]
mod unit {
    use super::parse_cpu_list;

    #[test]
    fn expands_cpu_lists() {
        assert_eq!(parse_cpu_list("0"), vec![0]);
        assert_eq!(parse_cpu_list("0-2,5"), vec![0, 1, 2, 5]);
        assert_eq!(parse_cpu_list("1,3-4"), vec![1, 3, 4]);
    }
}
