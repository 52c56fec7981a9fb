//! The sparse kernels and their one dispatch point.
//!
//! Each kernel is written once, generic over the element and index types, as an
//! `#[inline(always)]` row routine. [`KernelPath`] picks, once per process, which
//! compiled copy runs: the same generic code compiled with AVX-512, with AVX2+FMA (and
//! F16C, which every AVX2 CPU has, for half-precision values), with
//! NEON lane loads (aarch64), or for the baseline target (always available). Users get
//! SIMD from a plain `cargo build --release`, with no `RUSTFLAGS`.
//! `SHEARS_KERNEL=portable|avx2|avx512|neon` forces a path (falling back to the best one
//! the CPU supports) for testing.
//!
//! Every path evaluates the same arithmetic in the same order (explicit accumulator
//! lanes), so all the paths a CPU can run, and all thread counts, give bit-identical
//! results. The batched tiles use fused multiply-adds (`mul_add`, correctly rounded):
//! one instruction on the AVX2+FMA and AVX-512 paths and on aarch64. An x86-64 CPU
//! without FMA can only run the portable path, and there the tiles multiply and add
//! instead ([`isa::PortableUnfused`]), because emulating the fused result in software
//! costs an order of magnitude; its results can differ from an FMA machine's in
//! the last bits, as any two BLAS libraries' do. Products that stream their operands
//! (batch 1) gain nothing from FMA and use a multiply and an add everywhere.
//!
//! Two loads the compiler will not vectorise without CPU-specific tuning are written
//! with intrinsics in [`isa`], behind one generic function each: the batch-1 kernels'
//! gather from `x` (AVX2 `vgatherdps`/`vgatherdpd`; on aarch64, which has no gather,
//! NEON lane loads straight into the vector registers; on x86, whether gathers or lane
//! loads run is measured at first use, see [`gathers`]) and the 2:4 window permutes (AVX2
//! `vpermps` over 16 columns, AVX-512 `vpermt2ps` over 32). Each kernel body takes its
//! copy's [`isa::Isa`] marker as a type parameter, so the intrinsics appear only in the
//! copies whose CPU has them.
//!
//! This module is the only place in shears that contains `unsafe`: calling a
//! `#[target_feature]` function, after checking the CPU has the feature; the intrinsics
//! in [`isa`] and in the int8 kernels' x86 code (`int8/packed.rs`, `int8/csr.rs`), whose
//! loads go through raw pointers; and unchecked indexing into `x` with column indices the
//! format's validator has bounded.

#![allow(unsafe_code)]

mod int8;
mod isa;
mod nm_lanes;
mod nm_rows;
mod scratch;
mod spmm;
mod spmv;

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;
use shears_core::Scalar;

pub(crate) use int8::{
    INTEGER_MIN_BATCH, Int8DenseView, PackedWeights, int8_csr_spmm, int8_csr_spmv,
    int8_dense_product, int8_nm_product, scale_of_max,
};
pub(crate) use nm_rows::nm_spmm;
pub(crate) use spmm::{bsr_spmm, csr_spmm, sell_spmm};
pub(crate) use spmv::{bsr_spmv, csr_spmv, nm_spmv, sell_spmv};

/// Which compiled copy of the kernels runs.
///
/// Every variant exists on every architecture, so code that names one compiles
/// everywhere; a path of another architecture is never [supported](KernelPath::resolve)
/// and resolves to the best one below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KernelPath {
    /// The baseline target's instructions (SSE2 on x86-64, NEON on aarch64, which the
    /// compiler uses where it vectorises on its own), always available.
    Portable,
    /// AVX2, FMA and F16C (x86-64).
    Avx2,
    /// AVX-512F (x86-64).
    Avx512,
    /// NEON with explicit lane loads for the batch-1 kernels' indexed reads (aarch64,
    /// where every CPU has it).
    Neon,
}

impl KernelPath {
    fn supported(self) -> bool {
        match self {
            KernelPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            // F16C (half-precision conversion) came before AVX2 on every x86 CPU, and the
            // copies use it for `f16` values.
            KernelPath::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            // The AVX-512 copies are compiled with AVX2, FMA and F16C too, and a virtual
            // CPU may report the features separately.
            KernelPath::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "aarch64")]
            KernelPath::Neon => true,
            _ => false,
        }
    }

    /// Fastest first: the order [`KernelPath::resolve`] falls back along.
    const ORDER: [KernelPath; 4] =
        [KernelPath::Avx512, KernelPath::Avx2, KernelPath::Neon, KernelPath::Portable];

    fn best() -> Self {
        Self::ORDER.into_iter().find(|p| p.supported()).unwrap_or(KernelPath::Portable)
    }

    /// Parses a `SHEARS_KERNEL` value.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "portable" => Some(KernelPath::Portable),
            "avx2" => Some(KernelPath::Avx2),
            "avx512" => Some(KernelPath::Avx512),
            "neon" => Some(KernelPath::Neon),
            _ => None,
        }
    }

    /// The path a request resolves to on this CPU: the request if supported, else the
    /// best supported one below it.
    pub fn resolve(requested: KernelPath) -> Self {
        let start = Self::ORDER.iter().position(|&p| p == requested).unwrap_or(0);
        Self::ORDER[start..].iter().copied().find(|p| p.supported()).unwrap_or(KernelPath::Portable)
    }
}

