//! Searches a node's data directory for plaintext that must never reach the disk.
//!
//! The workload plants markers (passwords, secrets) in what it writes; after a run the
//! checks look for them in every byte a node left behind. Files are read in chunks so a
//! multi-gigabyte SST costs one chunk of memory, and consecutive chunks overlap by the
//! longest marker less one byte, so a marker split across a chunk boundary is still seen.

use std::collections::BTreeSet;
use std::io::{self, ErrorKind, Read};
use std::path::{Path, PathBuf};

/// How much of a file is read at a time.
pub const CHUNK: usize = 64 * 1024;

/// A marker seen somewhere it must not be.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Finding {
    /// Where: a path relative to the scanned root, or
    /// `topic/partition@offset key|payload|header NAME` for a Kafka message.
    pub place: String,
    /// The marker, lossily as UTF-8.
    pub marker: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} in {}", self.marker, self.place)
    }
}

/// Every marker found in every regular file under `root`, in path order.
///
/// Symlinks are not followed: a node's directory holds none, and following one could
/// leave the directory being judged. Files and directories that vanish during the walk
/// are skipped, since RocksDB deletes files as it compacts and the scan may run beside a
/// live node. Empty markers are ignored.
pub fn scan_dir(root: &Path, markers: &[&[u8]]) -> io::Result<Vec<Finding>> {
    let files = list_files(root)?;
    scan_files(root, &files, markers)
}

/// Regular files under `root`, recursively, sorted.
fn list_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound && dir != root => continue,
            Err(e) => return Err(with_path(e, "list", &dir)),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(with_path(e, "list", &dir)),
            };
            // `DirEntry::file_type` does not follow symlinks.
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(with_path(e, "stat", &entry.path())),
            };
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Scans files listed earlier; one deleted since the listing is skipped.
fn scan_files(root: &Path, files: &[PathBuf], markers: &[&[u8]]) -> io::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    for path in files {
        let Some(found) = scan_file(path, markers)? else {
            continue;
        };
        let place = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        findings.extend(found.into_iter().map(|i| Finding {
            place: place.clone(),
            marker: String::from_utf8_lossy(markers[i]).into_owned(),
        }));
    }
    Ok(findings)
}

