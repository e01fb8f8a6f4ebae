//! The stored record's format: encoding a reading, and decoding (and checking) what a store holds.

use anyhow::bail;

use crate::outbox::{Entry, Record};

const RECORD_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
#[error("undecodable record in the store: {0}")]
struct BadRecord(&'static str);

/// `[version][flags: bit0 retain, bit1 plain][taken_ms: u64][topic len: u16][topic][payload]`
/// (config validation keeps topics far below 64 KiB). Records written before the `plain` bit
/// existed read as not plain: they go out without the MQTT 5 `ts` property, as before.
pub(in crate::outbox) fn encode(r: &Record) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + r.topic.len() + r.payload.len());
    v.push(RECORD_VERSION);
    v.push(r.retain as u8 | (r.plain as u8) << 1);
    v.extend_from_slice(&r.taken_ms.to_be_bytes());
    v.extend_from_slice(&(r.topic.len() as u16).to_be_bytes());
    v.extend_from_slice(r.topic.as_bytes());
    v.extend_from_slice(&r.payload);
    v
}

/// The most topic + payload bytes a record may hold. rumqttc's MQTT 3.1.1 client refuses a
/// packet over 10 KiB (its default `max_outgoing_packet_size`) by dropping the connection, so
/// such a record would be resent, and the link dropped, forever. 9 bytes of the packet go to
/// its fixed header, the topic length and the packet id. Our sensors' payloads are far smaller.
const MAX_TOPIC_AND_PAYLOAD: usize = 10 * 1024 - 9;

/// A stored record is outside input (a damaged or foreign store): whatever decodes must be
/// publishable as it is, so a record the client or the broker would refuse, or whose time
/// cannot be written, is undecodable (quarantined) instead of stopping the feeder.
pub(in crate::outbox) fn decode(key: &[u8], v: &[u8]) -> anyhow::Result<Entry> {
    let key = key_of(key)?;
    if v.len() < 12 || v[0] != RECORD_VERSION {
        bail!(BadRecord("unknown version or truncated header"));
    }
    if v.len() - 12 > MAX_TOPIC_AND_PAYLOAD {
        bail!(BadRecord("too large to publish"));
    }
    let taken_ms = u64::from_be_bytes(v[2..10].try_into().expect("8 bytes"));
    if taken_ms > crate::mqtt::properties::LAST_TS_MS {
        bail!(BadRecord("taken after year 9999"));
    }
    let topic_len = u16::from_be_bytes([v[10], v[11]]) as usize;
    let topic = v
        .get(12..12 + topic_len)
        .ok_or(BadRecord("truncated topic"))?;
    let topic = String::from_utf8(topic.to_vec()).map_err(|_| BadRecord("topic is not UTF-8"))?;
    // The checks config.rs makes on a sensor's topic: rumqttc refuses wildcards, a broker
    // drops the link over an empty topic or a NUL.
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        bail!(BadRecord("not a topic one can publish to"));
    }
    let payload = v[12 + topic_len..].to_vec();
    Ok((
        key,
        Record {
            topic,
            payload,
            retain: v[1] & 1 == 1,
            plain: v[1] & 2 == 2,
            taken_ms,
        },
    ))
}

pub(super) fn key_of(k: &[u8]) -> anyhow::Result<u64> {
    Ok(u64::from_be_bytes(
        k.try_into().map_err(|_| BadRecord("key is not 8 bytes"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::decode;

    /// Garbage of every length as a record's value: a record or an error, never a panic.
    #[test]
    fn decoding_garbage_never_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for len in 0..400 {
            for _ in 0..20 {
                let v: Vec<u8> = (0..len)
                    .map(|i| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        // Mostly a valid version byte, so the rest is exercised.
                        if i == 0 && !x.is_multiple_of(4) {
                            1
                        } else {
                            x as u8
                        }
                    })
                    .collect();
                let _ = decode(&x.to_be_bytes(), &v);
                let _ = decode(&v, &v);
            }
        }
    }
}
