//! Reading variables: one snapshot of the environment and the parsers every section uses,
//! so each rule (empty means unset, durations are positive and bounded, a malformed value
//! names its variable) is written once.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// Ten years bounds every duration; beyond it `Duration` arithmetic would overflow.
const MAX_SECONDS: f64 = 315_360_000.0;

pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn from_process() -> Env {
        Env::from_pairs(std::env::vars())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Env {
        Env { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// The value of `k`; an empty variable counts as unset.
    pub fn get(&self, k: &str) -> Option<String> {
        self.vars.get(k).filter(|v| !v.trim().is_empty()).cloned()
    }

    pub fn string(&self, k: &str, default: &str) -> String {
        self.get(k).unwrap_or_else(|| default.to_string())
    }

    pub fn num<T: FromStr>(&self, k: &str, default: T) -> Result<T> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| Error::Config(format!("{k}={v:?} is not a valid number"))),
        }
    }

    pub fn secs(&self, k: &str, default: u64) -> Result<Duration> {
        let s: f64 = self.num(k, default as f64)?;
        if !(s > 0.0 && s <= MAX_SECONDS) {
            return Err(Error::Config(format!("{k} must be a positive number of seconds, at most ten years")));
        }
        Ok(Duration::from_secs_f64(s))
    }

    /// A duration with no default: `None` when unset.
    pub fn opt_secs(&self, k: &str) -> Result<Option<Duration>> {
        match self.get(k) {
            None => Ok(None),
            Some(_) => self.secs(k, 1).map(Some),
        }
    }

    pub fn flag(&self, k: &str, default: bool) -> Result<bool> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => parse_bool(&v).ok_or_else(|| Error::Config(format!("{k}={v:?} must be true or false"))),
        }
    }

    /// `(suffix, value)` of every set variable named `<prefix><suffix>`.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.vars
            .iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
    }
}

/// The words a boolean variable may be set to, in any case.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_unset_and_bad_values_name_their_variable() {
        let env = Env::from_pairs([("A", ""), ("B", "x"), ("C", "-1"), ("D", "2.5"), ("E", "maybe")]);
        assert_eq!(env.get("A"), None);
        assert_eq!(env.num("A", 7).unwrap(), 7);
        assert_eq!(env.num::<i64>("B", 0).unwrap_err().to_string(), "configuration: B=\"x\" is not a valid number");
        assert!(env.secs("C", 1).unwrap_err().to_string().contains("C must be a positive number of seconds"));
        assert_eq!(env.secs("D", 1).unwrap(), Duration::from_millis(2500));
        assert_eq!(env.opt_secs("A").unwrap(), None);
        assert!(env.flag("E", false).unwrap_err().to_string().contains("E=\"maybe\" must be true or false"));
    }
}
