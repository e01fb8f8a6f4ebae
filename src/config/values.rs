//! Typed config values (durations, numbers, ports, argv, log level), each parsing itself.
//!
//! Each says what it expected in a Pi owner's words, so that toml places every mistake at its
//! own key (file, line, column).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::error::{Invalid, Problem, bad};
use super::raw::At;

/// The longest duration written anywhere in a config: 136 years (`u32::MAX` seconds, MQTT's
/// "never"). Longer ones overflow or mean nothing; each key has tighter bounds of its own.
const LONGEST: Duration = Duration::from_secs(u32::MAX as u64);

/// A duration as the config writes it: whole numbers with `ms`, `s`, `m`, `h` or `d`, several
/// of them run together (`"1h30m"`), nothing else: no spaces, no capitals, no months or years
/// (`"5M"` read as five months was the mistake this type exists to refuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn get(self) -> Duration {
        self.0
    }
}

/// `humantime`'s form (`1m 30s`), the way the config would write it back.
pub fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Parses a config duration; the error says what is wrong with it and how to write it.
pub fn parse_duration(text: &str) -> Result<Duration, Invalid> {
    const UNITS: &str = "ms, s, m, h or d";
    let how = format!("write a whole number and one of {UNITS}, like \"30s\" or \"5m\"");
    if text.trim().is_empty() {
        return Err(Invalid(format!("an empty duration: {how}")));
    }
    if text.contains(char::is_whitespace) {
        let joined: String = text.split_whitespace().collect();
        return Err(Invalid(match parse_duration(&joined) {
            Ok(_) => format!("{text:?} has a space in it: write it without, like {joined:?}"),
            Err(_) => format!("{text:?} is not a duration: {how}"),
        }));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(Invalid(format!("{text:?} is not a duration: {how}")));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| too_long(text))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let one = match unit {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            "" => {
                return Err(Invalid(format!(
                    "{text:?} has no unit: write {:?} for seconds ({UNITS})",
                    format!("{text}s")
                )));
            }
            "M" => {
                return Err(Invalid(format!(
                    "{text:?}: \"M\" would be months, which telemetryd does not take: write \
                     minutes as \"m\" ({UNITS})"
                )));
            }
            "." | "," => {
                return Err(Invalid(format!(
                    "{text:?}: whole numbers only: write \"1500ms\" for 1.5 seconds, or \"1m30s\""
                )));
            }
            other => {
                return Err(Invalid(format!(
                    "{text:?}: {other:?} is not a unit telemetryd takes: use {UNITS} (lowercase)"
                )));
            }
        };
        let part = u32::try_from(number)
            .ok()
            .and_then(|n| one.checked_mul(n))
            .ok_or_else(|| too_long(text))?;
        total = total
            .checked_add(part)
            .filter(|t| *t <= LONGEST)
            .ok_or_else(|| too_long(text))?;
    }
    Ok(total)
}

fn too_long(text: &str) -> Invalid {
    Invalid(format!(
        "{text:?} is too long: the longest duration is 49710d"
    ))
}

/// A duration that must lie in `min..=max`; the error says which end and why.
pub(super) fn bounded(
    d: &At<Dur>,
    key: &str,
    min: Duration,
    max: Duration,
    why: &str,
) -> Result<Duration, Problem> {
    let v = d.get_ref().get();
    if v < min {
        return bad(
            d.span(),
            format!(
                "{key} {} is too short: the minimum is {}{why}",
                show(v),
                show(min)
            ),
        );
    }
    if v > max {
        return bad(
            d.span(),
            format!(
                "{key} {} is too long: the maximum is {}{why}",
                show(v),
                show(max)
            ),
        );
    }
    Ok(v)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration in quotes, like \"30s\" (ms, s, m, h or d)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "a duration needs a unit and quotes: write \"{v}s\" for seconds (ms, s, m, h or d)"
                )))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                self.visit_i64(v as i64)
            }
        }
        d.deserialize_any(V)
    }
}

/// Deserializes any TOML integer to an `i64`; anything else is an error naming `expected`.
struct Integer(String);

impl Visitor<'_> for Integer {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        match v.trim().parse::<i64>() {
            Ok(n) => Err(E::custom(format!(
                "{v:?} is in quotes: write the number without them ({n}); expected {}",
                self.0
            ))),
            Err(_) => Err(E::invalid_type(de::Unexpected::Str(v), &self)),
        }
    }
}

/// Reads any TOML integer; anything else is an error saying `expected`.
pub fn integer<'de, D: Deserializer<'de>>(d: D, expected: &str) -> Result<i64, D::Error> {
    d.deserialize_any(Integer(expected.to_owned()))
}

/// Reads an integer that must be `lo..=hi`; the error says "a whole number from lo to hi".
fn integer_in<'de, D: Deserializer<'de>>(d: D, lo: i64, hi: i64) -> Result<i64, D::Error> {
    let expected = format!("a whole number from {lo} to {hi}");
    let v = d.deserialize_any(Integer(expected.clone()))?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(de::Error::custom(format!(
            "{v} is out of range: expected {expected}"
        )))
    }
}

