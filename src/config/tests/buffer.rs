//! The `[buffer]` table.

use super::*;

#[test]
fn commit_interval_is_a_bounded_duration() {
    let with =
        |v: &str| parse(&SEED.replace("[buffer]", &format!("[buffer]\ncommit_interval = {v}")));
    assert_eq!(
        with("\"250ms\"").unwrap().buffer.commit_interval,
        Duration::from_millis(250)
    );
    assert_eq!(
        with("\"0s\"").unwrap().buffer.commit_interval,
        Duration::ZERO
    );
    assert_eq!(
        with("\"1m\"").unwrap().buffer.commit_interval,
        Duration::from_secs(60)
    );
    let err = with("\"61s\"").unwrap_err();
    assert!(
        err.contains("[buffer] commit_interval 1m 1s is too long") && err.contains("1m"),
        "{err}"
    );
    let err = with("\"soon\"").unwrap_err();
    assert!(err.contains("commit_interval"), "{err}");
}
