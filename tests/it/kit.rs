//! Checks of the test kit itself (tests/kit): the sequence checks every delivery test rests
//! on, and the ANSI stripping of the failure dump.

use telemetryd_testkit::*;

#[test]
fn sequence_checks_detect_gaps_and_reorders() {
    let r = SeqReport::of(&[1, 2, 2, 3, 5, 4, 6, 1]);
    assert_eq!((r.max, r.duplicates, r.distinct), (6, 2, 6));
    assert_eq!(r.reorders, vec![(5, 4, 5)]);
    assert!(r.missing.is_empty());
    let r = SeqReport::of(&[2, 3, 5, 6]);
    assert_eq!(r.missing, vec![1, 4]);
    assert!(r.covers(6, 2) && !r.covers(6, 1) && !r.covers(7, 2));
    assert_eq!(ranges(&[7, 1, 2, 3, 5, 3]), "1-3,5,7");
    assert_in_order(&[1, 2, 1, 2, 3, 4, 3], 4, 0);
    assert_in_order(&[1, 2, 4, 5], 5, 1);
    assert_in_order(&[1, 3, 5], 5, 2);
    for (bad, missing) in [
        (&[1u64, 3, 2][..], 1),
        (&[1, 2, 5], 1),
        (&[2, 3], 0),
        (&[1, 3, 5], 1),
        (&[1, 2], 1),
        (&[1, 4], 2),
    ] {
        let r = check_in_order(bad, 3, missing);
        assert!(
            r.is_err(),
            "{bad:?} accepted with {missing} missing allowed"
        );
    }
    assert_eq!(
        strip_ansi("\u{1b}[2mtime\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
        "time  INFO x"
    );
}
