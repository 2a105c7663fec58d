//! What a contender's processes cost, read from `/proc`: CPU time (user + system) and
//! memory (resident now, and the peak), the same way for the agent and for Flux.

use std::sync::OnceLock;

use anyhow::Context as _;

/// CPU seconds and memory of one or more processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `VmHWM` (the peak resident set), KiB.
    pub peak_kib: u64,
}

impl Usage {
    /// Processes side by side: their sums.
    pub fn add(&mut self, o: &Usage) {
        self.cpu_seconds += o.cpu_seconds;
        self.rss_kib += o.rss_kib;
        self.peak_kib += o.peak_kib;
    }
}

pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid}"))?;
    // Fields after the command name, which may hold spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Usage {
        cpu_seconds: (ticks(14) + ticks(15)) / clock_ticks(),
        rss_kib: kib("VmRSS:"),
        peak_kib: kib("VmHWM:"),
    })
}

/// `getconf CLK_TCK` (100 on Linux), once.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Samples a child's peak RSS until it exits: the last `VmHWM` read before its exit is its
/// peak, short of what it grew in the last 50 ms.
pub async fn track_peak(pid: u32) -> u64 {
    let mut peak = 0;
    while let Ok(u) = usage(pid) {
        peak = peak.max(u.peak_kib);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss_kib > 0 && u.peak_kib >= u.rss_kib, "{u:?}");
    }
}
