//! Which sensors are failing right now, for systemd's STATUS line and the summary.
//!
//! A daemon whose every sensor fails must not look healthy.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How many failing sensors are named; the rest are counted.
const NAMED: usize = 3;

#[derive(Debug, Default)]
pub struct Health {
    /// Sensors configured (set at every apply of the config).
    sensors: AtomicUsize,
    /// Failing sensors, by name, with the id of the task that said so: a task restarted by a
    /// reload must not clear what its successor found.
    failing: Mutex<BTreeMap<String, u64>>,
    next_task: AtomicU64,
}

impl Health {
    pub fn set_sensors(&self, n: usize) {
        self.sensors.store(n, Ordering::Relaxed);
    }

    /// An id for a sensor task that starts now.
    pub fn task(&self) -> u64 {
        self.next_task.fetch_add(1, Ordering::Relaxed)
    }

    /// `name`'s last read failed (or it has not read once yet).
    pub fn failing(&self, name: &str, task: u64) {
        if let Ok(mut f) = self.failing.lock() {
            f.insert(name.to_owned(), task);
        }
    }

    /// `name` read fine, or its task `task` ended.
    pub fn ok(&self, name: &str, task: u64) {
        if let Ok(mut f) = self.failing.lock()
            && f.get(name) == Some(&task)
        {
            f.remove(name);
        }
    }

    /// The failing sensors' names.
    pub fn failing_names(&self) -> Vec<String> {
        self.failing
            .lock()
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// `2 sensors ok`, or `1 of 2 sensors failing: outside` (at most three named).
    pub fn describe(&self) -> String {
        let total = self.sensors.load(Ordering::Relaxed);
        let names = self.failing_names();
        describe(total, &names)
    }
}

fn describe(total: usize, failing: &[String]) -> String {
    let plural = |n: usize| if n == 1 { "sensor" } else { "sensors" };
    if failing.is_empty() {
        return format!("{total} {} ok", plural(total));
    }
    let mut named = failing[..failing.len().min(NAMED)].join(", ");
    if failing.len() > NAMED {
        named.push_str(&format!(" and {} more", failing.len() - NAMED));
    }
    format!(
        "{} of {total} {} failing: {named}",
        failing.len(),
        plural(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_failing_sensors_and_forgets_them_when_they_recover() {
        let h = Health::default();
        h.set_sensors(2);
        assert_eq!(h.describe(), "2 sensors ok");
        let (a, b) = (h.task(), h.task());
        h.failing("outside", a);
        assert_eq!(h.describe(), "1 of 2 sensors failing: outside");
        h.failing("cpu", b);
        assert_eq!(h.describe(), "2 of 2 sensors failing: cpu, outside");
        h.ok("outside", a);
        assert_eq!(h.describe(), "1 of 2 sensors failing: cpu");
    }

    /// A reload restarts a sensor: the old task ending must not clear the new one's failure.
    #[test]
    fn an_ended_task_does_not_clear_its_successors_failure() {
        let h = Health::default();
        h.set_sensors(1);
        let (old, new) = (h.task(), h.task());
        h.failing("outside", old);
        h.failing("outside", new);
        h.ok("outside", old);
        assert_eq!(h.describe(), "1 of 1 sensor failing: outside");
    }

    #[test]
    fn many_failing_are_counted_after_three() {
        let names: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        assert_eq!(
            describe(9, &names),
            "5 of 9 sensors failing: a, b, c and 2 more"
        );
        assert_eq!(describe(1, &[]), "1 sensor ok");
    }
}
