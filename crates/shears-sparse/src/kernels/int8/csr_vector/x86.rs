//! The x86 copies of the int8 CSR products against one token: gathering, stepping
//! through windows by permutes, and walking rows through aligned groups of windows.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{GroupWidth, MAX_TRIPS, STEP, Token, WINDOW, finish_row, finish_rows, plain_dot};
use crate::index::SpIndex;
use crate::kernels::CsrView;
use crate::kernels::int8::MAX_SPAN;
use crate::kernels::isa::is;

/// The vector instructions a step costs besides its windows' two each, in the units
/// of the plain copy's one load per stored weight: steps of fewer weights, or of
/// weights spread over more windows, run the plain copy.
const STEP_COST: usize = 8;

/// [`super::finish_rows`] with [`gathered_dot`].
///
/// # Safety
/// The CPU must have AVX2, and `token.wide` must be filled.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gathering_rows<I: SpIndex>(
    a: CsrView<'_, f32, I, i8>,
    rows: Range<usize>,
    token: &Token,
    alpha: f32,
    beta: f32,
    out: &mut [f32],
) {
    assert!(token.wide.len() == a.ncols && a.ncols <= 1 << 31);
    // SAFETY: the features are the caller's contract; the token holds `ncols <= 2^31`
    // wide inputs (asserted), and every column is below `ncols` (the format's
    // validator).
    finish_rows(a, rows, token, alpha, beta, out, |cols, weights| unsafe {
        gathered_dot(cols, weights, &token.wide)
    });
}

/// The exact sum of `weights[e] * wide[cols[e]]` (the inputs' 16 bits in the low
/// half of each), eight stored weights at a time: one gather, one `vpmovsxbd` and
/// one `vpmaddwd` + `vpaddd`.
///
/// # Safety
/// The CPU must have AVX2; every column in `cols` must be below `wide.len()`, which
/// must be at most `2^31`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn gathered_dot<I: SpIndex>(cols: &[I], weights: &[i8], wide: &[i32]) -> i32 {
    let n = cols.len().min(weights.len());
    let mut acc = _mm256_setzero_si256();
    let mut e = 0;
    // Columns as 32-bit offsets, eight from entry `e` (`e + 8 <= n`).
    let offsets = |e: usize| {
        if is::<I, u16>() {
            // SAFETY: I is u16 and eight columns from `e` exist.
            return unsafe { _mm256_cvtepu16_epi32(_mm_loadu_si128(cols[e..].as_ptr().cast())) };
        }
        if is::<I, u32>() {
            // SAFETY: I is u32 and eight columns from `e` exist.
            return unsafe { _mm256_loadu_si256(cols[e..].as_ptr().cast()) };
        }
        let idx: [i32; 8] = std::array::from_fn(|j| cols[e + j].index() as i32);
        // SAFETY: eight lanes.
        unsafe { _mm256_loadu_si256(idx.as_ptr().cast()) }
    };
    // Eight products summed in pairs into 32-bit lanes, from entry `e` (`e + 8 <= n`).
    let products = |e: usize| {
        // SAFETY: eight columns below wide.len() <= 2^31 (the contract), so every
        // gathered offset is in bounds; eight weights from `e` exist.
        unsafe {
            let x = _mm256_i32gather_epi32::<4>(wide.as_ptr(), offsets(e));
            let w = _mm256_cvtepi8_epi32(_mm_loadl_epi64(weights[e..].as_ptr().cast()));
            _mm256_madd_epi16(x, w)
        }
    };
    // One accumulator: an integer addition waits a cycle, a gather much longer.
    while e + 8 <= n {
        acc = _mm256_add_epi32(acc, products(e));
        e += 8;
    }
    let mut plain = 0;
    if e < n && n >= 8 {
        // The last eight again, the lanes already summed weighted by zero: one loop
        // and no scalar tail for the last few, whose branches cost more than the
        // gather.
        // Lanes from 8 - (n - e) on are the ones not yet summed.
        let summed = _mm256_set1_epi32((8 - (n - e)) as i32 - 1);
        let fresh = _mm256_cmpgt_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), summed);
        acc = _mm256_add_epi32(acc, _mm256_and_si256(products(n - 8), fresh));
    } else if e < n {
        plain = cols[e..n]
            .iter()
            .zip(&weights[e..n])
            .map(|(c, &w)| i32::from(w) * i32::from(wide[c.index()] as i16))
            .sum();
    }
    let half = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
    let quarter = _mm_add_epi32(half, _mm_unpackhi_epi64(half, half));
    _mm_cvtsi128_si32(quarter) + _mm_extract_epi32::<1>(quarter) + plain
}

