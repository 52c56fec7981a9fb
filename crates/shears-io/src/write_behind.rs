//! A file writer that writes on its own thread, so that pruning the next tensor overlaps
//! with the last one going to disk.
//!
//! Bytes are gathered into chunks; a full chunk goes to the writer thread, which writes
//! it and hands the emptied chunk back for reuse. At most [`MAX_CHUNKS`] chunks exist, so
//! the bytes in flight are bounded (256 MiB) whatever the file size. The first I/O error
//! stops the thread; the producer sees it at its next write or at [`WriteBehind::finish`].
//!
//! On Linux, full chunks are written with direct I/O (`O_DIRECT`) where the filesystem
//! takes it: the chunks are page-aligned and a whole number of pages, so the device reads
//! them straight from memory. A file of many gigabytes then neither costs a kernel copy
//! into the page cache (on a VM, a fresh page cache page costs more than the copy) nor
//! evicts everything else from it. The last, partial chunk is written through the page
//! cache, as is everything on filesystems that refuse direct I/O.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rayon::prelude::*;

/// Bytes per chunk: a multiple of [`ALIGN`].
const CHUNK_BYTES: usize = 4 << 20;
/// Chunks in flight at most, being filled, queued or being written: 256 MiB, which lets
/// a whole large tensor go to the writer while the next one is pruned.
const MAX_CHUNKS: usize = 64;
/// Chunks one large write fills at once, in parallel.
const PARALLEL_FILL: usize = 8;
/// Direct I/O alignment of buffer addresses, file offsets and lengths (a page; no Linux
/// block device asks for more).
const ALIGN: usize = 4096;

/// A buffer whose bytes start at an [`ALIGN`]-aligned address.
struct Chunk {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Chunk {
    fn new(capacity: usize) -> Chunk {
        let buf = vec![0u8; capacity + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        Chunk { buf, start, len: 0 }
    }

    fn capacity(&self) -> usize {
        self.buf.len() - ALIGN
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Appends as much of `data` as fits; returns how much.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.capacity() - self.len);
        let at = self.start + self.len;
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }
}

/// How the writer thread writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Full chunks with direct I/O when the filesystem takes it.
    Direct,
    /// Everything through the page cache.
    Buffered,
}

/// The writer thread's end: the file, and whether direct I/O is on.
struct Sink {
    file: File,
    direct: bool,
    /// Bytes written so far: where the next chunk starts.
    written: u64,
}

impl Sink {
    fn new(file: File, mode: Mode) -> Sink {
        let mut sink = Sink { file, direct: false, written: 0 };
        if mode == Mode::Direct {
            sink.set_direct(true);
        }
        sink
    }

    /// Turns direct I/O on or off; stays buffered if the filesystem refuses it.
    #[cfg(target_os = "linux")]
    fn set_direct(&mut self, on: bool) {
        use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
        let Ok(flags) = fcntl_getfl(&self.file) else { return };
        let flags = if on { flags | OFlags::DIRECT } else { flags - OFlags::DIRECT };
        self.direct = fcntl_setfl(&self.file, flags).is_ok() && on;
    }

    #[cfg(not(target_os = "linux"))]
    fn set_direct(&mut self, _on: bool) {
        self.direct = false;
    }

    fn write(&mut self, chunk: &Chunk) -> io::Result<()> {
        let whole_pages = chunk.len.is_multiple_of(ALIGN);
        if self.direct && whole_pages {
            // Some filesystems accept the flag and refuse the write (EINVAL): the chunk
            // is written again from its start, through the page cache.
            match self.file.write_all(chunk.bytes()) {
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    self.set_direct(false);
                    self.file.seek(SeekFrom::Start(self.written))?;
                }
                other => return self.advance(other, chunk),
            }
        } else if self.direct {
            self.set_direct(false);
        }
        let result = self.file.write_all(chunk.bytes());
        self.advance(result, chunk)
    }

    fn advance(&mut self, result: io::Result<()>, chunk: &Chunk) -> io::Result<()> {
        result?;
        self.written += chunk.len as u64;
        Ok(())
    }
}

/// A [`Write`] into a file whose writes happen on a background thread.
pub(crate) struct WriteBehind {
    current: Option<Chunk>,
    chunk_bytes: usize,
    /// Chunks allocated so far (at most `max_chunks`).
    allocated: usize,
    max_chunks: usize,
    full: Option<SyncSender<Chunk>>,
    empty: Receiver<Chunk>,
    thread: Option<JoinHandle<io::Result<File>>>,
}

impl WriteBehind {
    /// Starts the writer thread for `file`, positioned at its start. Direct I/O is tried
    /// unless the environment sets `SHEARS_BUFFERED_WRITES` (to anything but `0`): the
    /// way out on a filesystem whose direct I/O misbehaves.
    pub(crate) fn new(file: File) -> io::Result<Self> {
        let buffered = std::env::var_os("SHEARS_BUFFERED_WRITES").is_some_and(|v| v != "0");
        let mode = if buffered { Mode::Buffered } else { Mode::Direct };
        Self::with_chunks(file, mode, CHUNK_BYTES, MAX_CHUNKS)
    }

