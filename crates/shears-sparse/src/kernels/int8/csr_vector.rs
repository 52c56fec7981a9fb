//! Int8 CSR products against one token in integers: `y <- alpha * A x + beta * y` where
//! `A` stores int8 weights with a scale per row and `x` is quantized as one token, as
//! [`super::quantize_columns`] quantizes a column (the same scale and values).
//!
//! Each output is `xs * sum_s(scale_r * dot_s)`, where `dot_s` is the exact 32-bit
//! integer sum of the row's stored weights times their quantized inputs over a span of
//! [`MAX_SPAN`] columns: the float steps of the batched kernel ([`super::csr`]), so a
//! product gives the bits of that kernel's output for the same token in a batch.
//!
//! The order of an integer sum does not change it, so each copy fetches the inputs its
//! own way. The plain copy loads one quantized input per stored weight; the AVX2 and
//! AVX-512 paths gather eight at a time, as the f32 kernels do (where the CPU gathers
//! faster than it loads). Both are bound by those loads, one per stored weight. CPUs
//! with AVX-512 VBMI and VNNI look up 64 stored weights' inputs at a time instead: the
//! quantized inputs, stored as bytes plus 128, lie in windows of 128; for each window,
//! one `vpermi2b` picks every weight's input from it, a tree of blends keeps each
//! weight's own window's pick, and one `vpdpbusd` multiplies and adds them all. Two
//! copies choose the windows:
//!
//! - the grouped copy (16-bit columns, 6% to 22% of the entries stored, 90% sparsity
//!   among them) steps through aligned groups of two or four windows, one step per
//!   group's entries, and walks four rows at once, since where each step starts
//!   depends on the last;
//! - the stepping copy (denser matrices, and 32-bit columns) takes 64 weights per step
//!   and visits a fixed number of windows from the first one's (a loop whose end the CPU
//!   predicts).
//!
//! Sparser matrices, whose steps would serve too few weights per window, gather.

use std::ops::Range;

use super::{MAX_SPAN, column_scale_into, quantize_run};
use crate::index::SpIndex;
use crate::kernels::isa::ACTIVATION_BIAS;
use crate::kernels::{CsrView, KernelPath, combine, for_units, kernel_path};

/// Inputs per window: the two 64-byte vectors one `vpermi2b` picks from.
const WINDOW: usize = 128;

/// The alignment of the biased inputs.
const CACHE_LINE: usize = 64;

/// The most windows a step of the permuting copy visits in a fixed loop, however few it
/// reaches (a step that reaches more visits those it reaches): the biased inputs are
/// padded with as many more. Matrices sparse enough that a step reaches more, on
/// average, run the gathering or plain copy, which costs less per stored weight there.
const MAX_TRIPS: usize = 8;

/// Stored weights per step of the permuting copy: one 64-byte vector of them.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code, reason = "only the x86 copies permute"))]
const STEP: usize = 64;

/// `x` quantized as one token.
#[cfg_attr(
    not(target_arch = "x86_64"),
    expect(dead_code, reason = "the inputs' other layouts are for the x86 copies")
)]
struct Token {
    scale: f32,
    values: Vec<i16>,
    /// The values plus [`ACTIVATION_BIAS`] as bytes from `biased[skip..]` (the first
    /// cache-line boundary of the buffer, so that no window's load splits a line),
    /// padded with the bias (which stands for zero) to a whole number of [`WINDOW`]s and
    /// [`MAX_TRIPS`] more: filled only for the permuting copies.
    biased: Vec<u8>,
    skip: usize,
    /// The values' 16 bits in the low half of 32, the high half zero (so that
    /// `vpmaddwd` multiplies them alone): filled only for the gathering copy.
    wide: Vec<i32>,
}

impl Token {
    fn new(path: KernelPath, x: &[f32], copy: Fetch) -> Token {
        let mut scale = 1.0;
        if !x.is_empty() {
            column_scale_into(path, x, &mut scale);
        }
        let mut values = vec![0; x.len()];
        // A token with a NaN or an infinity keeps zeros (its scale makes it NaN).
        if !scale.is_nan() {
            quantize_run(path, x, scale, &mut values);
        }
        let (mut biased, mut skip) = (Vec::<u8>::new(), 0);
        if matches!(copy, Fetch::Permuting { .. } | Fetch::Grouped { .. }) {
            let bias = |v: i16| (i32::from(v) + ACTIVATION_BIAS) as u8;
            let len = x.len().next_multiple_of(WINDOW) + MAX_TRIPS * WINDOW;
            biased.reserve_exact(len + CACHE_LINE);
            skip = biased.as_ptr().align_offset(CACHE_LINE).min(CACHE_LINE);
            biased.resize(skip, 0);
            biased.extend(values.iter().map(|&v| bias(v)));
            biased.resize(skip + len, bias(0));
        }
        let wide = if copy == Fetch::Gathering {
            values.iter().map(|&v| i32::from(v as u16)).collect()
        } else {
            Vec::new()
        };
        Token { scale, values, biased, skip, wide }
    }

