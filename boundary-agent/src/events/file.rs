//! An event file: whole lines only, rotated at a size, capped in number.
//!
//! A line is appended whole or not at all: the file's length is taken before the write, and
//! a write that fails or falls short (a full disk, a quota) is undone by truncating back to
//! it, so the next line never starts in the middle of a broken one. (Should even the
//! truncation fail, the next line starts on a line of its own.)
//!
//! When a line would take the file past `max_file_size`, the file is rotated first:
//! `events.jsonl` becomes `events.jsonl.1`, `.1` becomes `.2`, and so on up to
//! `max_files`; the oldest one, `events.jsonl.<max_files>`, is removed. The new file starts
//! with a `boundary.log.rotated` event that names the file it continues and, when one was
//! removed, how many events and decisions went with it (`boundary.log.removed.events`,
//! `boundary.log.removed.decisions`) and with every file removed before it
//! (`boundary.log.removed.total_events`, `.total_decisions`): the cap is never a silent loss,
//! and the newest file alone says how much the cap has taken. On disk a sink takes at most
//! `max_file_size × (max_files + 1)` (plus one line).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// How large an event file grows and how many rotated files are kept (`log_max_file_size`,
/// `log_max_files`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_file_size: u64,
    pub max_files: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_file_size: crate::policy::DEFAULT_LOG_MAX_FILE_SIZE,
            max_files: crate::policy::DEFAULT_LOG_MAX_FILES,
        }
    }
}

impl Rotation {
    /// As the policy's `log_max_file_size` and `log_max_files` say.
    pub fn of(policy: &crate::policy::Policy) -> Rotation {
        Rotation {
            max_file_size: policy.log_max_file_size,
            max_files: policy.log_max_files,
        }
    }
}

/// One event file being appended to.
pub struct EventFile {
    path: PathBuf,
    file: File,
    rotation: Rotation,
    session: Option<String>,
    /// A failed write could not be undone: the file may end in half a line.
    broken_tail: bool,
    /// Events and decisions removed by the cap so far, carried from note to note.
    removed_total: (u64, u64),
}

/// Creates (mode 0640: events name users, command lines and destinations) or opens for append.
fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        // Read too: the totals of the note a file starts with are read back when it is opened.
        .read(true)
        .mode(0o640)
        .open(path)
}

impl EventFile {
    pub fn open(path: &Path, rotation: Rotation, session: Option<String>) -> io::Result<Self> {
        let file = open(path)?;
        Ok(EventFile {
            path: path.to_path_buf(),
            removed_total: removed_so_far(&file),
            file,
            rotation,
            session,
            broken_tail: false,
        })
    }

