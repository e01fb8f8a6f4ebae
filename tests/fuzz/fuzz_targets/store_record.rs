//! Any bytes as a stored key and value: a publishable record that re-encodes to itself, or an
//! error (the store quarantines it), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telemetryd::fuzzing::{decode_record, encode_record};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the key's length: 8 (a real key) mostly, sometimes 0-15 bytes.
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let key_len = if pick < 0xf0 {
        8
    } else {
        usize::from(pick & 0x0f)
    };
    let (key, value) = rest.split_at(key_len.min(rest.len()));
    match decode_record(key, value) {
        Ok((seq, record)) => {
            assert_eq!(key, seq.to_be_bytes());
            assert!(!record.topic.is_empty() && !record.topic.contains(['+', '#', '\0']));
            assert!(record.topic.len() + record.payload.len() <= 10 * 1024 - 9);
            // Only the two flag bits are kept, so the re-encoding may differ in that byte only.
            let again = encode_record(&record);
            assert_eq!(again.len(), value.len());
            assert_eq!(again[0], value[0]);
            assert_eq!(again[1], value[1] & 3);
            assert_eq!(again[2..], value[2..]);
            assert_eq!(decode_record(key, &again).unwrap(), (seq, record));
        }
        Err(e) => assert!(e.to_string().starts_with("undecodable record")),
    }
});
