//! How far a one-shot run is: a bar on a terminal, and otherwise a log line every
//! [`LINE_EVERY`] (a run under cron or systemd is not silent for hours). Counted in the
//! units of `--rate` (MB, powers of 1000).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sluice_common::units::Bytes;

/// A progress line this often when stderr is not a terminal.
pub const LINE_EVERY: Duration = Duration::from_secs(30);

/// Where progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Not at all (`--quiet`, or the daemon: it has no total).
    Nothing,
    /// A bar on stderr, a terminal.
    Bar,
    /// Log lines at an interval.
    Lines,
}

pub(crate) struct Progress {
    total: u64,
    done: u64,
    start: Instant,
    next_line: Instant,
    every: Duration,
    bar: Option<ProgressBar>,
    lines: bool,
}

impl Progress {
    /// Progress over `total` plaintext bytes (every pass counted).
    pub(crate) fn new(show: Show, total: u64, every: Duration) -> Progress {
        let start = Instant::now();
        let bar = (show == Show::Bar).then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {decimal_bytes}/{decimal_total_bytes} \
                 {decimal_bytes_per_sec} {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            total,
            done: 0,
            start,
            next_line: start + every,
            every,
            bar,
            lines: show == Show::Lines,
        }
    }

    pub(crate) fn advance(&mut self, bytes: u64) {
        self.done = self.done.saturating_add(bytes);
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
        if self.lines {
            let now = Instant::now();
            if now >= self.next_line {
                self.next_line = now + self.every;
                tracing::info!(
                    done = self.done,
                    total = self.total,
                    "{}",
                    line(self.done, self.total, now - self.start)
                );
            }
        }
    }

    /// The object now going out.
    pub(crate) fn working_on(&self, path: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(path.to_string());
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `progress: 1.20 GB of 4.00 GB (30%), 250.00 MB/s, about 12 s left`.
fn line(done: u64, total: u64, elapsed: Duration) -> String {
    let percent = (done as f64 * 100.0 / total.max(1) as f64).min(100.0);
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let left = match rate > 0.0 {
        true => format!(
            ", about {} s left",
            (total.saturating_sub(done) as f64 / rate).ceil() as u64
        ),
        false => String::new(),
    };
    format!(
        "progress: {} of {} ({percent:.0}%), {}/s{left}",
        Bytes(done),
        Bytes(total),
        Bytes(rate as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_says_how_far_how_fast_and_how_long_in_the_units_of_rate() {
        assert_eq!(
            line(1_200_000_000, 4_000_000_000, Duration::from_secs(4)),
            "progress: 1.20 GB of 4.00 GB (30%), 300.00 MB/s, about 10 s left"
        );
        assert_eq!(
            line(0, 0, Duration::ZERO),
            "progress: 0 B of 0 B (0%), 0 B/s"
        );
    }
}
