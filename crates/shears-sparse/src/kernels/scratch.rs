//! Line-aligned scratch buffers for the batched products, kept for reuse per thread.
//!
//! A batched product needs buffers as large as its input and its output (`X` row-major,
//! the quantized tokens, each task's rows of `Y`). Freshly allocated at every call,
//! buffers of that size come from the operating system each time: the allocator maps
//! them (or trims them off the top of its heap when freed), and the first write to
//! each page takes a fault and a cleared page, a large share of a product of a few
//! milliseconds. So a dropped buffer goes back to a small pool of its
//! thread, from which the next product of that thread takes it, already mapped.
//!
//! The pool is bounded: at most [`POOLED_BUFFERS`] buffers of each element type per
//! thread, none larger than [`MAX_POOLED_BYTES`]; larger buffers are freed as before
//! (their products are long enough that the faults weigh little).

use std::any::Any;
use std::cell::RefCell;

/// Buffers of one element type a thread keeps for reuse.
const POOLED_BUFFERS: usize = 4;

/// The largest buffer a thread keeps for reuse, in bytes.
const MAX_POOLED_BYTES: usize = 16 << 20;

/// Bytes of a cache line, the alignment of every buffer's first element.
const LINE: usize = 64;

thread_local! {
    /// This thread's free buffers: one `Vec<Vec<T>>` per element type `T` in use.
    static POOLS: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's pool of free buffers of `T`; `None` on a thread whose pools
/// are already torn down.
fn with_pool<T: 'static, R>(f: impl FnOnce(&mut Vec<Vec<T>>) -> R) -> Option<R> {
    POOLS
        .try_with(|pools| {
            let mut pools = pools.borrow_mut();
            let at = match pools.iter().position(|p| p.is::<Vec<Vec<T>>>()) {
                Some(at) => at,
                None => {
                    pools.push(Box::new(Vec::<Vec<T>>::new()));
                    pools.len() - 1
                }
            };
            pools[at].downcast_mut::<Vec<Vec<T>>>().map(f)
        })
        .ok()
        .flatten()
}

/// A filled buffer whose first element sits on a 64-byte boundary, so that with a batch
/// of 16 `f32` (or 8 `f64`) or a multiple, every row of `xt` and of the output starts a
/// cache line and a 64-byte load never straddles two. The allocator only promises
/// 16 bytes, and a large allocation typically lands 16 bytes past a page, so without
/// this every other 64-byte load of a row would cross a line. Dropped, its storage goes
/// back to the thread's pool (see the module's documentation).
pub(super) struct LineAligned<T: 'static> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default + 'static> LineAligned<T> {
    pub(super) fn zeroed(len: usize) -> Self {
        Self::filled(len, T::default())
    }

    /// `len` copies of `value`, in storage from the thread's pool where one is large
    /// enough (the smallest such), else newly allocated.
    pub(super) fn filled(len: usize, value: T) -> Self {
        let mut buffer = Self::for_overwrite(len);
        buffer.buf.fill(value);
        buffer
    }

    /// `len` elements of unspecified values (what the storage last held, or the default),
    /// for a caller that writes every element before it reads it: a pooled buffer's
    /// values are kept rather than cleared, so a product whose buffer is a copy of its
    /// input does not write it twice.
    pub(super) fn for_overwrite(len: usize) -> Self {
        let slack = LINE / size_of::<T>();
        let needed = len + slack;
        let mut buf = with_pool::<T, _>(|pool| {
            let fitting = pool.iter().enumerate().filter(|(_, b)| b.capacity() >= needed);
            let smallest = fitting.min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i);
            smallest.map(|i| pool.swap_remove(i))
        })
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(needed));
        // Writes only the elements past the pooled buffer's length, if any.
        buf.resize(needed, T::default());
        // `align_offset` may decline (usize::MAX); then the buffer is merely unaligned.
        let start = buf.as_ptr().align_offset(LINE).min(slack);
        LineAligned { buf, start, len }
    }

    pub(super) fn as_slice(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl<T: 'static> Drop for LineAligned<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() == 0 || buf.capacity() * size_of::<T>() > MAX_POOLED_BYTES {
            return;
        }
        // On a thread being torn down there is no pool left, and the buffer is freed.
        with_pool::<T, _>(|pool| {
            if pool.len() < POOLED_BUFFERS {
                pool.push(buf);
            } else if let Some(smallest) = pool.iter_mut().min_by_key(|b| b.capacity())
                && smallest.capacity() < buf.capacity()
            {
                // Keep the larger of the two: the products that need it are the ones
                // whose buffers would be refaulted.
                *smallest = buf;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_filled_and_reused() {
        let first = LineAligned::<f32>::filled(1000, 2.5);
        assert_eq!(first.as_slice().as_ptr().align_offset(LINE), 0);
        assert!(first.as_slice().iter().all(|&v| v == 2.5));
        let storage = first.buf.as_ptr();
        drop(first);
        // The next buffer that fits takes the same storage, refilled.
        let mut second = LineAligned::<f32>::zeroed(500);
        assert_eq!(second.buf.as_ptr(), storage);
        assert_eq!(second.as_slice().len(), 500);
        assert!(second.as_slice().iter().all(|&v| v == 0.0));
        second.as_mut_slice()[499] = 1.0;
        assert_eq!(second.as_slice()[499], 1.0);
    }

    #[test]
    fn a_buffer_for_overwrite_keeps_the_pooled_values_and_its_length() {
        drop(LineAligned::<f32>::filled(1000, 7.0));
        // Takes the storage above, and leaves it 300 (and the slack) long.
        let mut first = LineAligned::<f32>::filled(300, 5.0);
        first.as_mut_slice()[0] = 1.0;
        let storage = first.buf.as_ptr();
        drop(first);
        // Shorter than the pooled one: its values, not cleared.
        let second = LineAligned::<f32>::for_overwrite(200);
        assert_eq!((second.buf.as_ptr(), second.as_slice().len()), (storage, 200));
        assert_eq!(second.as_slice().as_ptr().align_offset(LINE), 0);
        assert_eq!((second.as_slice()[0], second.as_slice()[199]), (1.0, 5.0));
        drop(second);
        // Past the pooled buffer's length but within its storage: the default there.
        let third = LineAligned::<f32>::for_overwrite(900);
        assert_eq!((third.buf.as_ptr(), third.as_slice().len()), (storage, 900));
        assert_eq!((third.as_slice()[0], third.as_slice()[899]), (1.0, 0.0));
    }

    #[test]
    fn the_pool_is_bounded() {
        let large = LineAligned::<u8>::zeroed(MAX_POOLED_BYTES + 1);
        drop(large);
        let buffers: Vec<_> =
            (0..2 * POOLED_BUFFERS).map(|_| LineAligned::<u8>::zeroed(64)).collect();
        drop(buffers);
        let (count, largest) =
            with_pool::<u8, _>(|pool| (pool.len(), pool.iter().map(Vec::capacity).max()))
                .unwrap_or_default();
        assert_eq!(count, POOLED_BUFFERS);
        assert!(largest.is_some_and(|bytes| bytes <= MAX_POOLED_BYTES));
        // An empty buffer is never pooled.
        drop(LineAligned::<u8>::zeroed(0));
    }
}
