//! What the receiver says about its links besides their frames: one link of several gone
//! quiet while the others bring frames (`link 2 down`) or back (`link 2 up`), and datagrams
//! the kernel dropped because a socket's receive buffer was full (`link overrun`). Sans-IO:
//! the link task feeds it what the links report once a second and says what it returns.

use std::time::{Duration, Instant};

use sluice_common::link::{LinkActivity, QUIET_LINK};

/// Least time between two overrun warnings (each says everything dropped since the last).
const OVERRUN_WARN_EVERY: Duration = Duration::from_secs(10);

/// Something to say about the links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// Link `index` (from 1) brings nothing while another brings frames, or failed.
    Down { index: usize, name: String },
    /// Link `index` brings frames again.
    Up { index: usize, name: String },
    /// The kernel dropped `dropped` datagrams since the last warning (`total` since start).
    Overrun { dropped: u64, total: u64 },
}

/// The links' state as last reported.
#[derive(Debug)]
pub(crate) struct LinkHealth {
    started: Instant,
    down: Vec<bool>,
    drops_seen: u64,
    drops_warned: u64,
    warned_at: Option<Instant>,
}

impl LinkHealth {
    pub fn new(now: Instant) -> Self {
        LinkHealth {
            started: now,
            down: Vec::new(),
            drops_seen: 0,
            drops_warned: 0,
            warned_at: None,
        }
    }

    /// Links reported down now.
    pub fn links_down(&self) -> usize {
        self.down.iter().filter(|d| **d).count()
    }

    /// Datagrams the kernel dropped since the start.
    pub fn kernel_drops(&self) -> u64 {
        self.drops_seen
    }

    /// What changed since the last check.
    pub fn check(
        &mut self,
        links: &[LinkActivity],
        kernel_drops: Option<u64>,
        now: Instant,
    ) -> Vec<Notice> {
        let mut notices = Vec::new();
        self.down.resize(links.len(), false);
        let watched = now.saturating_duration_since(self.started);
        let quiet = |l: &LinkActivity| l.failed || l.quiet_for.unwrap_or(watched) >= QUIET_LINK;
        let any_active = links.iter().any(|l| !quiet(l));
        for (i, link) in links.iter().enumerate() {
            let Some(down) = self.down.get_mut(i) else {
                continue;
            };
            // Down only while another link carries frames: all quiet is a sender at rest.
            let now_down = quiet(link) && (any_active || link.failed);
            let now_up = !quiet(link);
            if !*down && now_down {
                *down = true;
                notices.push(Notice::Down {
                    index: i + 1,
                    name: link.name.clone(),
                });
            } else if *down && now_up {
                *down = false;
                notices.push(Notice::Up {
                    index: i + 1,
                    name: link.name.clone(),
                });
            }
        }
        // The sockets were opened at start: their counts are this run's.
        if let Some(total) = kernel_drops {
            self.drops_seen = total;
            let unwarned = self.drops_seen.saturating_sub(self.drops_warned);
            let due = self
                .warned_at
                .is_none_or(|at| now.saturating_duration_since(at) >= OVERRUN_WARN_EVERY);
            if unwarned > 0 && due {
                notices.push(Notice::Overrun {
                    dropped: unwarned,
                    total: self.drops_seen,
                });
                self.drops_warned = self.drops_seen;
                self.warned_at = Some(now);
            }
        }
        notices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, quiet_ms: Option<u64>) -> LinkActivity {
        LinkActivity {
            name: name.into(),
            datagrams: 0,
            quiet_for: quiet_ms.map(Duration::from_millis),
            failed: false,
        }
    }

    #[test]
    fn a_link_is_down_only_while_another_brings_frames() {
        let t0 = Instant::now();
        let mut health = LinkHealth::new(t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Both bring frames.
        let both = [link("a", Some(10)), link("b", Some(10))];
        assert!(health.check(&both, None, at(1)).is_empty());
        // b goes quiet while a goes on: down once.
        let one = [link("a", Some(10)), link("b", Some(6_000))];
        let got = health.check(&one, None, at(8));
        assert_eq!(
            got,
            [Notice::Down {
                index: 2,
                name: "b".into()
            }]
        );
        assert!(health.check(&one, None, at(9)).is_empty());
        assert_eq!(health.links_down(), 1);
        // Back.
        let got = health.check(&both, None, at(10));
        assert_eq!(
            got,
            [Notice::Up {
                index: 2,
                name: "b".into()
            }]
        );
        // Everything quiet (the sender at rest): nothing is down.
        let rest = [link("a", Some(60_000)), link("b", Some(60_000))];
        assert!(health.check(&rest, None, at(70)).is_empty());
        // A link that never brought anything while the other does, past the grace.
        let mut health = LinkHealth::new(t0);
        let never = [link("a", Some(10)), link("b", None)];
        assert!(health.check(&never, None, at(2)).is_empty());
        assert_eq!(health.check(&never, None, at(6)).len(), 1);
    }

    #[test]
    fn overruns_are_warned_at_most_every_ten_seconds_saying_all_since_the_last() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut health = LinkHealth::new(t0);
        assert!(health.check(&[], Some(0), at(0)).is_empty());
        let got = health.check(&[], Some(30), at(1));
        assert_eq!(
            got,
            [Notice::Overrun {
                dropped: 30,
                total: 30
            }]
        );
        assert!(health.check(&[], Some(100), at(5)).is_empty());
        let got = health.check(&[], Some(110), at(12));
        assert_eq!(
            got,
            [Notice::Overrun {
                dropped: 80,
                total: 110
            }]
        );
        assert_eq!(health.kernel_drops(), 110);
    }
}