/// Every path, each resolved to what runs it on this CPU: for tests that hold on all.
#[cfg(test)]
pub(crate) fn all_paths() -> [KernelPath; 4] {
    [KernelPath::Portable, KernelPath::Avx2, KernelPath::Avx512, KernelPath::Neon]
        .map(KernelPath::resolve)
}

/// The kernel path in use: `SHEARS_KERNEL` if set and valid, else the best the CPU has.
pub fn kernel_path() -> KernelPath {
    static PATH: OnceLock<KernelPath> = OnceLock::new();
    *PATH.get_or_init(|| {
        std::env::var("SHEARS_KERNEL")
            .ok()
            .and_then(|v| KernelPath::from_name(&v))
            .map_or_else(KernelPath::best, KernelPath::resolve)
    })
}

/// Defines `$name(path, args..)`, which runs the `#[inline(always)]` generic `$kernel`
/// compiled for the given [`KernelPath`]: one wrapper per instruction set, all calling the
/// same body, so the compiler vectorises it for each. The body's first type parameter is
/// the [`isa::Isa`] marker of the copy, for the intrinsics the compiler does not emit.
///
/// A `gathering` kernel (one that calls [`isa::gather_mul_add8`]) gets a second copy of
/// each x86 vector path that loads one element at a time ([`isa::LaneLoads`]), and runs
/// the one [`gathers`] measured faster on this CPU.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$($g:ident : $bound:path),*>($($arg:ident : $ty:ty),* $(,)?) => $kernel:ident) => {
        $crate::kernels::multiversion!(@define false $(#[$meta])* ($vis) fn $name<$($g: $bound),*>($($arg: $ty),*) => $kernel);
    };
    ($(#[$meta:meta])* gathering fn $name:ident<$($g:ident : $bound:path),*>($($arg:ident : $ty:ty),* $(,)?) => $kernel:ident) => {
        $crate::kernels::multiversion!(@define true $(#[$meta])* () fn $name<$($g: $bound),*>($($arg: $ty),*) => $kernel);
    };
    (@define $gathering:literal $(#[$meta:meta])* ($($vis:tt)*) fn $name:ident<$($g:ident : $bound:path),*>($($arg:ident : $ty:ty),*) => $kernel:ident) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments, reason = "mirrors the kernel's own signature")]
        $($vis)* fn $name<$($g: $bound),*>(path: $crate::kernels::KernelPath, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::kernels::isa;
                #[target_feature(enable = "avx512f,avx2,fma,f16c")]
                #[allow(clippy::too_many_arguments, reason = "mirrors the kernel's own signature")]
                fn avx512<Q: isa::Isa, $($g: $bound),*>($($arg: $ty),*) {
                    $kernel::<Q, $($g),*>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                #[allow(clippy::too_many_arguments, reason = "mirrors the kernel's own signature")]
                fn avx2<Q: isa::Isa, $($g: $bound),*>($($arg: $ty),*) {
                    $kernel::<Q, $($g),*>($($arg),*)
                }
                match path {
                    $crate::kernels::KernelPath::Avx512 => {
                        // (A constant condition: kernels that never gather get no copy.)
                        if $gathering && !$crate::kernels::gathers(path) {
                            // SAFETY: as below.
                            return unsafe {
                                avx512::<isa::LaneLoads<isa::Avx512>, $($g),*>($($arg),*)
                            };
                        }
                        // SAFETY: KernelPath::Avx512 is only ever resolved after detecting
                        // avx512f, avx2, fma and f16c (KernelPath::supported).
                        unsafe { avx512::<isa::Avx512, $($g),*>($($arg),*) }
                    }
                    $crate::kernels::KernelPath::Avx2 => {
                        // (A constant condition: kernels that never gather get no copy.)
                        if $gathering && !$crate::kernels::gathers(path) {
                            // SAFETY: as below.
                            return unsafe {
                                avx2::<isa::LaneLoads<isa::Avx2>, $($g),*>($($arg),*)
                            };
                        }
                        // SAFETY: KernelPath::Avx2 is only ever resolved after detecting
                        // avx2, fma and f16c.
                        unsafe { avx2::<isa::Avx2, $($g),*>($($arg),*) }
                    }
                    // Portable, and the paths of other architectures (never resolved here).
                    _ if isa::portable_fuses() => $kernel::<isa::Portable, $($g),*>($($arg),*),
                    _ => $kernel::<isa::PortableUnfused, $($g),*>($($arg),*),
                }
            }
            #[cfg(target_arch = "aarch64")]
            {
                match path {
                    $crate::kernels::KernelPath::Neon => {
                        $kernel::<$crate::kernels::isa::Neon, $($g),*>($($arg),*)
                    }
                    _ => $kernel::<$crate::kernels::isa::Portable, $($g),*>($($arg),*),
                }
            }
            #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
            {
                let _ = path;
                $kernel::<$crate::kernels::isa::Portable, $($g),*>($($arg),*)
            }
        }
    };
}
pub(crate) use multiversion;

/// Whether the batch-1 kernels on `path` (an x86 vector path) load their indexed inputs
/// with gather instructions rather than one element at a time: `SHEARS_GATHER=on|off` if
/// set, else whichever of the two copies runs a small CSR product faster on this CPU,
/// measured once per path and process (about 2 ms; gathers must win by 5%). Both copies compute the
/// same bits, so the choice changes speed only.
pub(crate) fn gathers(path: KernelPath) -> bool {
    static AVX2: OnceLock<bool> = OnceLock::new();
    static AVX512: OnceLock<bool> = OnceLock::new();
    let cell = if path == KernelPath::Avx512 { &AVX512 } else { &AVX2 };
    *cell.get_or_init(|| {
        match std::env::var("SHEARS_GATHER").ok().map(|v| v.trim().to_ascii_lowercase()).as_deref()
        {
            Some("on" | "1") => true,
            Some("off" | "0") => false,
            _ => spmv::gather_is_faster(path),
        }
    })
}

/// Whether the batch-1 kernels of the [`kernel_path`] in use gather (AVX2 or AVX-512
/// gather instructions) or load one element at a time, the faster of the two on this CPU
/// (measured once; `SHEARS_GATHER=on|off` forces it). Always false on paths without
/// gather instructions.
pub fn uses_gathers() -> bool {
    matches!(kernel_path(), KernelPath::Avx2 | KernelPath::Avx512) && gathers(kernel_path())
}

/// The kernel path in use, how its batch-1 kernels load indexed inputs, on AVX-512 and
/// AVX2 how its batched `f32` N:M products pick their inputs (a permute per product or a
/// load, the faster on this CPU; on AVX2 at batches of 512 columns or more) and, where
/// the int8 kernels run VNNI instructions (and int8 CSR looks its inputs up with VBMI
/// permutes), which, for reports: `Avx2, gathers`, `Avx512, gathers, N:M by permutes,
/// AVX-512 VNNI`, `Avx512, lane loads, N:M by loads, AVX-512 VNNI and VBMI`,
/// `Avx2, lane loads, N:M by loads, AVX-VNNI`, `Portable, lane loads`.
pub fn kernel_description() -> String {
    let path = kernel_path();
    let mut loads = if uses_gathers() { "gathers" } else { "lane loads" }.to_owned();
    if matches!(path, KernelPath::Avx512 | KernelPath::Avx2) {
        let nm = if nm_lanes::runs_here(path) { "permutes" } else { "loads" };
        loads.push_str(&format!(", N:M by {nm}"));
    }
    let vnni = match path {
        _ if !int8::vnni_copy_runs(path) => "",
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512 if isa::vbmi_vnni() => ", AVX-512 VNNI and VBMI",
        KernelPath::Avx512 => ", AVX-512 VNNI",
        _ => ", AVX-VNNI",
    };
    format!("{path:?}, {loads}{vnni}")
}

/// Rows per sliced-ELLPACK slice: one lane each of an eight-lane vector. Part of the
/// format's definition (and of its stored bytes, versioned by
/// [`SPARSE_FORMAT_VERSION`](crate::SPARSE_FORMAT_VERSION)), not a tuning constant.
pub const SLICE_ROWS: usize = 8;

/// Work (stored entries times batch) below which threads cost more than they save.
///
/// Waking rayon's sleeping workers costs tens of microseconds on a virtual machine, so a
/// product is split only when it is a few hundred microseconds of work; smaller ones run
/// faster on the calling thread.
const PARALLEL_WORK: usize = 1 << 20;

/// A value type a format stores, read as the kernels' arithmetic type `T`: `T` itself, or
/// a narrower one widened exactly on load (`bf16` and `f16` to `f32`, and `i8`, whose
/// matrices carry a scale per row).
pub(crate) trait Stored<T>: Copy + Send + Sync + 'static {
    /// The value as `T`, exactly, for any value a format holds (finite: formats check
    /// that at construction).
    fn get(self) -> T;

    /// `values` as `T`s without a copy, when they already are.
    #[inline(always)]
    fn as_compute(values: &[Self]) -> Option<&[T]> {
        let _ = values;
        None
    }

    /// Eight values as `T`, exactly as [`Stored::get`] gives them, on the copy `P` (which
    /// may have an instruction for it).
    #[inline(always)]
    fn widen8<P: isa::Isa>(values: &[Self; 8]) -> [T; 8] {
        values.map(Self::get)
    }

    /// Appends `values` as `T`s to `out`, eight at a time through [`Stored::widen8`].
    #[inline(always)]
    fn widen_into<P: isa::Isa>(values: &[Self], out: &mut Vec<T>) {
        let (eights, rest) = values.as_chunks::<8>();
        for eight in eights {
            out.extend(Self::widen8::<P>(eight));
        }
        out.extend(rest.iter().map(|v| v.get()));
    }

    /// `values` as `T`s: themselves when they are ([`Stored::as_compute`]), else
    /// widened into `buffer` (cleared first), whose allocation a loop reuses.
    #[inline(always)]
    fn as_compute_in<'a, P: isa::Isa>(values: &'a [Self], buffer: &'a mut Vec<T>) -> &'a [T] {
        match Self::as_compute(values) {
            Some(values) => values,
            None => {
                buffer.clear();
                Self::widen_into::<P>(values, buffer);
                buffer
            }
        }
    }
}

impl<T: Scalar> Stored<T> for T {
    #[inline(always)]
    fn get(self) -> T {
        self
    }

    #[inline(always)]
    fn as_compute(values: &[T]) -> Option<&[T]> {
        Some(values)
    }
}

impl Stored<f32> for half::bf16 {
    #[inline(always)]
    fn get(self) -> f32 {
        // bf16 is the top half of an f32: the shift is the exact conversion, and it
        // vectorises (half's own `to_f32` keeps NaN payload handling out of the loop).
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

impl Stored<f32> for half::f16 {
    /// One `vcvtph2ps` on the x86 vector copies ([`isa::widen_f16`]).
    #[inline(always)]
    fn widen8<P: isa::Isa>(values: &[Self; 8]) -> [f32; 8] {
        isa::widen_f16::<P>(&values.map(half::f16::to_bits), |bits| {
            half::f16::from_bits(bits).get()
        })
    }

    #[inline(always)]
    fn get(self) -> f32 {
        // Formats hold finite f16 values only (checked at construction); for those the
        // conversion is integer arithmetic and a select, which vectorises on every
        // instruction set (half's `to_f32` is a call per value). A normal f16's exponent
        // and mantissa, moved into an f32's place, need the exponent rebiased (+112). A
        // subnormal's (or zero's) mantissa m stands for m * 2^-24: as the f32 2^-14 * (1
        // + m * 2^-10) minus 2^-14, exact (both are f32 normals, so no subnormal operand
        // slows the subtraction).
        const REBIAS: u32 = (127 - 15) << 23;
        const TWO_POW_MINUS_14: u32 = (127 - 14) << 23;
        let bits = u32::from(self.to_bits());
        let magnitude = (bits & 0x7fff) << 13;
        let normal = magnitude + REBIAS;
        let subnormal = (f32::from_bits(magnitude + TWO_POW_MINUS_14)
            - f32::from_bits(TWO_POW_MINUS_14))
        .to_bits();
        let widened = if magnitude < (1 << 23) { subnormal } else { normal };
        f32::from_bits(widened | ((bits & 0x8000) << 16))
    }
}

impl Stored<f32> for i8 {
    #[inline(always)]
    fn get(self) -> f32 {
        f32::from(self)
    }
}

/// A borrowed, validated CSR matrix whose values are stored as `V` (by default `T`), with
/// an optional scale per row that multiplies the row's dot product (quantized values).
#[derive(Clone, Copy)]
pub(crate) struct CsrView<'a, T, I, V = T> {
    pub(crate) nrows: usize,
    pub(crate) ncols: usize,
    pub(crate) indptr: &'a [usize],
    pub(crate) indices: &'a [I],
    pub(crate) values: &'a [V],
    /// `nrows` scales, or `None` for 1.
    pub(crate) row_scales: Option<&'a [T]>,
}

/// An N:M test matrix with narrow values (and, when `scaled`, a distinct scale per row),
/// shared by the batch-1 and batched kernels' tests, with the f32 values it stands for.
#[cfg(test)]
pub(crate) struct NarrowNmFixture<V> {
    pub(crate) nrows: usize,
    pub(crate) ncols: usize,
    pub(crate) n: usize,
    pub(crate) m: usize,
    positions: Vec<u8>,
    values: Vec<V>,
    scales: Option<Vec<f32>>,
    /// The values widened (and scaled): what the view stands for.
    pub(crate) widened: Vec<f32>,
}

#[cfg(test)]
impl<V: Stored<f32>> NarrowNmFixture<V> {
    pub(crate) fn new(
        (nrows, ncols): (usize, usize),
        (n, m): (usize, usize),
        narrow: impl Fn(f32) -> V,
        scaled: bool,
    ) -> Self {
        let per_row = ncols.div_ceil(m) * n;
        let positions: Vec<u8> = (0..nrows * per_row)
            .map(|k| {
                let (g, slot) = ((k % per_row) / n, k % n);
                ((slot + k / per_row + g) % m.min(ncols - g * m)) as u8
            })
            .collect();
        let values =
            (0..nrows * per_row).map(|k| narrow((k as f32 * 0.37).sin() * 100.0)).collect();
        let scales = scaled.then(|| (0..nrows).map(|r| 0.01 + r as f32 * 1e-3).collect());
        let mut fixture =
            NarrowNmFixture { nrows, ncols, n, m, positions, values, scales, widened: Vec::new() };
        let mut widened = Vec::new();
        for r in 0..nrows {
            fixture.view().widen_row_into(r, &mut widened);
        }
        fixture.widened = widened;
        fixture
    }

    pub(crate) fn view(&self) -> NmView<'_, f32, V> {
        NmView {
            nrows: self.nrows,
            ncols: self.ncols,
            n: self.n,
            m: self.m,
            values: &self.values,
            positions: &self.positions,
            row_scales: self.scales.as_deref(),
        }
    }

    /// The f32 matrix the view stands for.
    pub(crate) fn widened_view(&self) -> NmView<'_, f32> {
        NmView {
            nrows: self.nrows,
            ncols: self.ncols,
            n: self.n,
            m: self.m,
            values: &self.widened,
            positions: &self.positions,
            row_scales: None,
        }
    }
}

/// A CSR test matrix with narrow values, shared by the batch-1 and batched kernels'
/// tests: rows of every length over `ncols` columns, values over two decades, and (when
/// `scaled`) a distinct scale per row.
#[cfg(test)]
pub(crate) struct NarrowFixture<V> {
    nrows: usize,
    ncols: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    values: Vec<V>,
    scales: Option<Vec<f32>>,
}

#[cfg(test)]
impl<V: Copy> NarrowFixture<V> {
    pub(crate) fn new(nrows: usize, ncols: usize, narrow: impl Fn(f32) -> V, scaled: bool) -> Self {
        let (mut indptr, mut indices) = (vec![0], Vec::new());
        for r in 0..nrows {
            indices.extend((0..ncols).filter(|c| (c * 7 + r * 13) % 5 < r % 5).map(|c| c as u32));
            indptr.push(indices.len());
        }
        let values = (0..indices.len()).map(|k| narrow((k as f32 * 0.37).sin() * 100.0)).collect();
        let scales = scaled.then(|| (0..nrows).map(|r| 0.01 + r as f32 * 1e-3).collect());
        NarrowFixture { nrows, ncols, indptr, indices, values, scales }
    }

    pub(crate) fn view(&self) -> CsrView<'_, f32, u32, V> {
        CsrView {
            nrows: self.nrows,
            ncols: self.ncols,
            indptr: &self.indptr,
            indices: &self.indices,
            values: &self.values,
            row_scales: self.scales.as_deref(),
        }
    }
}

/// A borrowed, validated N:M matrix: `n` slots per group of `m` columns per row, values
/// stored as `V` (by default `T`), with an optional scale per row (quantized values).
#[derive(Clone, Copy)]
pub(crate) struct NmView<'a, T, V = T> {
    pub(crate) nrows: usize,
    pub(crate) ncols: usize,
    pub(crate) n: usize,
    pub(crate) m: usize,
    pub(crate) values: &'a [V],
    pub(crate) positions: &'a [u8],
    /// `nrows` scales, or `None` for 1.
    pub(crate) row_scales: Option<&'a [T]>,
}

