//! What an MQTT 5 PUBACK reason code does to the reading it answers.
//!
//! docs/BROKERS.md has the table. MQTT 3.1.1 PUBACKs carry no code and always mean "delivered".

/// The feeder's answer to a PUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The broker took it: delete it from the store.
    Delivered,
    /// The broker refuses this message and would refuse it again (its topic, its payload, the
    /// ACL): move it to the store's quarantine tree, so it neither blocks the readings behind
    /// it nor disappears unseen.
    Quarantine,
    /// The broker cannot take it now (quota, an unspecified failure): keep it and send it
    /// again after a pause.
    Retry,
}

pub fn verdict(code: u8) -> Verdict {
    match code {
        // Success; No matching subscribers (accepted: nobody listens right now, which a
        // 3.1.1 broker would not even tell us).
        0x00 | 0x10 => Verdict::Delivered,
        // Not authorized (ACL), Topic Name invalid, Payload format invalid: about this very
        // message. Implementation specific error: what broker plugins answer when they judge
        // the message (HiveMQ extensions, EMQX hooks); resending the same bytes gets the same.
        0x83 | 0x87 | 0x90 | 0x99 => Verdict::Quarantine,
        // Unspecified error, Packet identifier in use, Quota exceeded, and codes MQTT 5 does
        // not define for a PUBACK: nothing says the message is at fault, so keep it.
        _ => Verdict::Retry,
    }
}

/// The reason code's name in the MQTT 5 spec, for the log.
pub fn name(code: u8) -> &'static str {
    match code {
        0x00 => "Success",
        0x10 => "No matching subscribers",
        0x80 => "Unspecified error",
        0x83 => "Implementation specific error",
        0x87 => "Not authorized",
        0x90 => "Topic Name invalid",
        0x91 => "Packet identifier in use",
        0x97 => "Quota exceeded",
        0x99 => "Payload format invalid",
        _ => "not a PUBACK reason code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_puback_code_has_a_verdict_and_a_name() {
        let table = [
            (0x00, Verdict::Delivered),
            (0x10, Verdict::Delivered),
            (0x80, Verdict::Retry),
            (0x83, Verdict::Quarantine),
            (0x87, Verdict::Quarantine),
            (0x90, Verdict::Quarantine),
            (0x91, Verdict::Retry),
            (0x97, Verdict::Retry),
            (0x99, Verdict::Quarantine),
        ];
        for (code, v) in table {
            assert_eq!(verdict(code), v, "{code:#04x}");
            assert_ne!(name(code), name(0x42), "{code:#04x} has no name");
        }
        assert_eq!(verdict(0x42), Verdict::Retry);
    }
}