    /// Appends one line (ending in `\n`) whole, rotating first when it would not fit.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        // The length as the file says, not as counted: someone may have truncated it.
        let meta = self.file.metadata()?;
        let len = meta.len();
        // Only regular files rotate (`--events /dev/stderr` or a FIFO never does).
        if meta.is_file() && len > 0 && len + line.len() as u64 > self.rotation.max_file_size {
            self.rotate()?;
            return self.append(line, self.file.metadata()?.len());
        }
        self.append(line, len)
    }

    /// Appends `line` to a file `start` bytes long.
    fn append(&mut self, line: &[u8], start: u64) -> io::Result<()> {
        let prefixed;
        let buf: &[u8] = if self.broken_tail {
            prefixed = [&b"\n"[..], line].concat();
            &prefixed
        } else {
            line
        };
        let mut done = 0;
        while done < buf.len() {
            match self.file.write(&buf[done..]) {
                Ok(0) => return Err(self.undo(start, io::ErrorKind::WriteZero.into())),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.undo(start, e)),
            }
        }
        self.broken_tail = false;
        Ok(())
    }

    /// Takes back a partly written line; returns the write's error.
    fn undo(&mut self, start: u64, error: io::Error) -> io::Error {
        if self.file.set_len(start).is_err() {
            self.broken_tail = true;
        }
        error
    }

    /// Shifts `path` to `path.1`, ... and starts a new file (see the module documentation).
    fn rotate(&mut self) -> io::Result<()> {
        let n = self.rotation.max_files;
        let oldest = if n == 0 {
            self.path.clone()
        } else {
            numbered(&self.path, n)
        };
        let removed = match count_events(&oldest) {
            Ok(counts) => {
                fs::remove_file(&oldest)?;
                self.removed_total.0 += counts.events;
                self.removed_total.1 += counts.decisions;
                Some(counts)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        for i in (1..n).rev() {
            match fs::rename(numbered(&self.path, i), numbered(&self.path, i + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if n > 0 {
            fs::rename(&self.path, numbered(&self.path, 1))?;
        }
        self.file = open(&self.path)?;
        self.broken_tail = false;
        let note = self.rotated_note(n, &oldest, removed);
        // Best effort: the note says what happened, the next event must not wait for it.
        let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = self.append(&note, len);
        Ok(())
    }

    fn rotated_note(&self, n: u32, oldest: &Path, removed: Option<Removed>) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("timestamp".into(), super::now_rfc3339().into());
        m.insert("event.name".into(), "boundary.log.rotated".into());
        m.insert("service.name".into(), "boundary".into());
        if let Some(s) = &self.session {
            m.insert("session.id".into(), s.clone().into());
        }
        m.insert("boundary.log.file".into(), path_value(&self.path));
        if n > 0 {
            m.insert(
                "boundary.log.previous".into(),
                path_value(&numbered(&self.path, 1)),
            );
        }
        m.insert(
            "boundary.log.max_file_size".into(),
            self.rotation.max_file_size.into(),
        );
        m.insert("boundary.log.max_files".into(), n.into());
        if let Some(r) = removed {
            m.insert("boundary.log.removed.file".into(), path_value(oldest));
            m.insert("boundary.log.removed.events".into(), r.events.into());
            m.insert("boundary.log.removed.decisions".into(), r.decisions.into());
            m.insert("boundary.log.removed.bytes".into(), r.bytes.into());
        }
        // Everything this file's rotations ever removed, also across restarts (read back from
        // the newest note when the file is opened).
        m.insert(
            "boundary.log.removed.total_events".into(),
            self.removed_total.0.into(),
        );
        m.insert(
            "boundary.log.removed.total_decisions".into(),
            self.removed_total.1.into(),
        );
        let mut line = serde_json::to_vec(&m).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

fn path_value(p: &Path) -> Value {
    p.display().to_string().into()
}

/// `events.jsonl` → `events.jsonl.3`.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// What a removed event file held: its events and decisions (the sum of
/// `boundary.event.count` over its decision lines, rotation notes aside) and its bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Removed {
    events: u64,
    decisions: u64,
    bytes: u64,
}

/// Reads an event file about to be removed without parsing JSON: these are lines we wrote.
fn count_events(path: &Path) -> io::Result<Removed> {
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut r = Removed::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(r);
        }
        r.bytes += n as u64;
        if contains(&line, ROTATED) {
            continue;
        }
        r.events += 1;
        if contains(&line, b"\"event.name\":\"boundary.decision\"") {
            r.decisions += number_after(&line, b"\"boundary.event.count\":")
                .unwrap_or(1)
                .max(1);
        }
    }
}

const ROTATED: &[u8] = b"\"event.name\":\"boundary.log.rotated\"";

/// The totals of the rotation note an existing event file starts with (zero for a new file).
fn removed_so_far(file: &File) -> (u64, u64) {
    let mut first = Vec::new();
    let mut reader = BufReader::new(io::Read::take(file, 4096));
    if reader.read_until(b'\n', &mut first).is_err() || !contains(&first, ROTATED) {
        return (0, 0);
    }
    let total = |key: &[u8]| number_after(&first, key).unwrap_or(0);
    (
        total(b"\"boundary.log.removed.total_events\":"),
        total(b"\"boundary.log.removed.total_decisions\":"),
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn number_after(line: &[u8], key: &[u8]) -> Option<u64> {
    let at = line.windows(key.len()).position(|w| w == key)?;
    let digits: Vec<u8> = line[at + key.len()..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn line(i: usize) -> Vec<u8> {
        format!(
            "{{\"event.name\":\"boundary.decision\",\"boundary.event.count\":2,\"i\":\"{i:04}\"}}\n"
        )
        .into_bytes()
    }

    #[test]
    fn rotates_at_the_size_keeps_max_files_and_counts_what_it_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let rotation = Rotation {
            max_file_size: 1000,
            max_files: 2,
        };
        let mut f = EventFile::open(&path, rotation, Some("s1".into())).unwrap();
        let one = line(0).len();
        for i in 0..200 {
            f.write_line(&line(i)).unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]);
        let mut kept = 0u64;
        let mut removed = 0u64;
        for name in &names {
            let p = dir.path().join(name);
            let meta = fs::metadata(&p).unwrap();
            assert!(meta.len() <= 1000, "{name} is {} bytes", meta.len());
            assert_eq!(meta.permissions().mode() & 0o777, 0o640, "{name}");
            for l in fs::read_to_string(&p).unwrap().lines() {
                let v: Value = serde_json::from_str(l).unwrap();
                if v["event.name"] == "boundary.decision" {
                    kept += 2;
                } else {
                    assert_eq!(v["event.name"], "boundary.log.rotated");
                    assert_eq!(v["session.id"], "s1");
                    if name == "events.jsonl" {
                        removed = v["boundary.log.removed.total_decisions"].as_u64().unwrap();
                    }
                }
            }
        }
        assert!(removed > 0);
        assert_eq!(
            kept + removed,
            400,
            "every decision is kept or counted ({one} bytes a line)"
        );
    }

    #[test]
    fn the_removed_totals_carry_over_when_the_file_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let rotation = Rotation {
            max_file_size: 1000,
            max_files: 1,
        };
        let total = |path: &Path| -> u64 {
            let text = fs::read_to_string(path).unwrap();
            let note: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
            note["boundary.log.removed.total_decisions"]
                .as_u64()
                .unwrap()
        };
        let mut f = EventFile::open(&path, rotation, None).unwrap();
        for i in 0..100 {
            f.write_line(&line(i)).unwrap();
        }
        drop(f);
        let before = total(&path);
        assert!(before > 0);
        let mut f = EventFile::open(&path, rotation, None).unwrap();
        for i in 0..100 {
            f.write_line(&line(i)).unwrap();
        }
        let mut kept = 0;
        for p in [path.clone(), numbered(&path, 1)] {
            kept += fs::read_to_string(&p)
                .unwrap()
                .matches("boundary.decision")
                .count() as u64
                * 2;
        }
        assert_eq!(total(&path) + kept, 400);
    }

    #[test]
    fn max_files_zero_starts_over_and_counts_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let mut f = EventFile::open(
            &path,
            Rotation {
                max_file_size: 1000,
                max_files: 0,
            },
            None,
        )
        .unwrap();
        for i in 0..40 {
            f.write_line(&line(i)).unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let text = fs::read_to_string(&path).unwrap();
        let note: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(note["event.name"], "boundary.log.rotated", "{text}");
        assert!(
            note["boundary.log.removed.events"].as_u64().unwrap() >= 1,
            "{text}"
        );
        assert!(text.contains("\"i\":\"0039\""), "{text}");
    }

    #[test]
    fn a_line_larger_than_the_limit_is_still_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let mut f = EventFile::open(
            &path,
            Rotation {
                max_file_size: 10,
                max_files: 1,
            },
            None,
        )
        .unwrap();
        f.write_line(&line(1)).unwrap();
        f.write_line(&line(2)).unwrap();
        assert!(fs::read_to_string(&path)
            .unwrap()
            .contains("\"i\":\"0002\""));
        assert!(fs::read_to_string(numbered(&path, 1))
            .unwrap()
            .contains("\"i\":\"0001\""));
    }
}