/// [`super::finish_rows`] with [`span_dot`].
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW, AVX-512 VBMI and AVX-512 VNNI, and
/// `token.biased` must be filled.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
pub(super) unsafe fn stepping_rows<I: SpIndex>(
    a: CsrView<'_, f32, I, i8>,
    rows: Range<usize>,
    token: &Token,
    trips: usize,
    alpha: f32,
    beta: f32,
    out: &mut [f32],
) {
    /// The rows with [`span_dot`] visiting `T` windows per step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
    fn with<I: SpIndex, const T: usize>(
        a: CsrView<'_, f32, I, i8>,
        rows: Range<usize>,
        token: &Token,
        alpha: f32,
        beta: f32,
        out: &mut [f32],
    ) {
        // SAFETY: the features are those this function is compiled with, and the
        // biased inputs are filled (stepping_rows' contract); T <= MAX_TRIPS.
        finish_rows(a, rows, token, alpha, beta, out, |cols, weights| unsafe {
            span_dot::<I, T>(cols, weights, token)
        });
    }
    // One copy per matrix, not one per row: so that the one running is inlined whole.
    match trips {
        2 => with::<I, 2>(a, rows, token, alpha, beta, out),
        4 => with::<I, 4>(a, rows, token, alpha, beta, out),
        _ => with::<I, MAX_TRIPS>(a, rows, token, alpha, beta, out),
    }
}

/// The exact sum of `weights[e] * token.values[cols[e]]` (`cols` within the
/// token's inputs and increasing, at most [`MAX_SPAN`] of them): per step of
/// 64 weights, one `vpermi2b` per window their columns reach, one `vpdpbusd`, and
/// one `vpdpbusd` for the bias (`128 * sum(weights)`), which is taken off at the
/// end. Steps that reach at most `T` windows (`T` > 0) visit exactly `T`: a loop of
/// fixed length, whose end the CPU predicts, where one of as many windows as the
/// step reaches ends at a different point each time (and each misprediction costs
/// about as much as five windows).
///
/// # Safety
/// As [`stepping_rows`]; `T` at most [`MAX_TRIPS`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
unsafe fn span_dot<I: SpIndex, const T: usize>(cols: &[I], weights: &[i8], token: &Token) -> i32 {
    let n = cols.len().min(weights.len());
    let (mut sums, mut bias, mut plain) = (_mm512_setzero_si512(), _mm512_setzero_si512(), 0);
    let mut e = 0;
    while e < n {
        let len = (n - e).min(STEP);
        let (cols, weights) = (&cols[e..e + len], &weights[e..e + len]);
        e += len;
        let first = cols[0].index() / WINDOW;
        let reached = cols[len - 1].index() / WINDOW - first + 1;
        let windows = if reached <= T { T } else { reached };
        // Weighed by the windows reached, not those visited: a row's last few
        // weights permute over T windows all the same, which measured faster than
        // loading them. (The rule keeps the windows reached below 29, so their
        // offsets from the first fit a byte.)
        if 2 * reached + STEP_COST > len {
            plain += plain_dot(cols, weights, &token.values);
            continue;
        }
        // Every window's 128 bytes lie inside the padded inputs (past the last one
        // reached, the padding's).
        let biased = token.biased();
        assert!((first + windows) * WINDOW <= biased.len());
        let live = u64::MAX >> (STEP - len);
        // SAFETY: the masked load reads the `len` weights only.
        let w = unsafe { _mm512_maskz_loadu_epi8(live, weights.as_ptr().cast()) };
        let (low, offset) = column_bytes(cols, first);
        // SAFETY: window `first + k` is inside the biased inputs (asserted above).
        let window = |k: usize| unsafe {
            let table = biased.as_ptr().add((first + k) * WINDOW);
            (_mm512_loadu_si512(table.cast()), _mm512_loadu_si512(table.add(64).cast()))
        };
        let inputs = if reached <= T {
            // Every window's pick for every weight, then a tree of blends keeps each
            // weight's own window's: by bit 0 of the offset, then bit 1, and so on.
            let mut picks: [__m512i; T] = std::array::from_fn(|k| {
                let (lower, upper) = window(k);
                _mm512_permutex2var_epi8(lower, low, upper)
            });
            let mut width = T;
            for bit in 0..T.trailing_zeros() {
                let odd = _mm512_test_epi8_mask(offset, _mm512_set1_epi8(1 << bit));
                for j in 0..width / 2 {
                    picks[j] = _mm512_mask_blend_epi8(odd, picks[2 * j], picks[2 * j + 1]);
                }
                width /= 2;
            }
            picks[0]
        } else {
            // Each weight's input comes from one window, zeros from the others: their
            // OR is every input.
            let (mut inputs, mut k_bytes) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for k in 0..windows {
                let here = _mm512_mask_cmpeq_epi8_mask(live, offset, k_bytes);
                k_bytes = _mm512_add_epi8(k_bytes, _mm512_set1_epi8(1));
                let (lower, upper) = window(k);
                let picked = _mm512_maskz_permutex2var_epi8(here, lower, low, upper);
                inputs = _mm512_or_si512(inputs, picked);
            }
            inputs
        };
        sums = _mm512_dpbusd_epi32(sums, inputs, w);
        bias = _mm512_dpbusd_epi32(bias, _mm512_set1_epi8(i8::MIN), w);
    }
    // The biased sum and the bias are each within i32 (`MAX_SPAN` weights of at most
    // 128 by inputs of at most 255), lane by lane too, and so is their difference,
    // the exact sum.
    _mm512_reduce_add_epi32(_mm512_sub_epi32(sums, bias)) + plain
}

