//! Outcomes are events. Each daemon decides what happened to an object (queued, sent,
//! delivered, failed, …) at exactly one place and emits it here, to every subscriber in turn:
//! the log line, the counters the summary and `/metrics` read, the audit log. A new consumer of
//! outcomes is one new [`Subscriber`], added where the daemon builds its [`Outcomes`].

/// Something that wants to hear every outcome of type `O`.
pub trait Subscriber<O>: Send {
    /// Called once per outcome, in the order they happen.
    fn on_outcome(&mut self, outcome: &O);
}

impl<O, F: FnMut(&O) + Send> Subscriber<O> for F {
    fn on_outcome(&mut self, outcome: &O) {
        self(outcome);
    }
}

/// The subscribers of one daemon, in the order they were added.
pub struct Outcomes<O> {
    subscribers: Vec<Box<dyn Subscriber<O>>>,
}

impl<O> std::fmt::Debug for Outcomes<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcomes")
            .field("subscribers", &self.subscribers.len())
            .finish()
    }
}

impl<O> Default for Outcomes<O> {
    fn default() -> Self {
        Outcomes {
            subscribers: Vec::new(),
        }
    }
}

impl<O> Outcomes<O> {
    /// Adds a subscriber; it hears every outcome emitted from now on.
    pub fn subscribe(&mut self, subscriber: impl Subscriber<O> + 'static) {
        self.subscribers.push(Box::new(subscriber));
    }

    /// Tells every subscriber.
    pub fn emit(&mut self, outcome: O) {
        for subscriber in &mut self.subscribers {
            subscriber.on_outcome(&outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn every_subscriber_hears_every_outcome_in_order() {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let mut outcomes = Outcomes::default();
        for name in ["log", "audit"] {
            let heard = heard.clone();
            outcomes.subscribe(move |o: &u32| heard.lock().unwrap().push((name, *o)));
        }
        outcomes.emit(1);
        outcomes.emit(2);
        assert_eq!(
            *heard.lock().unwrap(),
            [("log", 1), ("audit", 1), ("log", 2), ("audit", 2)]
        );
    }
}
