//! The hostile phase's parts: which are on (`SOAK_HOSTILE`), and the sensors each one adds.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use telemetryd_testkit::{Rng, toml_str};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Floods,
    Garbage,
    Absurd,
    Output,
    Hung,
    Ha,
    Bound,
    Watchdog,
}

pub const ALL: [Part; 8] = [
    Part::Floods,
    Part::Garbage,
    Part::Absurd,
    Part::Output,
    Part::Hung,
    Part::Ha,
    Part::Bound,
    Part::Watchdog,
];

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Floods => "floods",
            Part::Garbage => "garbage",
            Part::Absurd => "absurd",
            Part::Output => "output",
            Part::Hung => "hung",
            Part::Ha => "ha",
            Part::Bound => "bound",
            Part::Watchdog => "watchdog",
        }
    }
}

/// `SOAK_HOSTILE`: unset or `all` for every part, `none` for none, else a comma list of
/// part names. An unknown name is an error that lists the known ones (a typo must not
/// silently run nothing).
pub fn selected() -> Vec<Part> {
    let Ok(v) = std::env::var("SOAK_HOSTILE") else {
        return ALL.to_vec();
    };
    match v.trim() {
        "" | "all" => return ALL.to_vec(),
        "none" => return Vec::new(),
        _ => {}
    }
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            ALL.iter()
                .copied()
                .find(|p| p.name() == s)
                .unwrap_or_else(|| {
                    let known: Vec<&str> = ALL.iter().map(|p| p.name()).collect();
                    panic!(
                        "SOAK_HOSTILE: unknown part {s:?} (known: {})",
                        known.join(",")
                    )
                })
        })
        .collect()
}

/// How many QoS 0 sensors the flood adds.
pub const FLOOD_SENSORS: usize = 1000;
/// Files the garbage writer rewrites every [`GARBAGE_EVERY`].
pub const GARBAGE_SENSORS: usize = 16;
pub const GARBAGE_EVERY: Duration = Duration::from_millis(300);
/// QoS 1 sensors that only exist while the broker is away in the `bound` part, to build a
/// backlog quickly (about 3,000 readings a second).
pub const BALLAST_SENSORS: usize = 150;
/// FIFOs nobody writes: each open blocks forever, holding one of the daemon's 16 blocking
/// threads. A read is abandoned after 30 s, and old code then starts another on a new thread:
/// 8 take half the pool at once and all of it at 30 s, when commits starve. Code that starts no
/// new read while the abandoned one holds its thread keeps 8 for everything else.
pub const HUNG_SENSORS: usize = 8;
/// With `hung`, the phase lasts at least this long from the start: past the first abandon.
pub const HUNG_RUN: std::time::Duration = std::time::Duration::from_secs(45);
/// The contents of the `absurd` sensors' files (1e309 parses to inf, 4.9e-324 is the least
/// subnormal, 1.8e300 overflowed the old payload rounding).
pub const ABSURD: [&str; 11] = [
    "1e308",
    "-1e308",
    "1.8e300",
    "-1.8e300",
    "1e309",
    "-1e309",
    "nan",
    "inf",
    "-0",
    "4.9e-324",
    "2.2250738585072014e-308",
];

fn file_sensor(name: &str, path: &Path, interval_ms: u64, qos: u8, extra: &str) -> String {
    format!(
        "[[sensor]]\nname = {n}\nkind = \"file\"\npath = {p}\ninterval = \"{interval_ms}ms\"\n\
         topic = \"hostile/{name}\"\nqos = {qos}\n{extra}\n",
        n = toml_str(name),
        p = toml_str(&path.display().to_string()),
    )
}

