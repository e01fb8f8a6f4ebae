//! Any file holding a number somewhere in its text (the first number is the value).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Cause, ReadError, blocking, excerpt, first_number};

/// Enough for any status file; stops a mistaken path (a log, `/dev/zero`) from eating memory.
/// A longer file is an error: its first number would be a guess.
const MAX_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    pub(crate) fn new(path: PathBuf) -> Self {
        FileSource { path }
    }

    /// One trip to the blocking pool for the open and the reads (`tokio::fs` would make one
    /// per call: three thread hand-offs per reading instead of one).
    pub async fn read(&mut self) -> Result<f64, ReadError> {
        let path = self.path.clone();
        blocking(move || read_number(&path)).await
    }
}

fn read_number(path: &Path) -> Result<f64, ReadError> {
    let io_err = |e: std::io::Error| ReadError::io(path, &e);
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(ReadError::new(
            Cause::TooMuchOutput,
            format!(
                "{}: more than {} KiB: not a sensor value",
                path.display(),
                MAX_BYTES / 1024
            ),
        ));
    }
    // Lossy: a stray non-UTF-8 byte should not hide a number elsewhere in the text.
    let text = String::from_utf8_lossy(&bytes);
    if text.trim().is_empty() {
        return Err(ReadError::new(
            Cause::NotANumber,
            format!("{}: file is empty", path.display()),
        ));
    }
    first_number(&text).ok_or_else(|| {
        ReadError::new(
            Cause::NotANumber,
            format!("{}: no number in {:?}", path.display(), excerpt(&text)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(content: &str) -> Result<f64, ReadError> {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("value");
        std::fs::write(&path, content).unwrap();
        FileSource::new(path).read().await
    }

    #[tokio::test]
    async fn parses_first_number() {
        assert_eq!(read("48.3").await, Ok(48.3));
        assert_eq!(read("-1.5e3\n").await, Ok(-1500.0));
        assert_eq!(read("temp=48.3'C\n").await, Ok(48.3));
        assert_eq!(read("  23125\n").await, Ok(23125.0));
        assert_eq!(read("level: 7 of 10\n").await, Ok(7.0));
    }

    #[tokio::test]
    async fn empty_or_numberless_file_is_an_error() {
        assert!(
            read("")
                .await
                .unwrap_err()
                .to_string()
                .ends_with(": file is empty")
        );
        assert!(
            read(" \n")
                .await
                .unwrap_err()
                .to_string()
                .ends_with(": file is empty")
        );
        let err = read("abc\n").await.unwrap_err();
        assert!(err.to_string().ends_with(": no number in \"abc\""), "{err}");
    }

    #[tokio::test]
    async fn an_oversized_file_is_an_error() {
        let ok = format!("7{}", " ".repeat(MAX_BYTES as usize - 1));
        assert_eq!(read(&ok).await, Ok(7.0));
        let err = read(&format!("{ok} ")).await.unwrap_err();
        assert_eq!(err.cause(), Cause::TooMuchOutput);
        assert!(
            err.to_string()
                .ends_with(": more than 64 KiB: not a sensor value"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn missing_file_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("absent");
        let err = FileSource::new(path.clone()).read().await.unwrap_err();
        assert_eq!(err.to_string(), format!("{}: no such file", path.display()));
    }
}
