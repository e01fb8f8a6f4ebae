//! Reading sysfs attributes: bounded reads, one number each, devices found by their `name`.

use std::io;
use std::path::{Path, PathBuf};

use super::{Cause, ReadError, excerpt};

/// Parses a sysfs attribute, which holds exactly one number (plus a newline).
pub(crate) fn parse_attr(path: &Path, text: &str) -> Result<f64, ReadError> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(ReadError::new(
            Cause::NotANumber,
            format!(
                "{}: expected a number, got {:?}",
                path.display(),
                excerpt(text)
            ),
        )),
    }
}

/// A sysfs attribute is at most a page; anything longer is not one (a wrong `path`).
pub(crate) const ATTR_MAX: u64 = 4096;

/// Reads at most `limit` bytes of `path` as text; longer is an error, never a partial read,
/// so a mistaken path (`/dev/zero`, a log) costs `limit` bytes of memory, not all of it.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            if limit.is_multiple_of(1024) {
                format!("more than {} KiB", limit / 1024)
            } else {
                format!("more than {limit} bytes")
            },
        ));
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Maps an error of [`read_bounded`]; an oversized file gets its own cause.
pub(crate) fn bounded_error(path: &Path, err: &io::Error) -> ReadError {
    if err.kind() == io::ErrorKind::FileTooLarge {
        ReadError::new(
            Cause::TooMuchOutput,
            format!("{}: {err}: not a sensor value", path.display()),
        )
    } else {
        ReadError::io(path, err)
    }
}

/// Reads and parses a sysfs attribute that must exist.
pub(crate) fn read_attr(path: &Path) -> Result<f64, ReadError> {
    let text = read_bounded(path, ATTR_MAX).map_err(|e| bounded_error(path, &e))?;
    parse_attr(path, &text)
}

/// Finds the entry `<parent>/<prefix>*` whose first readable `keys` file (trimmed) equals
/// `wanted`. Kernel numbering (hwmonN, iio:deviceN ...) changes between boots and hot-plugs,
/// so the scan runs on every read instead of caching: it is a handful of tiny files.
pub(crate) fn find_by_attr(
    what: &str,
    parent: &Path,
    prefix: &str,
    keys: &[&str],
    wanted: &str,
) -> Result<PathBuf, ReadError> {
    let not_found = |detail: String| {
        ReadError::new(
            Cause::NotFound,
            format!(
                "no {what} with {} {wanted:?} under {}{detail}",
                keys[0],
                parent.display()
            ),
        )
    };
    let entries = match std::fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(not_found(" (the directory does not exist)".into()));
        }
        Err(e) => return Err(ReadError::io(parent, &e)),
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    // Natural order (hwmon2 before hwmon10) so duplicates resolve the same way every time.
    dirs.sort_by_key(|p| (p.as_os_str().len(), p.clone()));
    let mut seen = Vec::new();
    for dir in dirs {
        for key in keys {
            if let Ok(value) = read_bounded(&dir.join(key), ATTR_MAX) {
                let value = value.trim();
                if value == wanted {
                    return Ok(dir);
                }
                seen.push(format!("{value:?}"));
            }
        }
    }
    // Listing what exists makes a typo in the config obvious.
    if seen.is_empty() {
        Err(not_found(String::new()))
    } else {
        Err(not_found(format!(" (found: {})", seen.join(", "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::tests::put;

    #[test]
    fn parse_attr_is_strict() {
        let p = Path::new("/x");
        assert_eq!(parse_attr(p, "23125\n"), Ok(23125.0));
        assert_eq!(parse_attr(p, "101.343285156\n"), Ok(101.343285156));
        let err = parse_attr(p, "abc\n").unwrap_err();
        assert_eq!(err.to_string(), "/x: expected a number, got \"abc\"");
        assert!(!err.is_transient());
        assert!(parse_attr(p, "nan").is_err());
    }

    #[test]
    fn attribute_reads_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("in_temp_input");
        std::fs::write(&path, format!("{:>4095}\n", 21500)).unwrap();
        assert_eq!(read_attr(&path), Ok(21500.0));
        std::fs::write(&path, format!("{:>4096}\n", 21500)).unwrap();
        let err = read_attr(&path).unwrap_err();
        assert_eq!(err.cause(), Cause::TooMuchOutput);
        assert_eq!(
            err.to_string(),
            format!("{}: more than 4 KiB: not a sensor value", path.display())
        );
        // A character device that never ends (a mistaken `path`) ends at the bound.
        let err = read_attr(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(err.cause(), Cause::TooMuchOutput);
    }

    #[test]
    fn find_by_attr_matches_and_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        put(root, "hwmon2/name", "cpu_thermal\n");
        put(root, "hwmon10/name", "rpi_volt\n");
        put(root, "other/name", "rpi_volt\n");
        let found = find_by_attr("hwmon chip", root, "hwmon", &["name"], "rpi_volt").unwrap();
        assert_eq!(found, root.join("hwmon10"));
        let err = find_by_attr("hwmon chip", root, "hwmon", &["name"], "nope").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no hwmon chip with name \"nope\" under {} (found: \"cpu_thermal\", \"rpi_volt\")",
                root.display()
            )
        );
        let missing = root.join("absent");
        let err = find_by_attr("hwmon chip", &missing, "hwmon", &["name"], "x").unwrap_err();
        assert!(
            err.to_string().ends_with("(the directory does not exist)"),
            "{err}"
        );
    }
}
