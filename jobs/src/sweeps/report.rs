//! What one sweep run did, for its `sweep_runs` row and its log line.

use std::fmt;
use std::ops::Deref;

/// A run's one-line summary, and whether it changed anything. A run that did nothing is
/// logged at DEBUG: a quiet system's sweeps would otherwise log a line every few seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub text: String,
    pub acted: bool,
}

impl Report {
    pub fn new(text: impl Into<String>, acted: bool) -> Report {
        Report { text: text.into(), acted }
    }

    /// A run that looked and found nothing to do.
    pub fn idle(text: impl Into<String>) -> Report {
        Report::new(text, false)
    }
}

impl Deref for Report {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq<&str> for Report {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}