/// Rows [`grouped_rows`] walks side by side.
const WALKS: usize = 4;

/// How far ahead of its step, in bytes, a walk asks for its columns and its weights to
/// be fetched (so twice as many entries ahead for the weights): the walks read
/// [`WALKS`] places in memory at once, which the CPU's own prefetcher follows less far
/// ahead than one stream, and a product's matrix is usually larger than L2.
const PREFETCH: usize = 4096;

// A group's windows past the columns' last lie in the biased inputs' padding.
const _: () = assert!(MAX_TRIPS >= 3);

/// [`super::finish_row`] with a [`GroupWalk`] per row, [`WALKS`] rows side by side.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW, AVX-512 VBMI, AVX-512 VNNI and POPCNT, and
/// `token.biased` must be filled.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni,popcnt")]
pub(super) unsafe fn grouped_rows<I: SpIndex>(
    a: CsrView<'_, f32, I, i8>,
    rows: Range<usize>,
    token: &Token,
    width: GroupWidth,
    alpha: f32,
    beta: f32,
    out: &mut [f32],
) {
    /// The rows with walks over groups of `G` windows: inlined whole per `G`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni,popcnt")]
    fn with<const G: usize>(
        a: CsrView<'_, f32, u16, i8>,
        rows: Range<usize>,
        token: &Token,
        alpha: f32,
        beta: f32,
        out: &mut [f32],
    ) {
        let biased = token.biased();
        let walk = |r: usize| {
            let entries = a.indptr[r]..a.indptr[r + 1];
            GroupWalk::new(&a.indices[entries.clone()], &a.values[entries])
        };
        // One span per row (the columns are below 2^16 = MAX_SPAN), whose sum the
        // walk gives.
        let finish = |r: usize, y: &mut f32, sum: i32| {
            finish_row(a, r, token, alpha, beta, y, |_, _| sum);
        };
        let mut blocks = out.chunks_exact_mut(WALKS);
        // Walks side by side: each step's count of entries waits on its columns' load
        // and compare, so one row alone leaves the vector units idle.
        for (r, ys) in rows.clone().step_by(WALKS).zip(&mut blocks) {
            let mut walks: [GroupWalk<'_>; WALKS] = std::array::from_fn(|k| walk(r + k));
            while walks.iter().all(|w| !w.done()) {
                for w in &mut walks {
                    w.step::<G>(biased);
                }
            }
            let sums = walks.map(|mut w| {
                while !w.done() {
                    w.step::<G>(biased);
                }
                w.sum()
            });
            for (k, (y, sum)) in ys.iter_mut().zip(sums).enumerate() {
                finish(r + k, y, sum);
            }
        }
        let rest = blocks.into_remainder();
        for (r, y) in (rows.end - rest.len()..rows.end).zip(rest) {
            let mut w = walk(r);
            while !w.done() {
                w.step::<G>(biased);
            }
            finish(r, y, w.sum());
        }
    }
    assert!(is::<I, u16>() && a.ncols <= MAX_SPAN, "the grouped copy reads 16-bit columns");
    // SAFETY: I is u16 (asserted), so the columns are the same memory as u16.
    let indices = unsafe { std::slice::from_raw_parts(a.indices.as_ptr().cast(), a.indices.len()) };
    let a = CsrView {
        nrows: a.nrows,
        ncols: a.ncols,
        indptr: a.indptr,
        indices,
        values: a.values,
        row_scales: a.row_scales,
    };
    // One copy per matrix, as `stepping_rows`.
    match width {
        GroupWidth::Two => with::<2>(a, rows, token, alpha, beta, out),
        GroupWidth::Four => with::<4>(a, rows, token, alpha, beta, out),
    }
}

/// One row's exact sum of `weights[e] * inputs[cols[e]]` (the biased inputs hold the
/// inputs plus 128, padded; `cols` increasing), walked one step per group of `G`
/// windows (aligned at multiples of `G * WINDOW` columns) that holds entries: the
/// step takes the group's first 64 entries (a group holding more takes another
/// step), one `vpermi2b` per window picks every entry's input from it, a tree of
/// blends by the column's bits 7 and 8 (the window's place in the group) keeps each
/// entry's own window's pick, and one `vpdpbusd` multiplies and adds them. A step
/// costs `G` permutes; a step of [`span_dot`] visits windows from wherever its first
/// column lies, and twice as many at 90% sparsity. Where the next step starts waits
/// on this step's columns (their load, compare and count), which is why
/// [`grouped_rows`] walks several rows at once.
struct GroupWalk<'a> {
    cols: &'a [u16],
    weights: &'a [i8],
    /// The first entry not yet summed.
    e: usize,
    /// The biased inputs' products, and 128 times the weights, summed per lane.
    sums: __m512i,
    bias: __m512i,
}

