//! The log file (`--log-file`): appended to, and reopened on SIGHUP so logrotate can
//! move it away and the next line goes to a new file at the same path.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The open log file, swapped whole on reopen (a line being written finishes in the
/// file it started in).
#[derive(Debug, Clone)]
pub struct LogFile(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: ArcSwap<File>,
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogFile {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self(Arc::new(Inner {
            path: path.to_owned(),
            file: ArcSwap::from_pointee(open(path)?),
        })))
    }

    /// Opens the path again (after a rotation); on failure the old file stays.
    pub fn reopen(&self) -> std::io::Result<()> {
        let file = open(&self.0.path)?;
        self.0.file.store(Arc::new(file));
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }
}

/// One log line's writer: the file in force when the line began.
pub struct LineWriter(Arc<File>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&*self.0).flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogFile {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter(self.0.file.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    #[test]
    fn reopen_follows_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.log");
        let log = LogFile::open(&path).unwrap();
        log.make_writer().write_all(b"one\n").unwrap();
        let rotated = dir.path().join("gateway.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.make_writer().write_all(b"two\n").unwrap();
        log.reopen().unwrap();
        log.make_writer().write_all(b"three\n").unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }
}
