//! Calibration: `scale` and `offset` applied to each raw read, then the plausibility bounds.

use crate::config::SensorConfig;
use crate::sensor::{Cause, ReadError};

/// Applies `scale` and `offset`, then the plausibility bounds.
pub(crate) fn calibrate(s: &SensorConfig, raw: f64) -> Result<f64, ReadError> {
    let value = raw * s.scale + s.offset;
    if !value.is_finite() {
        return Err(ReadError::new(
            Cause::NotFinite,
            format!("value {raw:e} gives {value} after scale and offset: discarded"),
        ));
    }
    if s.min.is_some_and(|min| value < min) || s.max.is_some_and(|max| value > max) {
        let bound = |b: Option<f64>| b.map_or("-".to_owned(), |b| b.to_string());
        return Err(ReadError::new(
            Cause::OutOfRange,
            format!(
                "value {value} is outside the plausible range [{}, {}]: discarded",
                bound(s.min),
                bound(s.max)
            ),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::sensor;

    #[test]
    fn calibration_applies_scale_then_offset() {
        let s = sensor("scale = 0.001\noffset = -0.5");
        assert!((calibrate(&s, 23125.0).unwrap() - 22.625).abs() < 1e-9);
    }

    #[test]
    fn values_outside_bounds_are_errors() {
        let s = sensor("min = -40\nmax = 60");
        assert_eq!(calibrate(&s, 59.9), Ok(59.9));
        let err = calibrate(&s, 85.0).unwrap_err();
        assert!(
            err.to_string()
                .contains("outside the plausible range [-40, 60]"),
            "{err}"
        );
        assert_eq!(err.cause(), Cause::OutOfRange);
        assert!(calibrate(&s, -41.0).is_err());
        assert!(calibrate(&s, f64::NAN).is_err());
    }
}
