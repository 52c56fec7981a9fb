//! A buffer that the parallel tasks of one product fill together, then all read: each
//! task claims chunks no task has claimed yet and fills them until none is left, then
//! waits for the chunks other tasks are still filling.
//!
//! A batch of one panel split by rows between threads needs all of `X` in every task.
//! Copied by each task for itself, every thread copies all of it; copied first in a
//! parallel region of its own, the threads meet twice. Filled together, each thread
//! copies its share inside the product's one parallel region.
//!
//! The wait cannot deadlock: a task waits only for chunks another task has claimed,
//! and a task that claims a chunk fills it before it does anything else (filling runs
//! no parallel work of its own, so the claiming thread never leaves it for another
//! task). A task that starts after every chunk is claimed waits for the fills under
//! way; a task that runs alone claims every chunk.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// `buffer` in chunks of `chunk` elements (the last may be shorter), filled once by
/// whichever tasks call [`SharedFill::fill_then_read`].
pub(super) struct SharedFill<'a, T> {
    ptr: *mut T,
    len: usize,
    chunk: usize,
    chunks: usize,
    /// The next chunk no task has claimed.
    next: AtomicUsize,
    /// Chunks filled so far.
    filled: AtomicUsize,
    /// Set if a fill panicked, so that the tasks waiting for it panic too rather than
    /// wait for ever.
    poisoned: AtomicBool,
    _buffer: PhantomData<&'a mut [T]>,
}

// SAFETY: tasks on other threads write disjoint chunks through `ptr`, each chunk claimed
// by one task only (`next`), and read the buffer only once every chunk is filled (the
// release of `filled` after each fill, the acquire of every wait), as `&mut [T]` sent
// to one thread at a time would allow.
unsafe impl<T: Send + Sync> Sync for SharedFill<'_, T> {}

impl<'a, T> SharedFill<'a, T> {
    /// `buffer` to be filled in chunks of `chunk` elements (at least 1).
    pub(super) fn new(buffer: &'a mut [T], chunk: usize) -> Self {
        let chunk = chunk.max(1);
        SharedFill {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
            chunk,
            chunks: buffer.len().div_ceil(chunk),
            next: AtomicUsize::new(0),
            filled: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
            _buffer: PhantomData,
        }
    }

    /// Fills every chunk no task has claimed yet with `fill(first element, chunk)`,
    /// then waits until every chunk is filled and returns the whole buffer.
    ///
    /// # Panics
    /// If a fill panicked, in this task or another.
    pub(super) fn fill_then_read(&self, fill: impl Fn(usize, &mut [T])) -> &[T] {
        loop {
            let c = self.next.fetch_add(1, Ordering::Relaxed);
            if c >= self.chunks {
                break;
            }
            let start = c * self.chunk;
            let len = self.chunk.min(self.len - start);
            let poison = Poison(&self.poisoned);
            // SAFETY: chunk `c` lies within the buffer (c < chunks), and this task alone
            // claimed it; no task reads the buffer before every chunk is filled.
            let chunk = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) };
            fill(start, chunk);
            std::mem::forget(poison);
            self.filled.fetch_add(1, Ordering::Release);
        }
        let mut spins = 0u32;
        while self.filled.load(Ordering::Acquire) < self.chunks {
            assert!(
                !self.poisoned.load(Ordering::Relaxed),
                "a task filling a shared buffer panicked"
            );
            // A fill takes microseconds: spin first, then let the filling thread run
            // should it share this core.
            if spins < 1 << 12 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: every chunk is filled, and no task writes the buffer any more: the
        // acquire above orders those writes before these reads.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Marks the buffer poisoned if dropped, which happens only when a fill unwinds.
struct Poison<'a>(&'a AtomicBool);

impl Drop for Poison<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many tasks on however many threads (more tasks than threads, one alone),
    /// every element is filled exactly once and every task reads the whole buffer.
    #[test]
    fn tasks_fill_every_chunk_once_and_read_the_whole() {
        use rayon::prelude::*;
        for (threads, tasks, len, chunk) in
            [(1, 1, 100, 7), (2, 2, 1000, 32), (2, 5, 1000, 3), (3, 3, 10, 64), (2, 2, 0, 4)]
        {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut buffer = vec![0u32; len];
            let fills = AtomicUsize::new(0);
            let shared = SharedFill::new(&mut buffer, chunk);
            let sums: Vec<u64> = pool.install(|| {
                (0..tasks)
                    .into_par_iter()
                    .map(|_| {
                        let whole = shared.fill_then_read(|start, chunk| {
                            fills.fetch_add(1, Ordering::Relaxed);
                            for (k, v) in chunk.iter_mut().enumerate() {
                                *v += (start + k) as u32 + 1;
                            }
                        });
                        whole.iter().map(|&v| u64::from(v)).sum()
                    })
                    .collect()
            });
            let want = (1..=len as u64).sum::<u64>();
            assert!(sums.iter().all(|&s| s == want), "{threads} threads, {tasks} tasks");
            assert_eq!(fills.into_inner(), len.div_ceil(chunk));
            assert!(buffer.iter().enumerate().all(|(k, &v)| v == k as u32 + 1));
        }
    }

    /// A fill that panics makes the tasks waiting on it panic instead of waiting.
    #[test]
    fn a_panicking_fill_poisons_the_wait() {
        let mut buffer = vec![0u8; 8];
        let shared = SharedFill::new(&mut buffer, 4);
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shared.fill_then_read(|start, _| assert!(start != 0, "the first chunk fails"));
        }));
        assert!(first.is_err());
        // The chunk that failed is never filled; a later task panics rather than waits.
        let later = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shared.fill_then_read(|_, _| {});
        }));
        assert!(later.is_err());
    }
}
