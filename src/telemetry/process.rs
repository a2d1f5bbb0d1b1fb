//! Figures about this process, read from `/proc` (Linux; elsewhere they are simply absent).

use std::time::{SystemTime, UNIX_EPOCH};

/// What `/proc/self` says now.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub threads: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// Clock ticks per second of `/proc/*/stat` times: USER_HZ, 100 on every Linux ABI.
const TICKS: f64 = 100.0;

pub fn read() -> ProcessStats {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name (which may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let number = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name; starttime is 22.
    let cpu_seconds = match (number(11), number(12)) {
        (Some(user), Some(system)) => Some((user + system) / TICKS),
        _ => None,
    };
    let start_time_seconds = number(19).and_then(|ticks| {
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        Some(now - uptime + ticks / TICKS)
    });
    ProcessStats {
        resident_bytes: field("VmRSS:").map(|kb| kb * 1024),
        cpu_seconds,
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64),
        threads: field("Threads:"),
        start_time_seconds,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let stats = super::read();
        if cfg!(target_os = "linux") {
            assert!(stats.resident_bytes.unwrap() > 0);
            assert!(stats.open_fds.unwrap() > 0);
            assert!(stats.threads.unwrap() >= 1);
            assert!(stats.cpu_seconds.unwrap() >= 0.0);
            let start = stats.start_time_seconds.unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            assert!(
                start <= now + 1.0 && start > now - 86_400.0 * 365.0,
                "{start}"
            );
        }
    }
}