    /// The biased inputs and their padding, from a cache-line boundary.
    #[cfg_attr(
        not(target_arch = "x86_64"),
        expect(dead_code, reason = "only the x86 copies permute")
    )]
    fn biased(&self) -> &[u8] {
        &self.biased[self.skip..]
    }
}

/// How a copy fetches each stored weight's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fetch {
    /// One load at a time.
    Plain,
    /// Eight at a time with a gather instruction (AVX2 and AVX-512 paths where
    /// [`gathers`](crate::kernels::gathers) measured them faster).
    Gathering,
    /// From windows of 128 by permutes (AVX-512 VBMI and VNNI), 64 weights per step,
    /// visiting `trips` windows per step ([`trips`]).
    #[cfg_attr(
        not(target_arch = "x86_64"),
        allow(dead_code, reason = "only the x86 copies permute")
    )]
    Permuting { trips: usize },
    /// From windows of 128 by permutes (AVX-512 VBMI and VNNI, POPCNT, 16-bit columns),
    /// one step per aligned group of `windows` windows ([`group_windows`]).
    #[cfg_attr(
        not(target_arch = "x86_64"),
        allow(dead_code, reason = "only the x86 copies permute")
    )]
    Grouped { windows: usize },
}

impl Fetch {
    /// The fastest copy for `a` on `path`.
    fn on<I: SpIndex>(path: KernelPath, a: CsrView<'_, f32, I, i8>) -> Fetch {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::kernels::isa::{is, vbmi_vnni};
            if path == KernelPath::Avx512 && vbmi_vnni() {
                if is::<I, u16>()
                    && is_x86_feature_detected!("popcnt")
                    && let Some(windows) = group_windows(a)
                {
                    return Fetch::Grouped { windows };
                }
                if let Some(trips) = trips(a) {
                    return Fetch::Permuting { trips };
                }
            }
            // Gathers take signed 32-bit offsets.
            if matches!(path, KernelPath::Avx2 | KernelPath::Avx512)
                && a.ncols <= 1 << 31
                && crate::kernels::gathers(path)
            {
                return Fetch::Gathering;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (path, a);
        Fetch::Plain
    }
}

/// How many windows a step of the permuting copy should visit over `a`'s rows: the
/// fewest of 2, 4 and [`MAX_TRIPS`] whose windows, less one and a half (a step starts
/// inside a window, and runs past its average), cover the columns a step of the
/// matrix's average density spans; `None` for sparser matrices.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code, reason = "only the x86 copies permute"))]
fn trips<I: SpIndex>(a: CsrView<'_, f32, I, i8>) -> Option<usize> {
    let stored = a.indptr[a.nrows] - a.indptr[0];
    // STEP / density <= (t - 1.5) * WINDOW, multiplied out by the rows, the entries and
    // 2, in u128, which no product here overflows.
    let covers = |t: usize| {
        2 * STEP as u128 * a.ncols as u128 * a.nrows as u128
            <= (2 * t as u128 - 3) * WINDOW as u128 * stored as u128
    };
    [2, 4, MAX_TRIPS].into_iter().find(|&t| covers(t))
}

/// Entries a group of the grouped copy should hold on average, at most: 7/8 of a step,
/// so that few groups overflow into a second step.
const GROUP_FILL: usize = STEP * 7 / 8;

/// Entries a group of four windows should hold on average, at least: at fewer, each
/// step's four permutes serve too few entries, and matrices that sparse gather.
const GROUP_MIN_FILL: usize = STEP / 2;

/// How many windows a group of the grouped copy should span over `a`'s rows: 4 if
/// four windows' columns hold between [`GROUP_MIN_FILL`] and [`GROUP_FILL`] entries at
/// `a`'s average density (6.25% to 10.9% of the entries stored), 2 if two windows' hold
/// at most [`GROUP_FILL`] (up to 21.9%); `None` for denser matrices (which visit fixed
/// [`trips`]) and sparser ones (which gather).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code, reason = "only the x86 copies permute"))]
fn group_windows<I: SpIndex>(a: CsrView<'_, f32, I, i8>) -> Option<usize> {
    let stored = (a.indptr[a.nrows] - a.indptr[0]) as u128;
    let cells = a.nrows as u128 * a.ncols as u128;
    // Whether `g` windows' columns hold at most `fill` entries on average, `stored * g *
    // WINDOW / cells <= fill`, multiplied out in u128, which no product here overflows.
    let holds = |g: usize, fill: usize| stored * (g * WINDOW) as u128 <= fill as u128 * cells;
    let windows = [4, 2].into_iter().find(|&g| holds(g, GROUP_FILL))?;
    (windows == 2 || !holds(4, GROUP_MIN_FILL - 1)).then_some(windows)
}

/// `y <- alpha * A x + beta * y` for an int8 CSR matrix (`a.values` in `-127..=127`, its
/// row scales given or all 1), `x` quantized as one token.
pub(crate) fn int8_csr_spmv<I: SpIndex>(
    a: CsrView<'_, f32, I, i8>,
    alpha: f32,
    x: &[f32],
    beta: f32,
    y: &mut [f32],
) {
    debug_assert_eq!((x.len(), y.len()), (a.ncols, a.nrows));
    let path = kernel_path();
    let copy = Fetch::on(path, a);
    let token = Token::new(path, x, copy);
    for_units(a, y, |rows, out| match copy {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Fetch::on chose this copy after `vbmi_vnni` detected its features, and
        // the token's biased inputs are filled for it.
        Fetch::Permuting { trips } => unsafe {
            x86::permuting_rows(a, rows, &token, trips, alpha, beta, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Fetch::on chose this copy on the AVX2 or AVX-512 path, resolved only
        // after detecting AVX2; the token's wide inputs are filled for it.
        Fetch::Gathering => unsafe { x86::gathering_rows(a, rows, &token, alpha, beta, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Fetch::on chose this copy after `vbmi_vnni` and POPCNT were detected, for
        // 16-bit columns; the token's biased inputs are filled for it.
        Fetch::Grouped { windows } => unsafe {
            x86::grouped_rows(a, rows, &token, windows, alpha, beta, out)
        },
        _ => finish_rows(a, rows, &token, alpha, beta, out, |cols, weights| {
            plain_dot(cols, weights, &token.values)
        }),
    });
}

/// Rows `rows` of the product into `out`, each span's integer sum from `dot(columns,
/// weights)`.
#[inline(always)]
fn finish_rows<I: SpIndex>(
    a: CsrView<'_, f32, I, i8>,
    rows: Range<usize>,
    token: &Token,
    alpha: f32,
    beta: f32,
    out: &mut [f32],
    mut dot: impl FnMut(&[I], &[i8]) -> i32,
) {
    for (r, y) in rows.zip(out) {
        finish_row(a, r, token, alpha, beta, y, &mut dot);
    }
}

/// Row `r` of the product into `y`, each span's integer sum from `dot(columns, weights)`.
#[inline(always)]
fn finish_row<I: SpIndex>(
    a: CsrView<'_, f32, I, i8>,
    r: usize,
    token: &Token,
    alpha: f32,
    beta: f32,
    y: &mut f32,
    mut dot: impl FnMut(&[I], &[i8]) -> i32,
) {
    let entries = a.indptr[r]..a.indptr[r + 1];
    let (cols, weights) = (&a.indices[entries.clone()], &a.values[entries]);
    let scale = a.row_scales.map_or(1.0, |s| s[r]);
    let (mut v, mut e) = (0.0f32, 0);
    // As the batched kernel: each span's sum times the row's scale, added in order; a
    // span without entries adds nothing.
    while let Some(c) = cols.get(e) {
        let used = if a.ncols <= MAX_SPAN {
            cols.len() - e
        } else {
            let limit = (c.index() / MAX_SPAN + 1) * MAX_SPAN;
            cols[e..].partition_point(|c| c.index() < limit)
        };
        v += dot(&cols[e..e + used], &weights[e..e + used]) as f32 * scale;
        e += used;
    }
    *y = combine(alpha, v * token.scale, beta, *y);
}

/// The exact sum of `weights[e] * values[cols[e]]`, one load per stored weight.
#[inline(always)]
fn plain_dot<I: SpIndex>(cols: &[I], weights: &[i8], values: &[i16]) -> i32 {
    cols.iter().zip(weights).map(|(c, &w)| i32::from(w) * i32::from(values[c.index()])).sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{MAX_SPAN, MAX_TRIPS, STEP, Token, WINDOW, finish_row, finish_rows, plain_dot};
    use crate::index::SpIndex;
    use crate::kernels::CsrView;
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
                return unsafe {
                    _mm256_cvtepu16_epi32(_mm_loadu_si128(cols[e..].as_ptr().cast()))
                };
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
    pub(super) unsafe fn permuting_rows<I: SpIndex>(
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
            // biased inputs are filled (permuting_rows' contract); T <= MAX_TRIPS.
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
    /// token's inputs and increasing, at most [`super::MAX_SPAN`] of them): per step of
    /// 64 weights, one `vpermi2b` per window their columns reach, one `vpdpbusd`, and
    /// one `vpdpbusd` for the bias (`128 * sum(weights)`), which is taken off at the
    /// end. Steps that reach at most `T` windows (`T` > 0) visit exactly `T`: a loop of
    /// fixed length, whose end the CPU predicts, where one of as many windows as the
    /// step reaches ends at a different point each time (and each misprediction costs
    /// about as much as five windows).
    ///
    /// # Safety
    /// As [`permuting_rows`]; `T` at most [`MAX_TRIPS`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
    unsafe fn span_dot<I: SpIndex, const T: usize>(
        cols: &[I],
        weights: &[i8],
        token: &Token,
    ) -> i32 {
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

    /// How far ahead of its step, in bytes, a walk asks for its columns and weights to
    /// be fetched: about a block of [`WALKS`] rows at 90% of 4096 columns. The walks
    /// read four places at once, which the CPU's own prefetching follows less far.
    const PREFETCH: usize = 4096;

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
        windows: usize,
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
        let indices =
            unsafe { std::slice::from_raw_parts(a.indices.as_ptr().cast(), a.indices.len()) };
        let a = CsrView {
            nrows: a.nrows,
            ncols: a.ncols,
            indptr: a.indptr,
            indices,
            values: a.values,
            row_scales: a.row_scales,
        };
        // One copy per matrix, as `permuting_rows`.
        match windows {
            2 => with::<2>(a, rows, token, alpha, beta, out),
            _ => with::<4>(a, rows, token, alpha, beta, out),
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
        /// which must hold every group's windows (the columns' and [`MAX_TRIPS`] more).
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
                    let (lower, upper) = (
                        _mm512_loadu_si512(table.cast()),
                        _mm512_loadu_si512(table.add(64).cast()),
                    );
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
}

#[cfg(test)]
mod tests {
    use nalgebra::DMatrix;
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::int8::fixture::Fixture;

    /// The product (alpha 1, beta 0) by one copy, as bits; `None` where the CPU lacks it.
    fn by_copy<I: SpIndex>(copy: Fetch, a: CsrView<'_, f32, I, i8>, x: &[f32]) -> Option<Vec<u32>> {
        let path = KernelPath::resolve(KernelPath::Avx512);
        let token = Token::new(path, x, copy);
        let mut y = vec![f32::NAN; a.nrows];
        let rows = 0..a.nrows;
        match copy {
            Fetch::Plain => finish_rows(a, rows, &token, 1.0, 0.0, &mut y, |cols, weights| {
                plain_dot(cols, weights, &token.values)
            }),
            #[cfg(target_arch = "x86_64")]
            Fetch::Gathering if is_x86_feature_detected!("avx2") => {
                // SAFETY: AVX2 was detected; the token's wide inputs are filled.
                unsafe { x86::gathering_rows(a, rows, &token, 1.0, 0.0, &mut y) }
            }
            #[cfg(target_arch = "x86_64")]
            Fetch::Grouped { windows }
                if crate::kernels::isa::vbmi_vnni()
                    && is_x86_feature_detected!("popcnt")
                    && crate::kernels::isa::is::<I, u16>() =>
            {
                // SAFETY: the copy's features were detected and the columns are u16; the
                // biased inputs are filled.
                unsafe { x86::grouped_rows(a, rows, &token, windows, 1.0, 0.0, &mut y) }
            }
            #[cfg(target_arch = "x86_64")]
            Fetch::Permuting { trips } if crate::kernels::isa::vbmi_vnni() => {
                // SAFETY: vbmi_vnni detected the copy's features; the biased inputs are filled.
                unsafe { x86::permuting_rows(a, rows, &token, trips, 1.0, 0.0, &mut y) }
            }
            _ => return None,
        }
        Some(y.iter().map(|v| v.to_bits()).collect())
    }

    const COPIES: [Fetch; 8] = [
        Fetch::Plain,
        Fetch::Gathering,
        Fetch::Permuting { trips: 2 },
        Fetch::Permuting { trips: 4 },
        Fetch::Permuting { trips: MAX_TRIPS },
        Fetch::Grouped { windows: 2 },
        Fetch::Grouped { windows: 4 },
        Fetch::Grouped { windows: MAX_TRIPS },
    ];

    fn activations(cols: usize, seed: u64) -> Vec<f32> {
        (0..cols)
            .map(|c| {
                let k = (c as u64 * 31 + seed) % 97;
                if k.is_multiple_of(6) { 0.0 } else { (k as f32 - 48.0) * 0.01 }
            })
            .collect()
    }

    fn check<I: SpIndex>(
        nrows: usize,
        ncols: usize,
        density: f64,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let f = Fixture::<I>::new(nrows, ncols, density, seed);
        let x = activations(ncols, seed);
        let want = f.reference(&DMatrix::from_column_slice(x.len(), 1, &x));
        for copy in COPIES {
            if let Some(got) = by_copy(copy, f.view(), &x) {
                prop_assert_eq!(&got, &want, "{:?} bits, {} columns", copy, I::BITS);
            }
        }
        Ok(())
    }

    proptest! {
        /// Every copy gives the dense int8 reference's bits, with 16- and 32-bit columns,
        /// at densities from rows of a few entries to full rows, widths that end inside
        /// a window and rows longer than a step.
        #[test]
        fn every_copy_equals_the_dense_reference(
            (nrows, ncols) in (1usize..12, 1usize..700),
            density in prop_oneof![0.0f64..0.1, 0.1f64..1.0],
            seed in any::<u64>(),
        ) {
            check::<u16>(nrows, ncols, density, seed)?;
            check::<u32>(nrows, ncols, density, seed)?;
        }
    }

    /// Rows wider than [`MAX_SPAN`] columns are summed per span, as the dense reference
    /// sums them, on every copy: one row of 140 000 weights of 127 against inputs that
    /// quantize to 127 (near the largest sums a span can hold, biased or not), and one
    /// of alternating signs.
    #[test]
    fn wide_rows_are_summed_per_span_of_columns() {
        let ncols = 140_000;
        let mut f = Fixture::<u32>::new(2, ncols, 1.0, 5);
        for (k, v) in f.values.iter_mut().enumerate() {
            *v = if k < ncols || k % 2 == 0 { 127 } else { -127 };
        }
        let x = vec![1.0f32; ncols];
        let want = f.reference(&DMatrix::from_column_slice(x.len(), 1, &x));
        for copy in COPIES {
            if let Some(got) = by_copy(copy, f.view(), &x) {
                assert_eq!(got, want, "{copy:?}");
            }
        }
    }

    /// Steps visit fewer windows as rows get denser, and matrices whose steps would
    /// reach more than [`MAX_TRIPS`] windows do not permute.
    #[test]
    fn trips_follow_the_density() {
        let trips = |density| trips(Fixture::<u16>::new(64, 2048, density, 3).view());
        assert_eq!(trips(1.0), Some(2));
        assert_eq!(trips(0.5), Some(4));
        assert_eq!(trips(0.25), Some(4));
        assert_eq!(trips(0.1), Some(MAX_TRIPS));
        assert_eq!(trips(0.05), None);
        assert_eq!(trips(0.0), None);
    }

    /// Groups of four windows at 90% sparsity, two from 78% to 89%; denser matrices step
    /// (as `trips` says), and sparser ones than 93.75% gather.
    #[test]
    fn group_windows_follow_the_density() {
        let windows = |density| group_windows(Fixture::<u16>::new(64, 4096, density, 3).view());
        assert_eq!(windows(0.1), Some(4));
        assert_eq!(windows(0.07), Some(4));
        assert_eq!(windows(0.12), Some(2));
        assert_eq!(windows(0.2), Some(2));
        assert_eq!(windows(0.3), None);
        assert_eq!(windows(0.05), None);
        assert_eq!(windows(0.0), None);
    }

    /// A token with a NaN makes every output NaN (its scale is NaN); one of zeros makes
    /// zeros.
    #[test]
    fn special_tokens() {
        let f = Fixture::<u16>::new(5, 300, 0.3, 4);
        let mut x = activations(300, 4);
        for copy in COPIES {
            let Some(zeros) = by_copy(copy, f.view(), &[0.0; 300]) else { continue };
            assert!(zeros.iter().all(|&v| f32::from_bits(v) == 0.0), "{copy:?}");
            x[17] = f32::NAN;
            let nan = by_copy(copy, f.view(), &x).unwrap_or_default();
            assert!(nan.iter().all(|&v| f32::from_bits(v).is_nan()), "{copy:?}");
            x[17] = 0.5;
        }
    }
}
