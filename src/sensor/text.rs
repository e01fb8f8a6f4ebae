//! Numbers and short excerpts taken from outside text (files, command output).
//!
//! The first number is what a reading is taken from; the excerpt is what an error message
//! quotes.

/// The first number in `text`: the first maximal run of the form `[+-]digits[.digits][e[+-]digits]`
/// (`.5` and `5.` included). `None` if there is none or it is not finite (e.g. `1e999`).
pub(crate) fn first_number(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut start = 0;
    while start < b.len() {
        // Only ASCII bytes are ever matched, so slicing at these indices is UTF-8 safe.
        let mut i = start;
        if b[i] == b'+' || b[i] == b'-' {
            i += 1;
        }
        let int_end = digits(i);
        let mut end = int_end;
        if end < b.len() && b[end] == b'.' {
            end = digits(end + 1);
        }
        // A mantissa needs a digit: "-", "." and "-." are not numbers.
        if end - i > 1 || int_end > i {
            if end < b.len() && (b[end] == b'e' || b[end] == b'E') {
                let mut j = end + 1;
                if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                    j += 1;
                }
                let exp_end = digits(j);
                if exp_end > j {
                    end = exp_end;
                }
            }
            return text[start..end]
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite());
        }
        start += 1;
    }
    None
}

/// A short, single-line excerpt of `text` for error messages.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX: usize = 60;
    let line = text.trim();
    if line.chars().count() > MAX {
        format!("{}…", line.chars().take(MAX).collect::<String>())
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_number_variants() {
        assert_eq!(first_number("48.3"), Some(48.3));
        assert_eq!(first_number("-1.5e3"), Some(-1500.0));
        assert_eq!(first_number("temp=48.3'C\n"), Some(48.3));
        assert_eq!(first_number("  23125\n"), Some(23125.0));
        assert_eq!(first_number("t=-1250"), Some(-1250.0));
        assert_eq!(first_number("+7"), Some(7.0));
        assert_eq!(first_number(".5V"), Some(0.5));
        assert_eq!(first_number("5."), Some(5.0));
        assert_eq!(first_number("5.e3"), Some(5000.0));
        assert_eq!(first_number("+.5"), Some(0.5));
        assert_eq!(first_number("1.2.3"), Some(1.2));
        assert_eq!(first_number("2E-2x"), Some(0.02));
        // An "e" not followed by digits is not an exponent.
        assert_eq!(first_number("3em"), Some(3.0));
        assert_eq!(first_number("x - . 9"), Some(9.0));
        assert_eq!(first_number("µ 42 °C"), Some(42.0));
    }

    #[test]
    fn first_number_rejects_non_numbers() {
        assert_eq!(first_number(""), None);
        assert_eq!(first_number("abc"), None);
        assert_eq!(first_number("NaN inf infinity"), None);
        assert_eq!(first_number("-.e"), None);
        assert_eq!(first_number("1e999"), None);
    }
}