impl<'a> GroupWalk<'a> {
    #[target_feature(enable = "avx512f")]
    fn new(cols: &'a [u16], weights: &'a [i8]) -> Self {
        let n = cols.len().min(weights.len());
        let (cols, weights) = (&cols[..n], &weights[..n]);
        GroupWalk {
            cols,
            weights,
            e: 0,
            sums: _mm512_setzero_si512(),
            bias: _mm512_setzero_si512(),
        }
    }

    fn done(&self) -> bool {
        self.e >= self.cols.len()
    }

    /// The exact sum, once [`done`](Self::done).
    #[target_feature(enable = "avx512f")]
    fn sum(&self) -> i32 {
        // As span_dot: each sum within i32, and their difference the exact sum.
        _mm512_reduce_add_epi32(_mm512_sub_epi32(self.sums, self.bias))
    }

    /// Sums the next group's entries (its first 64), `G` being 2 or 4, from `biased`,
    /// which must hold every group's windows: those the columns reach, rounded up to a
    /// whole group (at most three more, within [`Token`]'s padding).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni,popcnt")]
    fn step<const G: usize>(&mut self, biased: &[u8]) {
        const { assert!(G == 2 || G == 4) };
        let (cols, e) = (self.cols, self.e);
        let n = cols.len();
        let group = usize::from(cols[e]) >> (WINDOW.trailing_zeros() + G.trailing_zeros());
        let windows = group * G..(group + 1) * G;
        assert!(windows.end * WINDOW <= biased.len());
        let p = cols[e..].as_ptr().cast::<i16>();
        let ahead = |p: *const i8| {
            let p = p.wrapping_add(PREFETCH);
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
        };
        ahead(p.cast());
        ahead(self.weights[e..].as_ptr().cast());
        let (a, b, live) = if n - e >= STEP {
            // SAFETY: 64 columns from `e` exist.
            unsafe {
                (_mm512_loadu_si512(p.cast()), _mm512_loadu_si512(p.add(32).cast()), u64::MAX)
            }
        } else {
            let live = u64::MAX >> (STEP - (n - e));
            // SAFETY: the masked loads read the `n - e` columns from `e` only (the
            // second's address may lie past them, hence `wrapping_add`, which reads
            // nothing).
            unsafe {
                (
                    _mm512_maskz_loadu_epi16(live as u32, p),
                    _mm512_maskz_loadu_epi16((live >> 32) as u32, p.wrapping_add(32)),
                    live,
                )
            }
        };
        // Byte 2j (2j + 1) of the two vectors of 32 columns: column j's low (high) byte.
        let byte_of = |first: u8| {
            let at: [u8; STEP] = std::array::from_fn(|j| 2 * j as u8 + first);
            // SAFETY: 64 bytes.
            unsafe { _mm512_loadu_si512(at.as_ptr().cast()) }
        };
        let (low, high) = (
            _mm512_permutex2var_epi8(a, byte_of(0), b),
            _mm512_permutex2var_epi8(a, byte_of(1), b),
        );
        // The group's columns end at a multiple of 256 (G >= 2), so a column is in
        // it if its high byte is at most the group's last; the group's entries,
        // increasing, fill the first lanes.
        let last = _mm512_set1_epi8((((windows.end * WINDOW) >> 8) - 1) as u8 as i8);
        let inside = _mm512_mask_cmple_epu8_mask(live, high, last);
        // SAFETY: the masked load reads the group's weights from `e` only.
        let w = unsafe { _mm512_maskz_loadu_epi8(inside, self.weights[e..].as_ptr().cast()) };
        let mut picks: [__m512i; G] = std::array::from_fn(|k| {
            // SAFETY: the group's windows lie inside `biased` (asserted above).
            unsafe {
                let table = biased.as_ptr().add((windows.start + k) * WINDOW);
                let (lower, upper) =
                    (_mm512_loadu_si512(table.cast()), _mm512_loadu_si512(table.add(64).cast()));
                _mm512_permutex2var_epi8(lower, low, upper)
            }
        });
        // The window's place in the group: column bit 7 (the low byte's top bit),
        // then bit 8 (the high byte's first).
        let place_bit = |bit: u32| {
            if bit == 0 {
                _mm512_test_epi8_mask(low, _mm512_set1_epi8(i8::MIN))
            } else {
                _mm512_test_epi8_mask(high, _mm512_set1_epi8(1 << (bit - 1)))
            }
        };
        let mut width = G;
        for bit in 0..G.trailing_zeros() {
            let odd = place_bit(bit);
            for j in 0..width / 2 {
                picks[j] = _mm512_mask_blend_epi8(odd, picks[2 * j], picks[2 * j + 1]);
            }
            width /= 2;
        }
        self.sums = _mm512_dpbusd_epi32(self.sums, picks[0], w);
        self.bias = _mm512_dpbusd_epi32(self.bias, _mm512_set1_epi8(i8::MIN), w);
        // At least one: the lane of entry `e`, in its own group.
        self.e += inside.count_ones() as usize;
    }
}