impl<T: Scalar, V: Stored<T>> NmView<'_, T, V> {
    /// Appends row `r`'s slot values to `out` as `T`: widened, and multiplied by the
    /// row's scale if it has one. These are exactly the values of the `T` matrix the view
    /// stands for, so the `T` kernels on them give its bits.
    #[inline(always)]
    pub(crate) fn widen_row_into(&self, r: usize, out: &mut Vec<T>) {
        let per_row = self.groups() * self.n;
        let stored = &self.values[r * per_row..][..per_row];
        match self.row_scales {
            Some(s) => out.extend(stored.iter().map(|v| s[r] * v.get())),
            None => out.extend(stored.iter().map(|v| v.get())),
        }
    }
}

impl<T, V> NmView<'_, T, V> {
    pub(crate) fn groups(&self) -> usize {
        self.ncols.div_ceil(self.m)
    }

    /// Writes the matrix column of every slot of `row` into `cols` (`groups * n` long),
    /// so the row runs through the CSR row kernels. Columns are `< ncols` because the
    /// validator bounds every position by its group's width (checked here in debug
    /// builds); `NmSparse` rejects `ncols` beyond `u32` at construction.
    #[inline(always)]
    pub(crate) fn expand_columns(&self, row: usize, cols: &mut [u32]) {
        let per_row = self.groups() * self.n;
        let positions = &self.positions[row * per_row..][..per_row];
        let narrow = per_row <= u32::MAX as usize;
        match self.n {
            1 if narrow => expand::<1>(positions, self.m, cols),
            2 if narrow => expand::<2>(positions, self.m, cols),
            4 if narrow => expand::<4>(positions, self.m, cols),
            8 if narrow => expand::<8>(positions, self.m, cols),
            n => {
                for (s, (c, &p)) in cols.iter_mut().zip(positions).enumerate() {
                    *c = ((s / n) * self.m + usize::from(p)) as u32;
                }
            }
        }
        debug_assert!(cols.iter().all(|&c| (c as usize) < self.ncols));
    }
}

