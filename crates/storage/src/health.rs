//! Logs a backend going down and coming back once per transition, not once per
//! failed message: during an outage every publish fails, and the log should say
//! so in one line.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{info, warn};

pub(crate) struct Health {
    /// What the log lines name ("redis", "redis stream reader", "mysql").
    name: &'static str,
    down: AtomicBool,
}

impl Health {
    pub(crate) fn new(name: &'static str) -> Health {
        Health { name, down: AtomicBool::new(false) }
    }

    pub(crate) fn failed(&self, error: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::AcqRel) {
            warn!(backend = self.name, %error, "backend is down");
        }
    }

    pub(crate) fn succeeded(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            info!(backend = self.name, "backend is back");
        }
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }
}
