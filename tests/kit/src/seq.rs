//! Sequence checks on counter values: gaps, duplicates and reorders ([`SeqReport`]).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::thread;
use std::time::Instant;

use crate::DEADLINE;
use crate::wait::POLL;

/// What a stream of counter values looks like.
#[derive(Debug)]
pub struct SeqReport {
    pub messages: usize,
    pub distinct: usize,
    pub duplicates: usize,
    /// Highest value seen.
    pub max: u64,
    /// Values of 1..=max never received.
    pub missing: Vec<u64>,
    /// (arrival index, value, highest first delivery before it): a first delivery that came
    /// after a higher value.
    pub reorders: Vec<(usize, u64, u64)>,
}

impl SeqReport {
    pub fn of(values: &[u64]) -> SeqReport {
        let mut seen = HashSet::new();
        let mut max = 0;
        let mut reorders = Vec::new();
        for (i, &v) in values.iter().enumerate() {
            if seen.insert(v) {
                if v < max {
                    reorders.push((i, v, max));
                }
                max = max.max(v);
            }
        }
        let missing = (1..=max).filter(|v| !seen.contains(v)).collect();
        SeqReport {
            messages: values.len(),
            distinct: seen.len(),
            duplicates: values.len() - seen.len(),
            max,
            missing,
            reorders,
        }
    }

    /// Whether 1..=upto arrived, except at most `allowed_missing` values.
    pub fn covers(&self, upto: u64, allowed_missing: usize) -> bool {
        self.max >= upto && self.missing.len() <= allowed_missing
    }
}

/// `1-57,59,61-300` style summary of a value set.
pub fn ranges(values: &[u64]) -> String {
    let mut v: Vec<u64> = values.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if v[i] == start {
            write!(out, "{start}").unwrap();
        } else {
            write!(out, "{start}-{}", v[i]).unwrap();
        }
        i += 1;
    }
    out
}

pub fn describe(values: &[u64]) -> String {
    let r = SeqReport::of(values);
    let reorders: Vec<_> = r.reorders.iter().take(10).collect();
    format!(
        "{} messages, {} distinct, {} duplicates, max {}, received {}, missing [{}], \
         reorders (index, value, after) {:?}{}",
        r.messages,
        r.distinct,
        r.duplicates,
        r.max,
        ranges(values),
        ranges(&r.missing),
        reorders,
        if r.reorders.len() > 10 { " ..." } else { "" }
    )
}

/// Asserts: first deliveries strictly increasing (no reorder), every value of 1..=upto
/// received, except at most `allowed_missing` isolated values (each a gap of size 1).
pub fn assert_in_order(values: &[u64], upto: u64, allowed_missing: usize) {
    if let Err(e) = check_in_order(values, upto, allowed_missing) {
        panic!("{e}");
    }
}

/// How a sequence fails [`check_in_order`]; each names the whole sequence ([`describe`]).
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("reordered first deliveries: {0}")]
    Reordered(String),
    #[error("expected values up to {upto}: {summary}")]
    Short { upto: u64, summary: String },
    #[error("gap: at most {allowed_missing} missing value(s) allowed: {summary}")]
    TooManyMissing {
        allowed_missing: usize,
        summary: String,
    },
    #[error("a gap of more than one value: {0}")]
    WideGap(String),
}

/// [`assert_in_order`]'s check, as a result.
pub fn check_in_order(values: &[u64], upto: u64, allowed_missing: usize) -> Result<(), OrderError> {
    let r = SeqReport::of(values);
    let summary = describe(values);
    if !r.reorders.is_empty() {
        return Err(OrderError::Reordered(summary));
    }
    if r.max < upto {
        return Err(OrderError::Short { upto, summary });
    }
    if r.missing.len() > allowed_missing {
        return Err(OrderError::TooManyMissing {
            allowed_missing,
            summary,
        });
    }
    if r.missing.windows(2).any(|w| w[1] == w[0] + 1) {
        return Err(OrderError::WideGap(summary));
    }
    Ok(())
}

/// Waits until `values()` (counter values in arrival order) has every value of 1..=upto but at
/// most `allowed_missing`, then checks the order.
pub fn wait_delivered_by(
    values: &dyn Fn() -> Vec<u64>,
    what: &str,
    upto: u64,
    allowed_missing: usize,
) {
    let start = Instant::now();
    while !SeqReport::of(&values()).covers(upto, allowed_missing) {
        if start.elapsed() >= DEADLINE {
            panic!(
                "timed out after {DEADLINE:?} waiting until {what} has 1..={upto} \
                 (at most {allowed_missing} missing); it has: {}",
                describe(&values())
            );
        }
        thread::sleep(POLL);
    }
    assert_in_order(&values(), upto, allowed_missing);
}

/// Asserts: first deliveries in order, every value of `1..=upto` received except values in
/// `may_miss`.
pub fn assert_complete_except(values: &[u64], upto: u64, may_miss: &HashSet<u64>, what: &str) {
    let r = SeqReport::of(values);
    assert!(
        r.reorders.is_empty(),
        "{what}: reordered first deliveries: {}",
        describe(values)
    );
    assert!(
        r.max >= upto,
        "{what}: expected values up to {upto}: {}",
        describe(values)
    );
    let unexplained: Vec<u64> = r
        .missing
        .iter()
        .copied()
        .filter(|v| *v <= upto && !may_miss.contains(v))
        .collect();
    assert!(
        unexplained.is_empty(),
        "{what}: missing {} beyond those that may be missing ({}): {}",
        ranges(&unexplained),
        ranges(&may_miss.iter().copied().collect::<Vec<_>>()),
        describe(values)
    );
}

/// Waits until `values()` holds every value of `1..=upto` except values in `may_miss`.
pub fn wait_complete_except(
    values: &dyn Fn() -> Vec<u64>,
    upto: u64,
    may_miss: &HashSet<u64>,
    what: &str,
) {
    let start = Instant::now();
    loop {
        let v = values();
        let r = SeqReport::of(&v);
        if r.max >= upto && r.missing.iter().all(|m| *m > upto || may_miss.contains(m)) {
            break;
        }
        if start.elapsed() >= DEADLINE {
            panic!(
                "timed out after {DEADLINE:?} waiting until {what} has 1..={upto} but for {}: {}",
                ranges(&may_miss.iter().copied().collect::<Vec<_>>()),
                describe(&v)
            );
        }
        thread::sleep(POLL);
    }
    assert_complete_except(&values(), upto, may_miss, what);
}