/// Columns in 32-bit arithmetic, which vectorises twice as wide as `usize`. Called only
/// when the row's slot count fits `u32`; then `(s / N) * m` is a group's first column,
/// below `ncols` (which `NmSparse` bounds by `u32`), and the position adds less than the
/// group's width, so nothing overflows.
#[inline(always)]
fn expand<const N: usize>(positions: &[u8], m: usize, cols: &mut [u32]) {
    let m = m as u32;
    for (s, (c, &p)) in cols.iter_mut().zip(positions).enumerate() {
        *c = (s as u32 / N as u32) * m + u32::from(p);
    }
}

/// A borrowed, validated block-sparse matrix: `br x bc` blocks, row-major inside, with
/// zero padding where a block overhangs the matrix.
#[derive(Clone, Copy)]
pub(crate) struct BsrView<'a, T, V = T> {
    pub(crate) nrows: usize,
    pub(crate) ncols: usize,
    pub(crate) br: usize,
    pub(crate) bc: usize,
    pub(crate) indptr: &'a [usize],
    pub(crate) block_cols: &'a [u32],
    pub(crate) values: &'a [V],
    /// `nrows` scales, or `None` for 1.
    pub(crate) row_scales: Option<&'a [T]>,
}

impl<T, V> BsrView<'_, T, V> {
    pub(crate) fn block_rows(&self) -> usize {
        self.nrows.div_ceil(self.br)
    }
}

