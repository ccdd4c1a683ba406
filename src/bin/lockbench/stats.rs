//! What one connection (and then the whole run) counted: replies by kind, failures, latencies,
//! and the first few distinct error messages.

use crate::histogram::Histogram;

/// Distinct error messages kept for the report.
const MAX_ERROR_SAMPLES: usize = 3;

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub granted: u64,
    pub null: u64,
    pub cycles: u64,
    pub unlock_zero: u64,
    pub error_replies: u64,
    pub unexpected: u64,
    pub io_errors: u64,
    pub timeouts: u64,
    pub lock_latency: Histogram,
    pub unlock_latency: Histogram,
    pub error_samples: Vec<String>,
}

impl Stats {
    pub fn merge(&mut self, o: Stats) {
        self.granted += o.granted;
        self.null += o.null;
        self.cycles += o.cycles;
        self.unlock_zero += o.unlock_zero;
        self.error_replies += o.error_replies;
        self.unexpected += o.unexpected;
        self.io_errors += o.io_errors;
        self.timeouts += o.timeouts;
        self.lock_latency.merge(&o.lock_latency);
        self.unlock_latency.merge(&o.unlock_latency);
        for e in o.error_samples {
            self.note_error(&e);
        }
    }

    pub fn note_error(&mut self, text: &str) {
        if self.error_samples.len() < MAX_ERROR_SAMPLES
            && !self.error_samples.iter().any(|e| e == text)
        {
            self.error_samples.push(text.to_owned());
        }
    }

    /// A reply of a type a `what` request never gets.
    pub fn unexpected(&mut self, measuring: bool, what: &str) {
        self.unexpected += u64::from(measuring);
        self.note_error(&format!("unexpected reply type to {what}"));
    }

    pub fn errors(&self) -> u64 {
        self.error_replies + self.unexpected + self.io_errors + self.timeouts
    }

    pub fn answered(&self) -> u64 {
        self.lock_latency.total + self.unlock_latency.total
    }
}