/// For up to 64 increasing columns: each column's low byte (whose low seven bits are
/// its place in its window, all `vpermi2b` reads) and its window's offset from window
/// `first` (below 256 for every column given), as bytes; past the columns, bytes of
/// no meaning (whose weights are zero).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn column_bytes<I: SpIndex>(cols: &[I], first: usize) -> (__m512i, __m512i) {
    let len = cols.len().min(STEP);
    let live = u64::MAX >> (STEP - len);
    let load = |bytes: &[u8; STEP]| {
        // SAFETY: 64 bytes.
        unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
    };
    if is::<I, u16>() {
        // Byte 2j of the two vectors: each u16's low byte.
        let even = load(&std::array::from_fn(|j| 2 * j as u8));
        let p = cols.as_ptr().cast::<i16>();
        // SAFETY: I is u16 (so the cast is to a type of its size); the masked loads read
        // the `len` columns only (the second's address may lie past them, hence
        // `wrapping_add`, which reads nothing).
        let (a, b) = unsafe {
            (
                _mm512_maskz_loadu_epi16(live as u32, p),
                _mm512_maskz_loadu_epi16((live >> 32) as u32, p.wrapping_add(32)),
            )
        };
        let first = _mm512_set1_epi16(first as i16);
        let window = |v| _mm512_sub_epi16(_mm512_srli_epi16::<7>(v), first);
        let low = _mm512_permutex2var_epi8(a, even, b);
        return (low, _mm512_permutex2var_epi8(window(a), even, window(b)));
    }
    if is::<I, u32>() {
        // Byte 4j of the two vectors, for the first 32 bytes: each u32's low byte.
        let fourth = load(&std::array::from_fn(|j| if j < 32 { 4 * j as u8 } else { 0 }));
        let p = cols.as_ptr().cast::<i32>();
        // SAFETY: I is u32 (so the cast is to a type of its size); the masked loads read
        // the `len` columns only (from addresses that may lie past them, hence
        // `wrapping_add`).
        let v: [__m512i; 4] = std::array::from_fn(|q| unsafe {
            _mm512_maskz_loadu_epi32((live >> (16 * q)) as u16, p.wrapping_add(16 * q))
        });
        let first = _mm512_set1_epi32(first as i32);
        let window = |v| _mm512_sub_epi32(_mm512_srli_epi32::<7>(v), first);
        let bytes = |v: [__m512i; 4]| {
            let lower = _mm512_permutex2var_epi8(v[0], fourth, v[1]);
            let upper = _mm512_permutex2var_epi8(v[2], fourth, v[3]);
            _mm512_inserti64x4::<1>(lower, _mm512_castsi512_si256(upper))
        };
        return (bytes(v), bytes(v.map(window)));
    }
    // Index types without a vector layout here: one column at a time.
    let low = std::array::from_fn(|j| cols.get(j).map_or(0, |c| c.index() as u8));
    let offset =
        std::array::from_fn(|j| cols.get(j).map_or(0, |c| (c.index() / WINDOW - first) as u8));
    (load(&low), load(&offset))
}