/// Indices of the markers found in the file at `path`, or `None` if it no longer exists.
fn scan_file(path: &Path, markers: &[&[u8]]) -> io::Result<Option<BTreeSet<usize>>> {
    match std::fs::File::open(path) {
        Ok(file) => scan_reader(file, CHUNK, markers)
            .map(Some)
            .map_err(|e| with_path(e, "read", path)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(with_path(e, "open", path)),
    }
}

/// Indices of the markers found in everything `reader` yields, read `chunk` bytes at a
/// time. The last (longest marker − 1) bytes of one read are kept in front of the next,
/// so a marker split between reads — however short they are — is still whole in the
/// buffer once its last byte arrives.
fn scan_reader(
    mut reader: impl Read,
    chunk: usize,
    markers: &[&[u8]],
) -> io::Result<BTreeSet<usize>> {
    let wanted: Vec<usize> = (0..markers.len())
        .filter(|&i| !markers[i].is_empty())
        .collect();
    let overlap = markers
        .iter()
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
        .saturating_sub(1);
    let mut found = BTreeSet::new();
    let mut buf: Vec<u8> = Vec::with_capacity(overlap + chunk);
    loop {
        let keep = buf.len().min(overlap);
        buf.drain(..buf.len() - keep);
        let start = buf.len();
        buf.resize(start + chunk, 0);
        let n = match reader.read(&mut buf[start..]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {
                buf.truncate(start);
                continue;
            }
            Err(e) => return Err(e),
        };
        buf.truncate(start + n);
        if n == 0 {
            return Ok(found);
        }
        for &i in &wanted {
            if !found.contains(&i) && contains(&buf, markers[i]) {
                found.insert(i);
            }
        }
        if found.len() == wanted.len() {
            return Ok(found);
        }
    }
}

/// Whether `needle` (non-empty) occurs in `haystack`.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn with_path(e: io::Error, verb: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{verb} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIDDLE: &[u8] = b"pw-middle-7f3a";
    const STRADDLE: &[u8] = b"pw-straddle-91c2";
    const ABSENT: &[u8] = b"pw-absent-0000";

    fn finding(place: &str, marker: &[u8]) -> Finding {
        Finding {
            place: place.to_string(),
            marker: String::from_utf8_lossy(marker).into_owned(),
        }
    }

    /// A file of `len` filler bytes with `marker` written at `at`.
    fn file_with(len: usize, at: usize, marker: &[u8]) -> Vec<u8> {
        let mut data = vec![b'.'; len];
        data[at..at + marker.len()].copy_from_slice(marker);
        data
    }

    #[test]
    fn finds_markers_in_nested_files_with_relative_paths() {
        let root = tempfile::tempdir().expect("make a temporary directory");
        let deep = root.path().join("region/db");
        std::fs::create_dir_all(&deep).expect("make nested directories");
        std::fs::write(deep.join("000012.sst"), file_with(1000, 400, MIDDLE))
            .expect("write a file");
        std::fs::write(root.path().join("LOG"), b"nothing to see").expect("write a file");

        let found = scan_dir(root.path(), &[MIDDLE, ABSENT]).expect("scan");

        assert_eq!(found, vec![finding("region/db/000012.sst", MIDDLE)]);
    }

    #[test]
    fn finds_a_marker_split_across_the_chunk_boundary() {
        let root = tempfile::tempdir().expect("make a temporary directory");
        // Half the marker is the end of the first chunk, half the start of the second:
        // neither read alone holds it.
        let at = CHUNK - STRADDLE.len() / 2;
        std::fs::write(
            root.path().join("MANIFEST-000005"),
            file_with(CHUNK * 2, at, STRADDLE),
        )
        .expect("write a file");

        let found = scan_dir(root.path(), &[ABSENT, STRADDLE]).expect("scan");

        assert_eq!(found, vec![finding("MANIFEST-000005", STRADDLE)]);
    }

    #[test]
    fn finds_a_marker_spread_over_many_short_reads() {
        // Reads of 3 bytes: the marker arrives over six of them.
        let data = file_with(100, 41, STRADDLE);
        let found = scan_reader(&data[..], 3, &[STRADDLE, ABSENT]).expect("scan");
        assert_eq!(found, BTreeSet::from([0]));
    }

    #[test]
    fn a_file_deleted_after_the_listing_is_skipped() {
        let root = tempfile::tempdir().expect("make a temporary directory");
        let kept = root.path().join("000007.log");
        let gone = root.path().join("000006.sst");
        std::fs::write(&kept, file_with(100, 10, MIDDLE)).expect("write a file");
        std::fs::write(&gone, file_with(100, 10, MIDDLE)).expect("write a file");
        let files = list_files(root.path()).expect("list");
        assert_eq!(files, vec![gone.clone(), kept.clone()]);

        // Compaction deletes the SST between the listing and the read.
        std::fs::remove_file(&gone).expect("remove a file");

        assert_eq!(scan_file(&gone, &[MIDDLE]).expect("scan"), None);
        let found = scan_files(root.path(), &files, &[MIDDLE]).expect("scan");
        assert_eq!(found, vec![finding("000007.log", MIDDLE)]);
    }

    #[test]
    fn symlinks_are_not_followed() {
        let outside = tempfile::tempdir().expect("make a temporary directory");
        std::fs::write(outside.path().join("secret"), MIDDLE).expect("write a file");
        let root = tempfile::tempdir().expect("make a temporary directory");
        std::os::unix::fs::symlink(outside.path(), root.path().join("link"))
            .expect("make a symlink");

        assert_eq!(scan_dir(root.path(), &[MIDDLE]).expect("scan"), vec![]);
    }
}