/// A borrowed, validated sliced-ELLPACK matrix (see [`crate::SlicedEll`]'s invariants).
#[derive(Clone, Copy)]
pub(crate) struct SellView<'a, T, I, V = T> {
    pub(crate) nrows: usize,
    pub(crate) ncols: usize,
    pub(crate) window: usize,
    pub(crate) order: &'a [usize],
    pub(crate) lengths: &'a [usize],
    pub(crate) slice_ptr: &'a [usize],
    pub(crate) indices: &'a [I],
    pub(crate) values: &'a [V],
    /// `nrows` scales, by row (not lane), or `None` for 1.
    pub(crate) row_scales: Option<&'a [T]>,
}

impl<T, I, V> SellView<'_, T, I, V> {
    /// Sorting windows: the work units of the parallel drivers, since rows never leave
    /// their window, each window's outputs are one contiguous range of rows.
    pub(crate) fn windows(&self) -> usize {
        self.nrows.div_ceil(self.window)
    }

    /// The first row of window `w` (`nrows` for `w == windows()`).
    pub(crate) fn first_row(&self, w: usize) -> usize {
        w.saturating_mul(self.window).min(self.nrows)
    }

    /// The first slice of window `w`.
    pub(crate) fn first_slice(&self, w: usize) -> usize {
        self.first_row(w).div_ceil(SLICE_ROWS)
    }

    /// The lanes of slice `s` that hold rows (all eight but in a last, partial slice).
    pub(crate) fn lanes(&self, s: usize) -> Range<usize> {
        s * SLICE_ROWS..((s + 1) * SLICE_ROWS).min(self.nrows)
    }

    /// Slice `s`'s stored entries, eight per step.
    pub(crate) fn slice(&self, s: usize) -> (&[V], &[I]) {
        let range = self.slice_ptr[s]..self.slice_ptr[s + 1];
        (&self.values[range.clone()], &self.indices[range])
    }
}

