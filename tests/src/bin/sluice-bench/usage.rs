//! CPU time and peak memory of running daemons, read from `/proc`, with the CPU time split by
//! thread name: each stage of a daemon runs on threads it names (`decode-0`, `sluice-enc-1`,
//! `publish`, …), so the split shows which stage costs what and which one limits the rest.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use sluice_tests::binaries::Proc;

/// CPU ticks (utime + stime) and the memory high-water mark of a process, and the CPU ticks of
/// each of its threads (by thread id) with its stage (thread name without a trailing `-<n>`).
#[derive(Debug, Default, Clone)]
pub struct Usage {
    pub cpu_ticks: u64,
    pub peak_rss_kib: u64,
    threads: BTreeMap<u64, (String, u64)>,
}

impl Usage {
    /// Takes a later sample of the same process. A thread missing from it (it exited since)
    /// keeps its last reading: the process's total counts its time, so the stages must too.
    fn merge(&mut self, later: Usage) {
        self.cpu_ticks = later.cpu_ticks;
        self.peak_rss_kib = self.peak_rss_kib.max(later.peak_rss_kib);
        self.threads.extend(later.threads);
    }

    /// CPU ticks by stage.
    pub fn stages(&self) -> BTreeMap<String, u64> {
        let mut stages = BTreeMap::new();
        for (stage, ticks) in self.threads.values() {
            *stages.entry(stage.clone()).or_insert(0) += ticks;
        }
        stages
    }
}

/// utime + stime of a `/proc/.../stat` line, and the command name.
fn ticks_of(stat: &str) -> Option<(String, u64)> {
    // The command name is in parentheses and may hold spaces; fields follow the last ')'.
    let (head, after) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// The stage a thread belongs to: its name without a trailing worker number.
fn stage_of(comm: &str) -> String {
    match comm.rsplit_once('-') {
        Some((stage, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            stage.to_string()
        }
        _ => comm.to_string(),
    }
}

/// One reading of `pid`.
pub fn sample(pid: u32) -> Option<Usage> {
    let (_, cpu_ticks) = ticks_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let mut threads = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if let Some((comm, ticks)) = ticks_of(&stat) {
                threads.insert(tid, (stage_of(&comm), ticks));
            }
        }
    }
    Some(Usage {
        cpu_ticks,
        peak_rss_kib,
        threads,
    })
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs the processes to completion while sampling their usage every 20 ms (the last sample
/// of each is within 20 ms of its exit). With `until = Some(i)` it returns as soon as
/// `procs[i]` has exited, for a peer whose other side never exits on its own.
pub fn watch(
    procs: &mut [&mut Proc],
    until: Option<usize>,
    timeout: Duration,
) -> Result<Vec<Usage>> {
    let mut usage = vec![Usage::default(); procs.len()];
    let deadline = Instant::now() + timeout;
    loop {
        let mut running = vec![false; procs.len()];
        for ((p, u), r) in procs
            .iter_mut()
            .zip(usage.iter_mut())
            .zip(running.iter_mut())
        {
            if p.running() {
                *r = true;
                if let Some(s) = sample(p.id()) {
                    u.merge(s);
                }
            }
        }
        let done = match until {
            Some(i) => !running[i],
            None => !running.contains(&true),
        };
        if done {
            return Ok(usage);
        }
        if Instant::now() > deadline {
            bail!("processes still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU seconds per GB of `bytes`, by stage.
pub fn stages_per_gb(usage: &Usage, bytes: u64) -> BTreeMap<String, f64> {
    let per_gb = clock_ticks_per_second() * bytes as f64 / 1e9;
    usage
        .stages()
        .into_iter()
        .map(|(stage, ticks)| (stage, ticks as f64 / per_gb))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_sampled_by_thread() {
        let u = sample(std::process::id()).unwrap();
        assert!(u.peak_rss_kib > 0);
        assert!(!u.stages().is_empty());
    }

    #[test]
    fn a_thread_that_exited_between_samples_keeps_its_time() {
        let thread = |stage: &str, ticks| (stage.to_string(), ticks);
        let mut u = Usage {
            cpu_ticks: 10,
            peak_rss_kib: 5,
            threads: BTreeMap::from([(1, thread("sluice-send", 4)), (2, thread("sluice-enc", 6))]),
        };
        u.merge(Usage {
            cpu_ticks: 15,
            peak_rss_kib: 4,
            threads: BTreeMap::from([(1, thread("sluice-send", 9))]),
        });
        assert_eq!((u.cpu_ticks, u.peak_rss_kib), (15, 5));
        assert_eq!(
            u.stages(),
            BTreeMap::from([
                ("sluice-enc".to_string(), 6),
                ("sluice-send".to_string(), 9)
            ])
        );
    }

    #[test]
    fn stages_drop_worker_numbers() {
        assert_eq!(stage_of("decode-12"), "decode");
        assert_eq!(stage_of("sluice-enc-0"), "sluice-enc");
        assert_eq!(stage_of("tokio-rt-worker"), "tokio-rt-worker");
        assert_eq!(stage_of("publish"), "publish");
        assert_eq!(
            ticks_of("12 (decode 0) R 1 2 3 4 5 6 7 8 9 10 20 30 0 0"),
            Some(("decode 0".into(), 50))
        );
    }
}
