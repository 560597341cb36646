//! Standard output and standard error that survive a reader going away.
//!
//! `ipsec ... | head -1`: once `head` has its line it exits, and the next write to the
//! pipe fails with EPIPE (Rust ignores SIGPIPE, so the process is not killed). `println!`
//! would panic there (exit 101) and leave files half done. Every command writes through
//! [`Stdout`] instead, which takes EPIPE as "nobody reads any more": from then on the
//! text is thrown away, quietly, and the command carries on with whatever has a result
//! other than the text (README, "The `ipsec` command"):
//!
//! * commands that write a file (`pcap encrypt`, `pcap decrypt`) still write all of it;
//! * commands whose exit status is a verdict (`pcap audit`, `policy lint`, `policy
//!   test`, `demo`, `pcap ... --strict`) finish, and exit with the status the whole run
//!   earns;
//! * `policy lookup` stops reading flows (its input may never end) and `bench` stops
//!   measuring; both exit 0 (1 for `lookup` when a line read so far was bad).
//!
//! No error message is printed for EPIPE. Other write errors (a full disk behind a
//! redirection) are failures (exit 1).

use std::io::{self, BufWriter, StdoutLock, Write};

/// Buffered standard output that swallows EPIPE (see the [module docs](self)).
pub(crate) struct Stdout {
    w: BufWriter<StdoutLock<'static>>,
    gone: bool,
}

impl Stdout {
    /// Locks standard output for the command.
    pub(crate) fn new() -> Stdout {
        Stdout {
            w: BufWriter::with_capacity(1 << 16, io::stdout().lock()),
            gone: false,
        }
    }

    /// True once the reader has gone away: nothing written since reached anybody.
    pub(crate) fn gone(&self) -> bool {
        self.gone
    }

    fn absorb<T>(&mut self, r: io::Result<T>, ok: T) -> io::Result<T> {
        match r {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(ok)
            }
            other => other,
        }
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.gone {
            return Ok(buf.len());
        }
        let r = self.w.write(buf);
        self.absorb(r, buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.gone {
            return Ok(());
        }
        let r = self.w.flush();
        self.absorb(r, ())
    }
}

impl Drop for Stdout {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Writes one line to standard error; a closed standard error is ignored (never a panic).
pub(crate) fn eprint_line(line: &str) {
    let mut e = io::stderr().lock();
    let _ = e.write_all(line.as_bytes());
    let _ = e.write_all(b"\n");
}

/// A file being written in full or not at all: the data goes to a temporary file next
/// to it, renamed over the target by [`NewFile::commit`]; dropped without a commit, the
/// temporary file is removed (an error half-way leaves no half-written output, and an
/// older file of that name untouched). A target that exists and is not a regular file
/// (`/dev/null`, a FIFO) is written directly.
pub(crate) struct NewFile {
    target: std::path::PathBuf,
    temp: Option<std::path::PathBuf>,
}

impl NewFile {
    /// Creates the file (or its temporary stand-in) for writing.
    pub(crate) fn create(target: &std::path::Path) -> io::Result<(NewFile, std::fs::File)> {
        let regular = match std::fs::metadata(target) {
            Ok(m) => m.is_file(),
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        let temp = match target.file_name() {
            Some(name) if regular => {
                let mut n = std::ffi::OsString::from(".");
                n.push(name);
                n.push(format!(".partial-{}", std::process::id()));
                Some(target.with_file_name(n))
            }
            _ => None,
        };
        let file = std::fs::File::create(temp.as_deref().unwrap_or(target))?;
        Ok((
            NewFile {
                target: target.to_path_buf(),
                temp,
            },
            file,
        ))
    }

    /// Puts the finished file in place.
    pub(crate) fn commit(mut self) -> io::Result<()> {
        if let Some(temp) = self.temp.take()
            && let Err(e) = std::fs::rename(&temp, &self.target)
        {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}