/// Splits `0..nrows` into about `parts` ranges of equal work, given the work before each
/// row (`work_before(nrows)` is the total).
fn partition(
    nrows: usize,
    parts: usize,
    work_before: impl Fn(usize) -> usize,
) -> Vec<Range<usize>> {
    let total = work_before(nrows);
    let mut ranges = Vec::with_capacity(parts);
    let mut start = 0;
    for p in 1..=parts {
        let target = total * p / parts;
        // The first row whose cumulative work reaches the target.
        let (mut lo, mut hi) = (start, nrows);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if work_before(mid) < target { lo = mid + 1 } else { hi = mid }
        }
        let end = if p == parts { nrows } else { lo.max(start) };
        if end > start {
            ranges.push(start..end);
            start = end;
        }
    }
    ranges
}

/// Ranges of equal work per thread. More than one, so that when a core stalls (a shared
/// machine preempts it for tens of microseconds) the others steal its remaining ranges
/// instead of waiting for it.
const PARTS_PER_THREAD: usize = 16;

/// How finely a product's work splits across rayon's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Split {
    /// [`PARTS_PER_THREAD`] ranges per thread, which the others steal from a thread that
    /// stalls.
    Fine,
    /// One range per thread, for tasks that each repeat a cost of their own (a copy of
    /// all of `X`), which finer ranges would repeat once per range.
    PerThread,
}

