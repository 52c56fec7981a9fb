//! A file writer that writes on its own thread, so that pruning the next tensor overlaps
//! with the kernel copying the last one into the page cache and out to disk.
//!
//! Bytes are gathered into chunks; a full chunk goes to the writer thread, which writes
//! it and hands the emptied chunk back for reuse. At most [`MAX_CHUNKS`] chunks exist, so
//! the bytes in flight are bounded (256 MiB) whatever the file size. The
//! first I/O error stops the thread; the producer sees it at its next write or at
//! [`WriteBehind::finish`].

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Bytes per chunk.
const CHUNK_BYTES: usize = 4 << 20;
/// Chunks in flight at most, being filled, queued or being written: 256 MiB, which lets
/// a whole large tensor go to the writer while the next one is pruned.
const MAX_CHUNKS: usize = 64;

/// A [`Write`] into a file whose writes happen on a background thread.
pub(crate) struct WriteBehind {
    current: Vec<u8>,
    chunk_bytes: usize,
    /// Chunks allocated so far (at most `max_chunks`).
    allocated: usize,
    max_chunks: usize,
    full: Option<SyncSender<Vec<u8>>>,
    empty: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<io::Result<File>>>,
}

impl WriteBehind {
    /// Starts the writer thread for `file`.
    pub(crate) fn new(file: File) -> io::Result<Self> {
        Self::with_chunks(file, CHUNK_BYTES, MAX_CHUNKS)
    }

    fn with_chunks(mut file: File, chunk_bytes: usize, max_chunks: usize) -> io::Result<Self> {
        let (full, full_rx) = sync_channel::<Vec<u8>>(max_chunks);
        let (empty_tx, empty) = sync_channel::<Vec<u8>>(max_chunks);
        let thread = std::thread::Builder::new().name("shears-writer".into()).spawn(
            move || -> io::Result<File> {
                for mut chunk in full_rx {
                    file.write_all(&chunk)?;
                    chunk.clear();
                    // The producer may have finished and gone: then nobody needs the chunk.
                    let _ = empty_tx.send(chunk);
                }
                Ok(file)
            },
        )?;
        Ok(WriteBehind {
            current: Vec::new(),
            chunk_bytes,
            allocated: 0,
            max_chunks,
            full: Some(full),
            empty,
            thread: Some(thread),
        })
    }

    /// Hands the current chunk to the writer thread and takes an empty one.
    fn send_current(&mut self) -> io::Result<()> {
        let next = match self.empty.try_recv() {
            Ok(chunk) => chunk,
            Err(_) if self.allocated < self.max_chunks => {
                self.allocated += 1;
                Vec::with_capacity(self.chunk_bytes)
            }
            Err(_) => match self.empty.recv() {
                Ok(chunk) => chunk,
                Err(_) => return Err(self.writer_error()),
            },
        };
        let chunk = std::mem::replace(&mut self.current, next);
        let sent = self.full.as_ref().map(|tx| tx.send(chunk));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.writer_error()),
        }
    }

    /// The error that stopped the writer thread (it only stops early on one).
    fn writer_error(&mut self) -> io::Error {
        self.full = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("the writer thread panicked"),
            _ => io::Error::other("the writer thread stopped"),
        }
    }

    /// Writes what is left, waits for the writer thread and returns the file.
    ///
    /// # Errors
    /// The first error any write met.
    pub(crate) fn finish(mut self) -> io::Result<File> {
        if !self.current.is_empty() {
            let chunk = std::mem::take(&mut self.current);
            if self.full.as_ref().map(|tx| tx.send(chunk)).is_some_and(|r| r.is_err()) {
                return Err(self.writer_error());
            }
        }
        self.full = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the writer thread panicked")),
            None => Err(io::Error::other("the writer thread stopped")),
        }
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.thread.is_none() {
            return Err(io::Error::other("the writer thread stopped"));
        }
        if self.current.capacity() == 0 {
            self.allocated += 1;
            self.current.reserve_exact(self.chunk_bytes);
        }
        let n = buf.len().min(self.chunk_bytes - self.current.len());
        self.current.extend_from_slice(&buf[..n]);
        if self.current.len() == self.chunk_bytes {
            self.send_current()?;
        }
        Ok(n)
    }

    /// Buffered bytes are written by [`WriteBehind::finish`]; a flush does not wait.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        // Close the queue so the thread ends, and wait: no write may outlive the writer.
        self.full = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("shears-wb-{}-{name}", std::process::id()));
        let file = File::create(&path).unwrap();
        (path, file)
    }

    #[test]
    fn writes_every_byte_in_order_across_chunk_boundaries() {
        let (path, file) = temp_file("order");
        // Tiny chunks and a pool of two force the producer to wait for the writer.
        let mut w = WriteBehind::with_chunks(file, 7, 2).unwrap();
        let mut expected = Vec::new();
        for i in 0..500u32 {
            let piece: Vec<u8> = (0..i % 23).map(|j| (i * 31 + j) as u8).collect();
            w.write_all(&piece).unwrap();
            expected.extend_from_slice(&piece);
        }
        let file = w.finish().unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert!(expected.len() > 7 * 100);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn an_empty_writer_makes_an_empty_file() {
        let (path, file) = temp_file("empty");
        WriteBehind::new(file).unwrap().finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_failing_write_reaches_the_producer() {
        // A read-only handle: every write fails with EBADF on the writer thread.
        let (path, file) = temp_file("fail");
        drop(file);
        let read_only = File::open(&path).unwrap();
        let mut w = WriteBehind::with_chunks(read_only, 4, 2).unwrap();
        let mut failed = None;
        for _ in 0..100 {
            if let Err(e) = w.write_all(&[1, 2, 3, 4, 5]) {
                failed = Some(e);
                break;
            }
        }
        let error = match failed {
            Some(e) => e,
            None => w.finish().unwrap_err(),
        };
        assert_ne!(error.kind(), io::ErrorKind::Other, "{error}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn an_error_met_only_at_the_end_is_returned_by_finish() {
        let (path, file) = temp_file("fail-late");
        drop(file);
        let read_only = File::open(&path).unwrap();
        let mut w = WriteBehind::with_chunks(read_only, 1 << 20, 2).unwrap();
        w.write_all(b"never reaches the disk").unwrap();
        assert!(w.finish().is_err());
        std::fs::remove_file(path).unwrap();
    }
}
