//! The percentile every benchmark reports: the nearest rank over sorted samples.

/// The `q` quantile (0..=1) of `sorted`; `None` when there are no samples.
pub(crate) fn of<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied()
}