/// The ranges of work units (rows, or block rows) a product splits into across rayon's
/// threads, or `None` when it runs as one call: one thread, too little work, or a
/// single unit.
fn parallel_ranges(
    units: usize,
    work_before: impl Fn(usize) -> usize,
    split: Split,
) -> Option<Vec<Range<usize>>> {
    let threads = rayon::current_num_threads();
    if threads <= 1 || units < 2 || work_before(units) < PARALLEL_WORK {
        return None;
    }
    let per_thread = match split {
        Split::Fine => PARTS_PER_THREAD,
        Split::PerThread => 1,
    };
    Some(partition(units, threads * per_thread, work_before))
}

/// How a product over a matrix splits into work units: rows (CSR, N:M), sorting windows
/// (sliced ELLPACK) or block rows (block-sparse). A unit's output rows are contiguous,
/// so units can run on separate threads, each writing its own rows.
pub(crate) trait Units: Copy + Sync {
    /// How many units.
    fn units(&self) -> usize;
    /// Stored entries before unit `u` (`u == units()` gives the total).
    fn work_before(&self, u: usize) -> usize;
    /// Output rows before unit `u` (`u == units()` gives `nrows`).
    fn rows_before(&self, u: usize) -> usize;
    /// Whether the batched kernel writes every element of its row-major output buffer
    /// before reading it, so that `spmm` need not zero the buffer; otherwise the kernel
    /// adds into a zeroed one.
    fn overwrites_output(&self) -> bool {
        false
    }
}

impl<T: Copy + Sync, I: Copy + Sync, V: Copy + Sync> Units for CsrView<'_, T, I, V> {
    fn units(&self) -> usize {
        self.nrows
    }
    fn work_before(&self, r: usize) -> usize {
        self.indptr[r]
    }
    fn rows_before(&self, r: usize) -> usize {
        r
    }
}

impl<T: Copy + Sync, V: Copy + Sync> Units for NmView<'_, T, V> {
    fn units(&self) -> usize {
        self.nrows
    }
    fn work_before(&self, r: usize) -> usize {
        r * self.groups() * self.n
    }
    fn rows_before(&self, r: usize) -> usize {
        r
    }
}

impl<T: Copy + Sync, V: Copy + Sync> Units for BsrView<'_, T, V> {
    fn units(&self) -> usize {
        self.block_rows()
    }
    fn work_before(&self, i: usize) -> usize {
        self.indptr[i] * self.br * self.bc
    }
    fn rows_before(&self, i: usize) -> usize {
        (i * self.br).min(self.nrows)
    }
}

