//! What a benchmark phase cost the machine and the database per unit of work (op, item,
//! task or transaction), from counters read before and after it. Rates alone say which
//! phase is faster; these say why, and whether the phase was bound by the cores (the
//! machine busy throughout) or by waiting (cores left idle), which is what tells a code
//! change from a goal the hardware rules out.

use std::time::Instant;

use sqlx::PgPool;

/// Counters that only grow, read at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counters {
    at: Instant,
    /// Seconds of CPU the whole machine spent busy and in all, from `/proc/stat`: the
    /// database, the workers and the bench share the cores, so only the whole counts.
    cpu: Option<(f64, f64)>,
    /// Every statement `pg_stat_statements` saw in this database, and their execution ms.
    statements: Option<(i64, f64)>,
    /// The next transaction id: how many transactions wrote (read-only ones take none).
    next_xid: i64,
    /// Bytes of WAL written since the cluster began.
    wal: i64,
}

/// The counters around one phase's load, to be turned into what it spent once its units are
/// counted and its name is known.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub before: Counters,
    pub after: Counters,
}

impl Window {
    pub(crate) fn spent(&self, phase: impl Into<String>, units: usize) -> Spent {
        self.before.until(&self.after, phase, units)
    }
}

/// What one phase spent, per unit of work.
#[derive(Debug, Clone)]
pub(crate) struct Spent {
    pub phase: String,
    pub units: usize,
    pub secs: f64,
    /// Share of the machine's cores that were busy (0..=1).
    pub busy: Option<f64>,
    /// CPU ms of the whole machine per unit.
    pub cpu_ms: Option<f64>,
    pub statements: Option<f64>,
    /// Execution ms per unit, summed over statements (what the database's executor spent).
    pub exec_ms: Option<f64>,
    pub writing_xacts: f64,
    pub wal_bytes: f64,
}

impl Counters {
    /// `statements`: whether `pg_stat_statements` is usable (the bench's `--pg-stat`).
    pub(crate) async fn read(pool: &PgPool, statements: bool) -> jobs::Result<Counters> {
        let (next_xid, wal): (i64, i64) = sqlx::query_as(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8",
        )
        .fetch_one(pool)
        .await?;
        let statements = if statements {
            Some(
                sqlx::query_as(
                    "SELECT coalesce(sum(calls), 0)::int8, coalesce(sum(total_exec_time), 0)::float8
                       FROM pg_stat_statements
                      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                )
                .fetch_one(pool)
                .await?,
            )
        } else {
            None
        };
        Ok(Counters { at: Instant::now(), cpu: machine_cpu(), statements, next_xid, wal })
    }

    /// What was spent from `self` to `later` on `units` units of work.
    pub(crate) fn until(&self, later: &Counters, phase: impl Into<String>, units: usize) -> Spent {
        let per = |v: f64| v / units.max(1) as f64;
        let cpu = self.cpu.zip(later.cpu).map(|((b0, t0), (b1, t1))| (b1 - b0, t1 - t0));
        let statements = self.statements.zip(later.statements).map(|((c0, e0), (c1, e1))| (c1 - c0, e1 - e0));
        Spent {
            phase: phase.into(),
            units,
            secs: later.at.duration_since(self.at).as_secs_f64(),
            busy: cpu.filter(|(_, total)| *total > 0.0).map(|(busy, total)| busy / total),
            cpu_ms: cpu.map(|(busy, _)| per(busy * 1000.0)),
            statements: statements.map(|(calls, _)| per(calls as f64)),
            exec_ms: statements.map(|(_, ms)| per(ms)),
            writing_xacts: per((later.next_xid - self.next_xid) as f64),
            wal_bytes: per((later.wal - self.wal) as f64),
        }
    }
}

/// `(busy, total)` CPU seconds of the machine since boot; `None` where `/proc/stat` is not
/// readable (not Linux).
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(stat.lines().next()?)
}

/// The aggregate `cpu` line: user nice system idle iowait irq softirq steal (in USER_HZ,
/// which Linux fixes at 100 for this interface).
fn parse_cpu_line(line: &str) -> Option<(f64, f64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<f64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v.try_into().ok()?;
    let busy = user + nice + system + irq + softirq + steal;
    Some((busy / 100.0, (busy + idle + iowait) / 100.0))
}

/// The table of what each phase spent, for the report.
pub(crate) fn print(spent: &[Spent]) {
    if spent.is_empty() {
        return;
    }
    let opt = |v: Option<f64>, f: fn(f64) -> String| v.filter(|v| v.is_finite()).map_or("-".into(), f);
    println!();
    println!(
        "What each phase spent per unit of work (op, item, task or transaction), counted from just before \
         its load started to just after its last unit was done; machine CPU counts every process on the cores:"
    );
    println!();
    println!(
        "| phase | units | s | cores busy | machine CPU ms / unit | statements / unit | executor ms / unit | writing transactions / unit | WAL bytes / unit |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for s in spent {
        println!(
            "| {} | {} | {:.1} | {} | {} | {} | {} | {:.2} | {:.0} |",
            s.phase,
            s.units,
            s.secs,
            opt(s.busy, |b| format!("{:.0}%", b * 100.0)),
            opt(s.cpu_ms, |v| format!("{v:.3}")),
            opt(s.statements, |v| format!("{v:.2}")),
            opt(s.exec_ms, |v| format!("{v:.3}")),
            s.writing_xacts,
            s.wal_bytes,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_counts_steal_as_busy_and_iowait_as_idle() {
        let line = "cpu  100 20 80 500 50 10 10 30 0 0";
        assert_eq!(parse_cpu_line(line), Some((2.5, 8.0)));
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5 6 7 8"), None, "a single core's line is not the machine's");
        assert_eq!(parse_cpu_line("cpu 1 2 3"), None, "too few fields");
    }

    #[test]
    fn spent_is_per_unit_and_busy_is_a_share_of_the_cores() {
        let t0 = Instant::now();
        let before = Counters { at: t0, cpu: Some((10.0, 20.0)), statements: Some((100, 5.0)), next_xid: 1000, wal: 0 };
        let after = Counters {
            at: t0 + std::time::Duration::from_secs(2),
            cpu: Some((13.0, 24.0)),
            statements: Some((400, 35.0)),
            next_xid: 1200,
            wal: 60_000,
        };
        let s = before.until(&after, "phase", 100);
        assert_eq!(s.secs, 2.0);
        assert_eq!(s.busy, Some(0.75));
        assert_eq!(s.cpu_ms, Some(30.0));
        assert_eq!(s.statements, Some(3.0));
        assert_eq!(s.exec_ms, Some(0.3));
        assert_eq!(s.writing_xacts, 2.0);
        assert_eq!(s.wal_bytes, 600.0);
        let unread = Counters { cpu: None, statements: None, ..before };
        let s = unread.until(&after, "phase", 100);
        assert_eq!((s.busy, s.cpu_ms, s.statements), (None, None, None));
    }
}
