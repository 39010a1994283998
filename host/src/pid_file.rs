//! The PID file: written once the process serves (atomically, so a reader never sees
//! half a number), read by `fluxgate-host upgrade`, removed on exit only while it
//! still names this process (after an upgrade it names the successor).

use std::path::{Path, PathBuf};

/// Why a PID file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a process id")]
    Invalid { path: PathBuf },
}

/// Writes `pid` to `path` through a temporary file and a rename.
pub fn write(path: &Path, pid: u32) -> Result<(), PidFileError> {
    let io = |source| PidFileError::Io {
        path: path.to_owned(),
        source,
    };
    let temp = path.with_extension(format!("tmp.{pid}"));
    std::fs::write(&temp, format!("{pid}\n")).map_err(io)?;
    std::fs::rename(&temp, path).map_err(io)
}

/// The process id in `path`.
pub fn read(path: &Path) -> Result<u32, PidFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PidFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|pid| *pid > 1)
        .ok_or_else(|| PidFileError::Invalid {
            path: path.to_owned(),
        })
}

/// Removes `path` if it still names `pid`.
pub fn remove_if_ours(path: &Path, pid: u32) {
    if read(path).is_ok_and(|named| named == pid) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_read_and_removed_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fluxgate.pid");
        write(&path, 1234).unwrap();
        assert_eq!(read(&path).unwrap(), 1234);
        remove_if_ours(&path, 99);
        assert!(path.exists(), "another process's file stays");
        remove_if_ours(&path, 1234);
        assert!(!path.exists());
        std::fs::write(&path, "x\n").unwrap();
        assert!(matches!(read(&path), Err(PidFileError::Invalid { .. })));
    }
}
