//! The buffer as `telemetryd buffer` shows it, and whether this user can write it (`check`).

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;

use crate::outbox::{self, BufferReport};

/// The buffer at `path`, for `telemetryd buffer`.
pub fn buffer(path: &Path) -> anyhow::Result<BufferView> {
    Ok(BufferView {
        path: path.display().to_string(),
        report: outbox::inspect(path)?,
        now: SystemTime::now(),
    })
}

pub struct BufferView {
    path: String,
    report: BufferReport,
    now: SystemTime,
}

impl fmt::Display for BufferView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        writeln!(f, "buffer:        {}", self.path)?;
        writeln!(f, "waiting:       {} readings", r.depth)?;
        match &r.oldest {
            Some((seq, record)) => {
                let taken = UNIX_EPOCH + Duration::from_millis(record.taken_ms);
                let age = self.now.duration_since(taken).unwrap_or_default();
                let age = humantime::format_duration(Duration::from_secs(age.as_secs()));
                writeln!(
                    f,
                    "oldest:        {} ({age} ago), seq {seq}, topic {}",
                    // A stored time is outside input: humantime panics past year 9999.
                    if record.taken_ms <= crate::mqtt::properties::LAST_TS_MS {
                        humantime::format_rfc3339_seconds(taken).to_string()
                    } else {
                        format!("an impossible time ({} ms)", record.taken_ms)
                    },
                    record.topic
                )?;
            }
            None => writeln!(f, "oldest:        -")?,
        }
        writeln!(
            f,
            "size on disk:  {:.1} MiB",
            r.bytes_on_disk as f64 / (1024.0 * 1024.0)
        )?;
        if r.quarantined > 0 {
            writeln!(
                f,
                "quarantined:   {} undecodable readings (kept aside, never sent)",
                r.quarantined
            )?;
        }
        Ok(())
    }
}

/// Whether this user can write the buffer at `path`: an existing one's files open for writing
/// and a file can be made beside them; a missing one's nearest existing parent takes a new
/// entry (the daemon creates the rest). Leaves nothing behind and changes nothing.
///
/// The daemon cannot tell these apart from a full disk at start: it keeps readings in memory
/// (up to 10,000) and loses them at a restart. `check` says so before it happens.
pub fn buffer_writable(path: &Path) -> anyhow::Result<BufferAccess> {
    let cannot = |what: &Path, e: &std::io::Error| {
        let fix = if path.exists() {
            format!(
                "the buffer must belong to the service's user (`sudo chown -R telemetryd: {}`)",
                path.display()
            )
        } else {
            format!(
                "make the buffer's directory for the service's user (`sudo install -d -o \
                 telemetryd -g telemetryd {}`)",
                path.display()
            )
        };
        let why = match e.raw_os_error() {
            Some(libc::EROFS) => "a read-only file system".to_owned(),
            Some(libc::EACCES) => format!(
                "permission denied for this user (uid {}): {fix}",
                // SAFETY: geteuid(2) cannot fail and touches no memory.
                unsafe { libc::geteuid() },
            ),
            Some(libc::EPERM) => "not permitted (an immutable file or directory?)".to_owned(),
            _ => e.to_string(),
        };
        anyhow!("cannot write {}: {why}", what.display())
    };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => Err(anyhow!("{} is not a directory", path.display())),
        Ok(_) => {
            let files = files_within(path, 2).map_err(|(dir, e)| cannot(&dir, &e))?;
            for file in files {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&file)
                    .map_err(|e| cannot(&file, &e))?;
            }
            try_create_in(path).map_err(|e| cannot(path, &e))?;
            Ok(BufferAccess::Exists)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path
                .ancestors()
                .skip(1)
                .find(|p| p.as_os_str().is_empty() || p.exists())
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        p
                    }
                })
                .unwrap_or(Path::new("/"));
            if !parent.is_dir() {
                return Err(anyhow!("{} is not a directory", parent.display()));
            }
            try_create_in(parent).map_err(|e| cannot(parent, &e))?;
            Ok(BufferAccess::WillBeCreated {
                under: parent.to_owned(),
            })
        }
        Err(e) => Err(cannot(path, &e)),
    }
}

/// What [`buffer_writable`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum BufferAccess {
    Exists,
    /// Missing; the daemon creates it in `under`.
    WillBeCreated {
        under: std::path::PathBuf,
    },
}

/// Creates and removes a file in `dir`.
fn try_create_in(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".telemetryd-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// The regular files in `dir`, `depth` levels down (sled keeps blobs in a subdirectory), at
/// most 10,000 of them.
fn files_within(
    dir: &Path,
    depth: usize,
) -> Result<Vec<std::path::PathBuf>, (std::path::PathBuf, std::io::Error)> {
    let mut files = Vec::new();
    let mut dirs = vec![(dir.to_owned(), 0)];
    while let Some((d, level)) = dirs.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| (d.clone(), e))?;
        for entry in entries.flatten().take(10_000) {
            match entry.file_type() {
                Ok(t) if t.is_dir() && level + 1 < depth => dirs.push((entry.path(), level + 1)),
                Ok(t) if t.is_file() && files.len() < 10_000 => files.push(entry.path()),
                _ => {}
            }
        }
    }
    Ok(files)
}
