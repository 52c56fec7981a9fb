//! Int8 CSR products against one token in integers: `y <- alpha * A x + beta * y` where
//! `A` stores int8 weights with a scale per row and `x` is quantized as one token, as
//! [`super::quantize_columns`] quantizes a column (the same scale and values).
//!
//! Each output is `xs * sum_s(scale_r * dot_s)`, where `dot_s` is the exact 32-bit
//! integer sum of the row's stored weights times their quantized inputs over a span of
//! [`MAX_SPAN`](super::MAX_SPAN) columns: the float steps of the batched kernel
//! ([`super::csr`]), so a product gives the bits of that kernel's output for the same
//! token in a batch.
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
//! - the grouped copy (16-bit columns, densities of about 6% to 22%, 90% sparsity among
//!   them) steps through aligned groups of two or four windows, one step per group's
//!   entries, and walks four rows at once, since where each step starts depends on the
//!   last;
//! - the stepping copy (denser matrices, and 32-bit columns) takes 64 weights per step
//!   and visits a fixed number of windows from the first one's (a loop whose end the CPU
//!   predicts).
//!
//! Sparser matrices, whose steps would serve too few weights per window, gather.

use std::ops::Range;

use super::{column_scale_into, quantize_run, span_len};
use crate::index::SpIndex;
use crate::kernels::isa::ACTIVATION_BIAS;
use crate::kernels::{CsrView, KernelPath, combine, for_units, kernel_path};

/// Inputs per window: the two 64-byte vectors one `vpermi2b` picks from.
const WINDOW: usize = 128;

/// The alignment of the biased inputs.
const CACHE_LINE: usize = 64;

/// The most windows a step of the stepping copy visits in a fixed loop, however few it
/// reaches (a step that reaches more visits those it reaches): the biased inputs are
/// padded with as many more. Matrices sparse enough that a step reaches more, on
/// average, run the gathering or plain copy, which costs less per stored weight there.
const MAX_TRIPS: usize = 8;

/// Stored weights per step of the stepping copy: one 64-byte vector of them.
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
    /// [`MAX_TRIPS`] more: filled only for the copies that permute.
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
        if matches!(copy, Fetch::Stepping { .. } | Fetch::Grouped(_)) {
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
    Stepping { trips: usize },
    /// From windows of 128 by permutes (AVX-512 VBMI and VNNI, POPCNT, 16-bit columns),
    /// one step per aligned group of windows ([`group_windows`]).
    #[cfg_attr(
        not(target_arch = "x86_64"),
        allow(dead_code, reason = "only the x86 copies permute")
    )]
    Grouped(GroupWidth),
}

/// How many windows a group of the grouped copy spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code, reason = "only the x86 copies permute"))]
enum GroupWidth {
    Two,
    Four,
}