/// The `[[sensor]]` tables of `part` (none for the parts that add no sensor), creating the
/// files they read in `dir`.
pub fn sensors(part: Part, dir: &Path, rng: &mut Rng) -> String {
    let mut out = String::new();
    match part {
        Part::Floods => {
            let f = dir.join("flood.txt");
            fs::write(&f, "21.5\n").unwrap();
            for i in 0..FLOOD_SENSORS {
                let ms = rng.range(200, 500);
                out.push_str(&file_sensor(&format!("flood{i}"), &f, ms, 0, ""));
            }
        }
        Part::Garbage => {
            for i in 0..GARBAGE_SENSORS {
                let f = garbage_path(dir, i);
                fs::write(&f, "").unwrap();
                let fmt = if i % 2 == 0 {
                    "format = \"json\"\n"
                } else {
                    ""
                };
                out.push_str(&file_sensor(&format!("garbage{i}"), &f, 300, 1, fmt));
            }
        }
        Part::Absurd => {
            for (i, v) in ABSURD.iter().enumerate() {
                let f = dir.join(format!("absurd{i}.txt"));
                fs::write(&f, format!("{v}\n")).unwrap();
                let json = "format = \"json\"\n";
                out.push_str(&file_sensor(&format!("absurd{i}"), &f, 200, 1, json));
            }
            // Finite readings whose mean (sum first) or scaled value overflows.
            let f = dir.join("absurd-max.txt");
            fs::write(&f, "1.7e308\n").unwrap();
            let avg = "format = \"json\"\naverage = 3\n";
            out.push_str(&file_sensor("absurd_average", &f, 200, 1, avg));
            let scaled = "format = \"json\"\nscale = 1e10\n";
            out.push_str(&file_sensor("absurd_scaled", &f, 200, 1, scaled));
        }
        Part::Output => {
            // `yes` never ends and prints as fast as it can be read.
            for (name, cmd) in [
                ("yes", "[\"yes\"]"),
                ("one_line", "[\"sh\", \"-c\", \"tr '\\\\0' 7 < /dev/zero\"]"),
            ] {
                out.push_str(&format!(
                    "[[sensor]]\nname = \"{name}\"\nkind = \"command\"\ncommand = {cmd}\n\
                     timeout = \"2s\"\ninterval = \"1s\"\ntopic = \"hostile/{name}\"\nqos = 0\n\n"
                ));
            }
        }
        Part::Hung => {
            for i in 0..HUNG_SENSORS {
                let f = dir.join(format!("fifo{i}"));
                let c = std::ffi::CString::new(f.display().to_string()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
                out.push_str(&file_sensor(&format!("hung{i}"), &f, 200, 1, ""));
            }
        }
        Part::Ha => {
            out.push_str("[homeassistant]\ndevice_name = \"Hostile Pi\"\n\n");
        }
        Part::Bound | Part::Watchdog => {}
    }
    out
}

/// The ballast of the `bound` part (see [`BALLAST_SENSORS`]).
pub fn ballast(dir: &Path) -> String {
    let f = dir.join("ballast.txt");
    fs::write(&f, "1\n").unwrap();
    (0..BALLAST_SENSORS)
        .map(|i| file_sensor(&format!("ballast{i}"), &f, 50, 1, ""))
        .collect()
}

fn garbage_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("garbage{i}.txt"))
}

/// Rewrites the garbage files every [`GARBAGE_EVERY`] with seeded junk until `stop`: random
/// bytes, words, nothing, or a number cut off mid-write (the file is truncated first and
/// written in two steps, so a read can land in between).
pub fn spawn_garbage_writer(
    dir: PathBuf,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let mut writes = 0;
        while !stop.load(Ordering::Relaxed) {
            for i in 0..GARBAGE_SENSORS {
                let content: Vec<u8> = match rng.range(0, 4) {
                    0 => (0..rng.range(1, 300))
                        .map(|_| rng.next_u64() as u8)
                        .collect(),
                    1 => rng
                        .pick(&["abc", "--", "e5", ".", "+-", "NaN?", "0x1F", "∞ °C"])
                        .as_bytes()
                        .to_vec(),
                    2 => Vec::new(),
                    3 => rng
                        .pick(&["-", "12.", "1e", "3.5e+", "-."])
                        .as_bytes()
                        .to_vec(),
                    _ => format!("{}\n", rng.range(0, 1000)).into_bytes(),
                };
                let Ok(mut f) = fs::File::create(garbage_path(&dir, i)) else {
                    return writes; // the temp dir is gone
                };
                let half = content.len() / 2;
                let _ = f.write_all(&content[..half]);
                let _ = f.flush();
                let _ = f.write_all(&content[half..]);
                writes += 1;
            }
            std::thread::sleep(GARBAGE_EVERY);
        }
        writes
    })
}