impl<T: Copy + Sync, I: Copy + Sync, V: Copy + Sync> Units for SellView<'_, T, I, V> {
    fn units(&self) -> usize {
        self.windows()
    }
    fn work_before(&self, w: usize) -> usize {
        self.slice_ptr[self.first_slice(w)]
    }
    fn rows_before(&self, w: usize) -> usize {
        self.first_row(w)
    }
}

/// Runs `f(units, out_part)` over ranges of `a`'s work units, in parallel when the work
/// is large enough; `out_part` is the units' rows of `out`. Every unit is computed by
/// exactly one call, so the result does not depend on the number of threads.
fn for_units<T: Send, U: Units>(a: U, out: &mut [T], f: impl Fn(Range<usize>, &mut [T]) + Sync) {
    let Some(ranges) = parallel_ranges(a.units(), |u| a.work_before(u), Split::Fine) else {
        f(0..a.units(), out);
        return;
    };
    let mut chunks = Vec::with_capacity(ranges.len());
    let mut rest = out;
    for r in ranges {
        let (head, tail) = rest.split_at_mut(a.rows_before(r.end) - a.rows_before(r.start));
        chunks.push((r, head));
        rest = tail;
    }
    chunks.into_par_iter().for_each(|(r, chunk)| f(r, chunk));
}

/// `alpha * v + beta * y`, with `y` not read when `beta == 0`.
#[inline(always)]
fn combine<T: Scalar>(alpha: T, v: T, beta: T, y: T) -> T {
    if beta == T::zero() { alpha * v } else { alpha * v + beta * y }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_all_rows_in_order() {
        let work: Vec<usize> = (0..=100).map(|r| r * r).collect();
        for parts in [1, 2, 3, 8, 200] {
            let ranges = partition(100, parts, |r| work[r]);
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(100));
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        }
        assert!(partition(0, 4, |_| 0).is_empty());
    }

    /// The branch-free widening of every finite f16 (all 63 488 of them, subnormals
    /// and both zeros included) gives half's own conversion, bit for bit; and so does
    /// the eight-at-a-time widening, on the portable copy and (where the CPU has F16C)
    /// with `vcvtph2ps`.
    #[test]
    fn f16_widens_exactly() {
        let finite: Vec<half::f16> =
            (0..=u16::MAX).map(half::f16::from_bits).filter(|h| h.is_finite()).collect();
        assert_eq!(finite.len(), 63_488);
        for &h in &finite {
            let got = Stored::<f32>::get(h);
            assert_eq!(got.to_bits(), h.to_f32().to_bits(), "{:#06x}", h.to_bits());
        }
        let check = |widen: &dyn Fn(&[half::f16; 8]) -> [f32; 8], copy: &str| {
            for eight in finite.as_chunks::<8>().0 {
                let want = eight.map(|h| h.to_f32().to_bits());
                assert_eq!(widen(eight).map(f32::to_bits), want, "{copy}: {eight:?}");
            }
        };
        check(&|e| <half::f16 as Stored<f32>>::widen8::<isa::Portable>(e), "portable");
        #[cfg(target_arch = "x86_64")]
        if KernelPath::Avx2.supported() {
            #[target_feature(enable = "avx2,fma,f16c")]
            fn avx2(eight: &[half::f16; 8]) -> [f32; 8] {
                <half::f16 as Stored<f32>>::widen8::<isa::Avx2>(eight)
            }
            // SAFETY: the AVX2 path is supported, so the CPU has AVX2, FMA and F16C.
            check(&|e| unsafe { avx2(e) }, "avx2");
        }
    }

    #[test]
    fn path_names() {
        assert_eq!(KernelPath::from_name("AVX2"), Some(KernelPath::Avx2));
        assert_eq!(KernelPath::from_name(" neon"), Some(KernelPath::Neon));
        assert_eq!(KernelPath::from_name("sve"), None);
        for path in KernelPath::ORDER {
            let resolved = KernelPath::resolve(path);
            assert!(resolved.supported(), "{path:?} -> {resolved:?}");
            // Never up the order: a request for a slower path is not upgraded.
            let rank = |p| KernelPath::ORDER.iter().position(|&q| q == p);
            assert!(rank(resolved) >= rank(path), "{path:?} -> {resolved:?}");
        }
        assert_eq!(KernelPath::resolve(KernelPath::Portable), KernelPath::Portable);
        assert_eq!(
            KernelPath::resolve(KernelPath::Neon),
            if cfg!(target_arch = "aarch64") { KernelPath::Neon } else { KernelPath::Portable }
        );
    }
}