/// A TCP port: 1 to 65535 (0 made the daemon retry a port nobody can listen on forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        integer_in(d, 1, 65_535).map(|v| Port(v as u16))
    }
}

/// A whole number bounded by `LO..=HI` (`max_messages`, `decimals`, `average`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole<const LO: u64, const HI: u64>(pub u64);

impl<'de, const LO: u64, const HI: u64> Deserialize<'de> for Whole<LO, HI> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        integer_in(d, LO as i64, HI as i64).map(|v| Whole(v as u64))
    }
}

/// A finite number: TOML also has `inf` and `nan`, which would make every reading non-finite
/// (or every bound check false). An integer (`scale = 2`) is a number too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number(pub f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, like 1.5 or -3")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
                if v.is_finite() {
                    Ok(Number(v))
                } else {
                    let toml = if v.is_nan() {
                        "nan"
                    } else if v > 0.0 {
                        "inf"
                    } else {
                        "-inf"
                    };
                    Err(E::custom(format!(
                        "{toml} is not a number telemetryd can use: give a finite number, like 1.5"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Number, E> {
                if v.trim().parse::<f64>().is_ok() {
                    Err(E::custom(format!(
                        "{v:?} is in quotes: write the number without them"
                    )))
                } else {
                    Err(E::invalid_type(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The argv of a `command` sensor: a list of words, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

/// More words than this is not a sensor's command line.
const MAX_ARGS: usize = 256;

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Argv;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list like [\"vcgencmd\", \"measure_temp\"]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Argv, E> {
                let words: Vec<String> = v.split_whitespace().map(|w| format!("{w:?}")).collect();
                Err(E::custom(format!(
                    "a list of words, run without a shell: write [{}]",
                    words.join(", ")
                )))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Argv, A::Error> {
                let mut argv = Vec::new();
                while let Some(word) = seq.next_element::<String>()? {
                    if argv.len() == MAX_ARGS {
                        return Err(de::Error::custom(format!(
                            "command has more than {MAX_ARGS} words"
                        )));
                    }
                    argv.push(word);
                }
                Ok(Argv(argv))
            }
        }
        d.deserialize_any(V)
    }
}

/// `log_level`: one of [`crate::logging::LEVELS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level(pub String);

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if crate::logging::LEVELS.contains(&s.as_str()) {
            Ok(Level(s))
        } else {
            Err(de::Error::custom(format!(
                "{s:?} is not one of {}",
                crate::logging::LEVELS.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_s_m_h_d_only() {
        let ok = |t: &str| parse_duration(t).unwrap();
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("2h"), Duration::from_secs(7200));
        assert_eq!(ok("1d"), Duration::from_secs(86_400));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("0s"), Duration::ZERO);
        let no = |t: &str| parse_duration(t).unwrap_err().0;
        assert!(no("5M").contains("months"), "{}", no("5M"));
        assert!(no("10y").contains("\"y\" is not a unit"), "{}", no("10y"));
        assert!(no("30 s").contains("space"), "{}", no("30 s"));
        assert!(
            no("30sec").contains("\"sec\" is not a unit"),
            "{}",
            no("30sec")
        );
        assert!(no("30S").contains("lowercase"), "{}", no("30S"));
        assert!(no("30").contains("no unit"), "{}", no("30"));
        assert!(no("1.5s").contains("whole numbers"), "{}", no("1.5s"));
        assert!(no("").contains("empty"));
        assert!(no("s").contains("not a duration"));
        assert!(no("99999999999999999999999d").contains("too long"));
        assert!(no("50000d").contains("too long"));
        assert!(no("-5s").contains("not a duration"));
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Any text gives a duration or an error, never a panic; what it accepts is made of
        /// whole numbers and the five units only.
        #[test]
        fn any_text_is_a_duration_or_an_error(text in "\\PC{0,24}") {
            if parse_duration(&text).is_ok() {
                proptest::prop_assert!(text.chars().all(|c| c.is_ascii_digit() || "mshd".contains(c)), "{text:?}");
            }
        }

        /// Parts run together add up ("1h30m" is 90 minutes), up to 136 years.
        #[test]
        fn parts_add_up(parts in proptest::collection::vec((0u32..100_000, 0usize..5), 1..4)) {
            let units = [("ms", 1u64), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)];
            let text: String = parts.iter().map(|(n, u)| format!("{n}{}", units[*u].0)).collect();
            let ms: u64 = parts.iter().map(|(n, u)| u64::from(*n) * units[*u].1).sum();
            if Duration::from_millis(ms) <= LONGEST {
                proptest::prop_assert_eq!(parse_duration(&text), Ok(Duration::from_millis(ms)));
            } else {
                proptest::prop_assert!(parse_duration(&text).unwrap_err().0.contains("too long"));
            }
        }
    }
}