    fn with_chunks(
        file: File,
        mode: Mode,
        chunk_bytes: usize,
        max_chunks: usize,
    ) -> io::Result<Self> {
        let (full, full_rx) = sync_channel::<Chunk>(max_chunks);
        let (empty_tx, empty) = sync_channel::<Chunk>(max_chunks);
        let thread = std::thread::Builder::new().name("shears-writer".into()).spawn(
            move || -> io::Result<File> {
                let mut sink = Sink::new(file, mode);
                for mut chunk in full_rx {
                    sink.write(&chunk)?;
                    chunk.len = 0;
                    // The producer may have finished and gone: then nobody needs the chunk.
                    let _ = empty_tx.send(chunk);
                }
                if sink.direct {
                    sink.set_direct(false);
                }
                Ok(sink.file)
            },
        )?;
        Ok(WriteBehind {
            current: None,
            chunk_bytes,
            allocated: 0,
            max_chunks,
            full: Some(full),
            empty,
            thread: Some(thread),
        })
    }

    /// An empty chunk: a returned one, a new one while under the limit, or the next one
    /// the writer returns.
    fn empty_chunk(&mut self) -> io::Result<Chunk> {
        match self.empty.try_recv() {
            Ok(chunk) => Ok(chunk),
            Err(_) if self.allocated < self.max_chunks => {
                self.allocated += 1;
                Ok(Chunk::new(self.chunk_bytes))
            }
            Err(_) => self.empty.recv().map_err(|_| self.writer_error()),
        }
    }

    /// Hands `chunk` to the writer thread.
    fn send(&mut self, chunk: Chunk) -> io::Result<()> {
        match self.full.as_ref().map(|tx| tx.send(chunk)) {
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
        if let Some(chunk) = self.current.take().filter(|c| c.len > 0) {
            self.send(chunk)?;
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
    /// Copies `buf` into chunks. A buffer spanning several whole chunks (a tensor) fills
    /// up to [`PARALLEL_FILL`] of them at once on rayon's threads.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.thread.is_none() {
            return Err(io::Error::other("the writer thread stopped"));
        }
        let whole = buf.len() / self.chunk_bytes;
        if self.current.is_none() && whole >= 2 {
            // Never more than the pool holds: the chunks are all taken before any is sent.
            let count = whole.min(PARALLEL_FILL).min(self.max_chunks);
            let mut chunks = Vec::with_capacity(count);
            for _ in 0..count {
                chunks.push(self.empty_chunk()?);
            }
            chunks.par_iter_mut().zip(buf.par_chunks(self.chunk_bytes)).for_each(|(c, b)| {
                c.fill(b);
            });
            let n = chunks.len() * self.chunk_bytes;
            for chunk in chunks {
                self.send(chunk)?;
            }
            return Ok(n);
        }
        let mut chunk = match self.current.take() {
            Some(chunk) => chunk,
            None => self.empty_chunk()?,
        };
        let n = chunk.fill(buf);
        if chunk.len == chunk.capacity() {
            self.send(chunk)?;
        } else {
            self.current = Some(chunk);
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

    /// Writes pieces of every length through tiny chunks with a pool of two, so the
    /// producer keeps waiting for the writer, and now and then a piece of several chunks
    /// (filled in parallel); returns what was written.
    fn write_pieces(w: &mut WriteBehind) -> Vec<u8> {
        let mut expected = Vec::new();
        for i in 0..3000u32 {
            let len = if i % 500 == 7 { 5 * 2 * ALIGN as u32 + i } else { i % 23 * 37 };
            let piece: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            w.write_all(&piece).unwrap();
            expected.extend_from_slice(&piece);
        }
        expected
    }

    #[test]
    fn writes_every_byte_in_order_in_both_modes() {
        for mode in [Mode::Direct, Mode::Buffered] {
            let (path, file) = temp_file(&format!("order-{mode:?}"));
            let mut w = WriteBehind::with_chunks(file, mode, 2 * ALIGN, 2).unwrap();
            let expected = write_pieces(&mut w);
            drop(w.finish().unwrap());
            assert_eq!(std::fs::read(&path).unwrap(), expected, "{mode:?}");
            assert!(expected.len() > 100 * ALIGN);
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn chunks_are_page_aligned() {
        for capacity in [ALIGN, 3 * ALIGN, CHUNK_BYTES] {
            let mut chunk = Chunk::new(capacity);
            assert_eq!(chunk.bytes().as_ptr() as usize % ALIGN, 0);
            assert_eq!(chunk.capacity(), capacity);
            assert_eq!(chunk.fill(&vec![7; capacity + 5]), capacity);
            assert_eq!(chunk.bytes().len(), capacity);
        }
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
        let mut w = WriteBehind::with_chunks(read_only, Mode::Direct, ALIGN, 2).unwrap();
        let mut failed = None;
        for _ in 0..10_000 {
            if let Err(e) = w.write_all(&[1, 2, 3, 4, 5]) {
                failed = Some(e);
                break;
            }
        }
        let error = failed.expect("the writes must fail once the writer stops");
        assert_ne!(error.kind(), io::ErrorKind::Other, "{error}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn an_error_met_only_at_the_end_is_returned_by_finish() {
        let (path, file) = temp_file("fail-late");
        drop(file);
        let read_only = File::open(&path).unwrap();
        let mut w = WriteBehind::with_chunks(read_only, Mode::Buffered, 1 << 20, 2).unwrap();
        w.write_all(b"never reaches the disk").unwrap();
        assert!(w.finish().is_err());
        std::fs::remove_file(path).unwrap();
    }
}
