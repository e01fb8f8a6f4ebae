//! Any text as an IIO channel's files: `in_X_input`, or `in_X_raw` with `_offset` and `_scale`,
//! parsed and combined as `iio::read_channel` does, then converted by the channel's type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telemetryd::fuzzing::{iio_channel_type, iio_to_unit, sysfs_attr};

fuzz_target!(|data: &str| {
    // NUL-separated (no sysfs text holds one): channel name, then the files' contents, an empty
    // field standing for a missing file: input, raw, offset, scale.
    let mut fields = data.split('\0');
    let channel = fields.next().unwrap_or_default();
    let [input, raw, offset, scale] =
        [(); 4].map(|()| fields.next().filter(|text| !text.is_empty()));
    let kind = iio_channel_type(channel);
    assert!(
        channel.starts_with(kind),
        "{kind:?} is not a prefix of {channel:?}"
    );
    // As read_channel: a processed value wins; a file that exists but does not parse is an error.
    let parsed = |text: Option<&str>| text.map(sysfs_attr).transpose();
    let value = match parsed(input) {
        Err(_) => return,
        Ok(Some(v)) => v,
        Ok(None) => {
            let (Ok(Some(raw)), Ok(offset), Ok(scale)) =
                (parsed(raw), parsed(offset), parsed(scale))
            else {
                return;
            };
            // Finite inputs can still overflow here (1e308 * 10): calibrate() refuses the result.
            (raw + offset.unwrap_or(0.0)) * scale.unwrap_or(1.0)
        }
    };
    let published = iio_to_unit(kind, value);
    // Only pressure multiplies (kPa to hPa); the others divide and stay finite.
    if value.is_finite() && kind != "pressure" {
        assert!(published.is_finite());
    }
});