impl Fetch {
    /// The fastest copy for `a` on `path`.
    fn on<I: SpIndex>(path: KernelPath, a: CsrView<'_, f32, I, i8>) -> Fetch {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::kernels::isa::{is, vbmi_vnni};
            if path == KernelPath::Avx512 && vbmi_vnni() {
                if is::<I, u16>()
                    && let Some(width) = group_windows(a)
                {
                    return Fetch::Grouped(width);
                }
                if let Some(trips) = trips(a) {
                    return Fetch::Stepping { trips };
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

/// How many windows a step of the stepping copy should visit over `a`'s rows: the
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

/// How many windows a group of the grouped copy should span over `a`'s rows: four if
/// four windows' columns hold from [`GROUP_MIN_FILL`] to [`GROUP_FILL`] entries at `a`'s
/// average density (6.25% to 10.9% of the entries stored), two if two windows' hold at
/// most [`GROUP_FILL`] (up to 21.9%); `None` for denser matrices (which visit fixed
/// [`trips`]) and sparser ones (which gather).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code, reason = "only the x86 copies permute"))]
fn group_windows<I: SpIndex>(a: CsrView<'_, f32, I, i8>) -> Option<GroupWidth> {
    let stored = (a.indptr[a.nrows] - a.indptr[0]) as u128;
    let cells = a.nrows as u128 * a.ncols as u128;
    // `g` windows' columns' entries on average, `stored * g * WINDOW / cells`, against
    // `fill`, multiplied out in u128, which no product here overflows.
    let entries = |g: usize| stored * (g * WINDOW) as u128;
    let fill = |fill: usize| fill as u128 * cells;
    if entries(4) <= fill(GROUP_FILL) {
        (entries(4) >= fill(GROUP_MIN_FILL)).then_some(GroupWidth::Four)
    } else {
        (entries(2) <= fill(GROUP_FILL)).then_some(GroupWidth::Two)
    }
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
        Fetch::Stepping { trips } => unsafe {
            x86::stepping_rows(a, rows, &token, trips, alpha, beta, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Fetch::on chose this copy on the AVX2 or AVX-512 path, resolved only
        // after detecting AVX2; the token's wide inputs are filled for it.
        Fetch::Gathering => unsafe { x86::gathering_rows(a, rows, &token, alpha, beta, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Fetch::on chose this copy after `vbmi_vnni` detected its features, for
        // 16-bit columns; the token's biased inputs are filled for it.
        Fetch::Grouped(width) => unsafe {
            x86::grouped_rows(a, rows, &token, width, alpha, beta, out)
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
    while e < cols.len() {
        let used = span_len(&cols[e..], a.ncols);
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
mod x86;

#[cfg(test)]
mod tests {
    use nalgebra::DMatrix;
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::int8::MAX_SPAN;
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
            Fetch::Grouped(width)
                if crate::kernels::isa::vbmi_vnni() && crate::kernels::isa::is::<I, u16>() =>
            {
                // SAFETY: the copy's features were detected and the columns are u16; the
                // biased inputs are filled.
                unsafe { x86::grouped_rows(a, rows, &token, width, 1.0, 0.0, &mut y) }
            }
            #[cfg(target_arch = "x86_64")]
            Fetch::Stepping { trips } if crate::kernels::isa::vbmi_vnni() => {
                // SAFETY: vbmi_vnni detected the copy's features; the biased inputs are filled.
                unsafe { x86::stepping_rows(a, rows, &token, trips, 1.0, 0.0, &mut y) }
            }
            _ => return None,
        }
        Some(y.iter().map(|v| v.to_bits()).collect())
    }

    const COPIES: [Fetch; 7] = [
        Fetch::Plain,
        Fetch::Gathering,
        Fetch::Stepping { trips: 2 },
        Fetch::Stepping { trips: 4 },
        Fetch::Stepping { trips: MAX_TRIPS },
        Fetch::Grouped(GroupWidth::Two),
        Fetch::Grouped(GroupWidth::Four),
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
        assert_eq!(windows(0.1), Some(GroupWidth::Four));
        assert_eq!(windows(0.07), Some(GroupWidth::Four));
        assert_eq!(windows(0.12), Some(GroupWidth::Two));
        assert_eq!(windows(0.2), Some(GroupWidth::Two));
        assert_eq!(windows(0.3), None);
        assert_eq!(windows(0.05), None);
        assert_eq!(windows(0.0), None);
        // The bounds exactly, on one row of 1024 columns (a group of four windows holds
        // half the row's entries, one of two a quarter).
        let at = |stored: usize| {
            let indptr = [0, stored];
            let view = CsrView::<'_, f32, u16, i8> {
                nrows: 1,
                ncols: 1024,
                indptr: &indptr,
                indices: &[],
                values: &[],
                row_scales: None,
            };
            group_windows(view)
        };
        assert_eq!(at(63), None);
        assert_eq!(at(64), Some(GroupWidth::Four));
        assert_eq!(at(112), Some(GroupWidth::Four));
        assert_eq!(at(113), Some(GroupWidth::Two));
        assert_eq!(at(224), Some(GroupWidth::Two));
        assert_eq!(at(225), None);
    }

    /// Columns at the top of the 16-bit range, where a group's last high byte is 255
    /// and the inputs' padding ends at 2^16 + 8 windows: every copy on rows whose
    /// columns are shifted up against the end.
    fn shifted(f: Fixture<u16>, offset: usize) -> Fixture<u16> {
        let indices = f.indices.iter().map(|&c| c + offset as u16).collect();
        Fixture { ncols: f.ncols + offset, indices, ..f }
    }

    proptest! {
        #[test]
        fn copies_at_the_top_of_sixteen_bits(
            nrows in 1usize..10,
            width in 1usize..1200,
            gap in prop_oneof![Just(0usize), 1usize..300],
            density in 0.05f64..1.0,
            seed in any::<u64>(),
        ) {
            let f = shifted(Fixture::new(nrows, width, density, seed), MAX_SPAN - width - gap);
            let x = activations(f.ncols, seed);
            let want = f.reference(&DMatrix::from_column_slice(x.len(), 1, &x));
            for copy in COPIES {
                if let Some(got) = by_copy(copy, f.view(), &x) {
                    prop_assert_eq!(&got, &want, "{:?}", copy);
                }
            }
        }
    }

    /// 16-bit rows of 2^16 weights of 127 against inputs of 127 (the largest sums a
    /// row can hold), five of them (a block of four walks and one more), and rows of
    /// every shape in one block: empty, one group of 600 entries, only the last column,
    /// exactly 64 entries, 65, empty again, one; and a range of rows that starts inside
    /// the matrix, as threads split it.
    #[test]
    fn sixteen_bit_rows_at_the_bounds() {
        let mut f = Fixture::<u16>::new(5, MAX_SPAN, 1.0, 5);
        for (k, v) in f.values.iter_mut().enumerate() {
            *v = if k < 3 * MAX_SPAN || k % 2 == 0 { 127 } else { -127 };
        }
        let x = vec![1.0f32; MAX_SPAN];
        let want = f.reference(&DMatrix::from_column_slice(MAX_SPAN, 1, &x));
        for copy in COPIES {
            if let Some(got) = by_copy(copy, f.view(), &x) {
                assert_eq!(got, want, "{copy:?}");
            }
        }
        let ncols = 2048;
        let rows: [Vec<u16>; 7] = [
            vec![],
            (0..600).map(|c| 1024 + c).collect(),
            vec![2047],
            (0..64).map(|c| 3 * c).collect(),
            (0..65).map(|c| 5 * c).collect(),
            vec![],
            vec![700],
        ];
        let mut indptr = vec![0];
        for row in &rows {
            indptr.push(indptr[indptr.len() - 1] + row.len());
        }
        let stored = indptr[rows.len()];
        let f = Fixture {
            nrows: rows.len(),
            ncols,
            indptr,
            indices: rows.concat(),
            values: (0..stored).map(|k| ((k * 37 % 255) as i64 - 127) as i8).collect(),
            scales: (0..rows.len()).map(|r| 1e-3 + r as f32 * 1e-4).collect(),
        };
        let x = activations(ncols, 9);
        let want = f.reference(&DMatrix::from_column_slice(ncols, 1, &x));
        for copy in COPIES {
            if let Some(got) = by_copy(copy, f.view(), &x) {
                assert_eq!(got, want, "{copy:?}");
            }
        }
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::isa::vbmi_vnni() {
            let path = KernelPath::resolve(KernelPath::Avx512);
            let token = Token::new(path, &x, Fetch::Grouped(GroupWidth::Four));
            let mut y = vec![f32::NAN; 5];
            // SAFETY: the copy's features were detected, the columns are u16 and the
            // biased inputs are filled.
            unsafe {
                x86::grouped_rows(f.view(), 1..6, &token, GroupWidth::Four, 1.0, 0.0, &mut y)
            };
            let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want[1..6]);
        }
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
