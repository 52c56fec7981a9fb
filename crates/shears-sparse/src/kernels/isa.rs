//! The instruction sets a kernel body is compiled for, as types, and the few operations
//! the compiler does not generate by itself.
//!
//! Kernels are generic over an [`Isa`] marker so that one body can use an intrinsic on
//! the paths whose CPU has it: the check is on a constant, so the other copies contain
//! no trace of it. LLVM vectorises the kernels' arithmetic on its own, but it does not
//! turn eight indexed loads into a gather instruction without a CPU-specific tuning flag
//! (`-C target-cpu`), which users do not set: without it the CSR SpMV loop compiles to
//! scalar loads and inserts. [`gather_mul_add8`] supplies the instruction.

use std::any::TypeId;

use shears_core::Scalar;

/// An instruction set a kernel copy is compiled for. Each architecture has its own
/// markers, so no copy of another architecture's is compiled (or left as dead code).
pub(crate) trait Isa: Copy + Send + Sync + 'static {
    /// The copy loads the batch-1 kernels' indexed inputs with AVX2 gather instructions
    /// (it runs with AVX2 and FMA enabled); else one element at a time.
    #[cfg(target_arch = "x86_64")]
    const GATHERS: bool;
    /// The copy loads the batch-1 kernels' indexed `f32` inputs one at a time into two
    /// 128-bit halves of one vector (`vmovss`, `vinsertps`), then multiplies and adds all
    /// eight lanes at once ([`LaneLoads`]; compiled with AVX2). Left to itself the compiler
    /// builds such lanes in pairs, with a shuffle of the values for every pair.
    #[cfg(target_arch = "x86_64")]
    const LANE_LOADS: bool = false;
    /// The copy loads its gathered lanes with explicit NEON lane loads (aarch64).
    #[cfg(target_arch = "aarch64")]
    const NEON: bool;
    /// [`fma`] fuses (rounds once). False only for `PortableUnfused`.
    const FUSED: bool = true;
    /// [`window_mul_add8`] picks its `f32` inputs with two eight-lane permutes (AVX2).
    const PERMUTES8: bool = false;
    /// [`window_mul_add16`] picks its `f32` inputs with one 16-lane permute (AVX-512).
    const PERMUTES16: bool = false;
    /// The batched N:M kernel for `f32` with groups of 4 or 8 columns runs eight rows per
    /// vector, each lane picking its row's input from the group with a permute
    /// ([`x86::nm_lanes_f32`]; the copy is compiled with AVX2 and FMA), and sixteen on
    /// copies with [`Isa::PERMUTES16`] ([`x86::nm_lanes16_f32`]).
    #[cfg(target_arch = "x86_64")]
    const NM_LANES: bool = false;
    /// The batched N:M kernel runs tiles of two rows by 128 batch columns, or four rows by
    /// 64, not two by 32: their accumulators fit AVX-512's 32 registers but would spill
    /// from AVX2's 16. NEON also has 32 (narrower) registers; it keeps the smaller tiles
    /// until an Arm machine measures the larger ones faster.
    const WIDE_NM_TILES: bool = false;
    /// Without [`Isa::WIDE_NM_TILES`], the batched N:M kernel runs one row at a time in
    /// tiles of 64 batch columns where panels are that wide: eight accumulators, so one
    /// weight broadcast and eight loads of `X` per eight vector products, against six
    /// loads per four in tiles of two rows by 32. Loads bound these tiles on AVX2.
    const ONE_ROW_NM_TILES: bool = false;
    /// [`int8_dots`] runs on 256-bit `vpmaddwd` (the copy is compiled with AVX2).
    #[cfg(target_arch = "x86_64")]
    const MADD256: bool = false;
    /// The int8 kernels run [`int8_dots_biased`] on 512-bit `vpdpbusd` (the copy is
    /// compiled with AVX-512BW and AVX-512 VNNI; x86-64 only, but every architecture's
    /// kernels read it).
    const VNNI512: bool = false;
    /// The int8 kernels run [`int8_dots_biased`] on 256-bit `vpdpbusd` and the int8 CSR
    /// tiles on 256-bit `vpdpwssd` (the copy is compiled with AVX2 and AVX-VNNI).
    const VNNI256: bool = false;
    /// The copy widens `f16` values with F16C's `vcvtph2ps`, eight per instruction
    /// ([`widen_f16`]; the copy is compiled with F16C).
    #[cfg(target_arch = "x86_64")]
    const F16C: bool = false;
    /// The copies between the column-major `X` and `Y` and the batched kernels' row-major
    /// buffers move `f32` in 8 x 8 blocks transposed in registers
    /// ([`x86::transpose8_f32`]; the copy is compiled with AVX). Left to itself the
    /// compiler moves a block's values one at a time through the stack.
    #[cfg(target_arch = "x86_64")]
    const TRANSPOSES8: bool = false;
    /// The int8 kernels' activations are stored biased for `vpdpbusd`
    /// ([`int8_dots_biased`]): the copy has one VNNI width or the other.
    const BIASED: bool = Self::VNNI512 || Self::VNNI256;
}

/// The baseline target's instructions, on a CPU that has fused multiply-add (every
/// x86-64 CPU with AVX2, every aarch64 one), or forced by `SHEARS_KERNEL=portable` on
/// one: fused multiply-adds then give the vector paths' bits. The compiler vectorises
/// its arithmetic with the baseline's vectors (SSE2, or NEON on aarch64) where it can.
#[derive(Clone, Copy)]
pub(crate) struct Portable;

/// The baseline target's instructions on an x86-64 CPU without fused multiply-add
/// (before 2013, or a virtual CPU that hides it, such as QEMU's default `qemu64`). No
/// other copy can run there, so matching their bits buys nothing, and it would cost the
/// C library's software `fma` for every product, an order of magnitude slower than a
/// multiply and an add.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct PortableUnfused;

/// AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx2;

/// AVX-512F (with AVX2, FMA and F16C).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx512;

/// AVX-512F with AVX-512BW and AVX-512 VNNI: the int8 kernels' copy for CPUs that have
/// them (Intel since Cascade Lake, AMD since Zen 4), whose integer dot products multiply
/// and add 64 pairs of bytes per `vpdpbusd` ([`int8_dots_biased`]), four times AVX2's
/// `vpmaddwd`. Only the int8 kernels have this copy ([`vnni512`] decides when it runs).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx512Vnni;

/// AVX2 and FMA with AVX-VNNI: the int8 kernels' copy for CPUs with the 256-bit VNNI
/// instructions but not AVX-512 (Intel's client parts since Alder Lake, and Sierra
/// Forest), whose `vpdpbusd` multiplies and adds 32 byte
/// pairs ([`int8_dots_biased`]) and `vpdpwssd` fuses `vpmaddwd` with its add. Only the
/// int8 kernels have this copy ([`avx_vnni`] decides when it runs, on the AVX2 path).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct AvxVnni;

/// `P`'s copy with its gathers replaced by loads of one element at a time (into vector
/// registers, which the compiler does on its own). A gather is one instruction but not
/// one load: on some CPUs (AMD's Zen 3 among them) eight separate loads are faster, so
/// which copy the batch-1 kernels run is measured at first use (`kernels::gathers`).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct LaneLoads<P>(std::marker::PhantomData<P>);

/// NEON (Advanced SIMD), which every aarch64 CPU has: the batch-1 kernels' indexed loads
/// are written as NEON lane loads into vector registers, whatever the compiler's
/// vectoriser makes of the portable copy's scalar ones.
#[cfg(target_arch = "aarch64")]
#[derive(Clone, Copy)]
pub(crate) struct Neon;

#[cfg(target_arch = "x86_64")]
impl Isa for Portable {
    const GATHERS: bool = false;
}

#[cfg(target_arch = "aarch64")]
impl Isa for Portable {
    const NEON: bool = false;
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
impl Isa for Portable {}

#[cfg(target_arch = "x86_64")]
impl Isa for PortableUnfused {
    const GATHERS: bool = false;
    const FUSED: bool = false;
}

#[cfg(target_arch = "x86_64")]
impl Isa for Avx2 {
    const GATHERS: bool = true;
    const TRANSPOSES8: bool = true;
    const NM_LANES: bool = true;
    const ONE_ROW_NM_TILES: bool = true;
    const F16C: bool = true;
    const PERMUTES8: bool = true;
    const MADD256: bool = true;
}

#[cfg(target_arch = "x86_64")]
impl Isa for Avx512 {
    const GATHERS: bool = true;
    const TRANSPOSES8: bool = true;
    const NM_LANES: bool = true;
    const F16C: bool = true;
    const PERMUTES8: bool = true;
    const PERMUTES16: bool = true;
    const WIDE_NM_TILES: bool = true;
    const MADD256: bool = true;
}

#[cfg(target_arch = "x86_64")]
impl Isa for Avx512Vnni {
    const GATHERS: bool = true;
    const TRANSPOSES8: bool = true;
    const F16C: bool = true;
    const PERMUTES8: bool = true;
    const PERMUTES16: bool = true;
    const WIDE_NM_TILES: bool = true;
    const MADD256: bool = true;
    const VNNI512: bool = true;
}

#[cfg(target_arch = "x86_64")]
impl Isa for AvxVnni {
    const GATHERS: bool = true;
    const TRANSPOSES8: bool = true;
    const F16C: bool = true;
    const PERMUTES8: bool = true;
    const MADD256: bool = true;
    const VNNI256: bool = true;
}

/// Whether the CPU has AVX-VNNI besides AVX2 and FMA (the [`AvxVnni`] copies'
/// features). Decided once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx_vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        is_x86_feature_detected!("avxvnni")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// Whether the CPU has AVX-512BW and AVX-512 VNNI besides AVX-512F, AVX2 and FMA (the
/// [`Avx512Vnni`] copies' features). Decided once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn vnni512() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// Whether the CPU has AVX-512 VBMI and POPCNT besides [`vnni512`]'s features: the
/// permuting copies of int8 CSR products against one token. Decided once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn vbmi_vnni() -> bool {
    static VBMI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VBMI.get_or_init(|| {
        vnni512() && is_x86_feature_detected!("avx512vbmi") && is_x86_feature_detected!("popcnt")
    })
}

/// Whether the CPU has AVX-512VL besides [`vnni512`]'s features: the byte copy of
/// batched int8 CSR products (256-bit `vpdpbusd`). Decided once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn vnni512_vl() -> bool {
    static VL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VL.get_or_init(|| vnni512() && is_x86_feature_detected!("avx512vl"))
}

#[cfg(target_arch = "x86_64")]
impl<P: Isa> Isa for LaneLoads<P> {
    const GATHERS: bool = false;
    const LANE_LOADS: bool = true;
    const FUSED: bool = P::FUSED;
    const PERMUTES8: bool = P::PERMUTES8;
    const PERMUTES16: bool = P::PERMUTES16;
    const WIDE_NM_TILES: bool = P::WIDE_NM_TILES;
    const ONE_ROW_NM_TILES: bool = P::ONE_ROW_NM_TILES;
    const MADD256: bool = P::MADD256;
    const VNNI512: bool = P::VNNI512;
    const VNNI256: bool = P::VNNI256;
    const F16C: bool = P::F16C;
    const TRANSPOSES8: bool = P::TRANSPOSES8;
}

#[cfg(target_arch = "aarch64")]
impl Isa for Neon {
    const NEON: bool = true;
}

/// Whether the portable copy may fuse: the CPU has fused multiply-add (the standard
/// library's `mul_add` then costs a call but not a software emulation). Decided once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn portable_fuses() -> bool {
    static FMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FMA.get_or_init(|| is_x86_feature_detected!("fma"))
}

/// `a * b + c`, rounded once on copies that fuse ([`Isa::FUSED`]), twice on
/// [`PortableUnfused`].
#[inline(always)]
pub(crate) fn fma<P: Isa, T: Scalar>(a: T, b: T, c: T) -> T {
    if P::FUSED { a.mul_add(b, c) } else { a * b + c }
}

/// Whether `T` is `U` (decided at compile time).
#[inline(always)]
pub(crate) fn is<T: 'static, U: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<U>()
}

/// Eight `f16` values, given by their bits, as `f32`: exactly, for the finite values
/// formats hold. The copies with F16C ([`Isa::F16C`]) convert them with one
/// `vcvtph2ps`; others with `convert`, the per-value conversion, which the compiler
/// vectorises.
#[inline(always)]
pub(crate) fn widen_f16<P: Isa>(bits: &[u16; 8], convert: impl Fn(u16) -> f32) -> [f32; 8] {
    #[cfg(target_arch = "x86_64")]
    if P::F16C {
        // SAFETY: P::F16C holds only for copies compiled with F16C, which run after
        // detecting it (KernelPath::supported, vnni512, avx_vnni); `bits` holds 8 values.
        return unsafe { x86::widen_f16(bits) };
    }
    bits.map(convert)
}

/// One step of an eight-lane dot product: `acc[j] + v[j] * x[idx[j]]` for every lane, a
/// multiply and an add (not fused), so every copy gives the same bits. The AVX2 and
/// AVX-512 copies load `x` with one gather instruction (two for `f64`) and keep the lanes
/// in one vector register; others load one element at a time.
///
/// # Safety
/// Every `idx[j]` must be `< x.len()` and `<= i32::MAX` (gathers take signed 32-bit
/// offsets).
#[inline(always)]
pub(crate) unsafe fn gather_mul_add8<P: Isa, T: Scalar>(
    acc: [T; 8],
    v: &[T],
    x: &[T],
    idx: [u32; 8],
) -> [T; 8] {
    debug_assert!(v.len() >= 8);
    debug_assert!(idx.iter().all(|&i| (i as usize) < x.len() && i <= i32::MAX as u32));
    #[cfg(target_arch = "x86_64")]
    if P::GATHERS {
        if is::<T, f32>() {
            // SAFETY: T is f32, so [T; 8] is [f32; 8] and the slices hold f32; the copy was
            // compiled with AVX2 (P::GATHERS); v holds 8 values and the caller bounds idx.
            return unsafe {
                std::mem::transmute_copy(&x86::gather_mul_add8_f32(
                    std::mem::transmute_copy(&acc),
                    v.as_ptr().cast::<f32>(),
                    x.as_ptr().cast::<f32>(),
                    idx,
                ))
            };
        }
        if is::<T, f64>() {
            // SAFETY: as above, for f64.
            return unsafe {
                std::mem::transmute_copy(&x86::gather_mul_add8_f64(
                    std::mem::transmute_copy(&acc),
                    v.as_ptr().cast::<f64>(),
                    x.as_ptr().cast::<f64>(),
                    idx,
                ))
            };
        }
    }
    #[cfg(target_arch = "x86_64")]
    if P::LANE_LOADS && is::<T, f32>() {
        // SAFETY: T is f32, so [T; 8] is [f32; 8] and the slices hold f32; the copy was
        // compiled with AVX2 (P::LANE_LOADS); v holds 8 values and the caller bounds idx.
        return unsafe {
            std::mem::transmute_copy(&x86::lane_mul_add8_f32(
                std::mem::transmute_copy(&acc),
                v.as_ptr().cast::<f32>(),
                x.as_ptr().cast::<f32>(),
                idx,
            ))
        };
    }
    #[cfg(target_arch = "aarch64")]
    if P::NEON {
        if is::<T, f32>() {
            // SAFETY: T is f32, so [T; 8] is [f32; 8] (two 4-lane vectors) and the slices
            // hold f32; v holds 8 values and the caller bounds idx.
            return unsafe {
                std::mem::transmute_copy(&arm::gather_mul_add8_f32(
                    std::mem::transmute_copy(&acc),
                    v.as_ptr().cast::<f32>(),
                    x.as_ptr().cast::<f32>(),
                    idx,
                ))
            };
        }
        if is::<T, f64>() {
            // SAFETY: as above, for f64 (four 2-lane vectors).
            return unsafe {
                std::mem::transmute_copy(&arm::gather_mul_add8_f64(
                    std::mem::transmute_copy(&acc),
                    v.as_ptr().cast::<f64>(),
                    x.as_ptr().cast::<f64>(),
                    idx,
                ))
            };
        }
    }
    // SAFETY: the caller bounds every index by x.len().
    std::array::from_fn(|j| acc[j] + v[j] * unsafe { *x.get_unchecked(idx[j] as usize) })
}

/// [`gather_mul_add8`] on the lanes where `live[j]`; the other lanes keep `acc[j]` and
/// read nothing from `x`, so their indices need not be valid. The AVX2 and AVX-512
/// copies load `x` with one masked gather (two for `f64`).
///
/// # Safety
/// Every `idx[j]` with `live[j]` must be `< x.len()` and `<= i32::MAX`.
#[inline(always)]
pub(crate) unsafe fn gather_mul_add8_masked<P: Isa, T: Scalar>(
    acc: [T; 8],
    v: &[T],
    x: &[T],
    idx: [u32; 8],
    live: [bool; 8],
) -> [T; 8] {
    debug_assert!(v.len() >= 8);
    debug_assert!(
        (0..8).all(|j| !live[j] || ((idx[j] as usize) < x.len() && idx[j] <= i32::MAX as u32))
    );
    #[cfg(target_arch = "x86_64")]
    if P::GATHERS {
        let mask = live.map(|l| -i32::from(l));
        if is::<T, f32>() {
            // SAFETY: T is f32 (so the transmutes are between equal types); the copy was
            // compiled with AVX2; v holds 8 values and the caller bounds the live indices.
            return unsafe {
                std::mem::transmute_copy(&x86::gather_mul_add8_masked_f32(
                    std::mem::transmute_copy(&acc),
                    v.as_ptr().cast::<f32>(),
                    x.as_ptr().cast::<f32>(),
                    idx,
                    mask,
                ))
            };
        }
        if is::<T, f64>() {
            // SAFETY: as above, for f64.
            return unsafe {
                std::mem::transmute_copy(&x86::gather_mul_add8_masked_f64(
                    std::mem::transmute_copy(&acc),
                    v.as_ptr().cast::<f64>(),
                    x.as_ptr().cast::<f64>(),
                    idx,
                    mask,
                ))
            };
        }
    }
    #[cfg(target_arch = "aarch64")]
    if P::NEON {
        if is::<T, f32>() {
            // SAFETY: T is f32 (so the transmutes are between equal types); v holds 8
            // values and the caller bounds the live indices.
            return unsafe {
                std::mem::transmute_copy(&arm::gather_mul_add8_masked_f32(
                    std::mem::transmute_copy(&acc),
                    v.as_ptr().cast::<f32>(),
                    x.as_ptr().cast::<f32>(),
                    idx,
                    live,
                ))
            };
        }
        if is::<T, f64>() {
            // SAFETY: as above, for f64.
            return unsafe {
                std::mem::transmute_copy(&arm::gather_mul_add8_masked_f64(
                    std::mem::transmute_copy(&acc),
                    v.as_ptr().cast::<f64>(),
                    x.as_ptr().cast::<f64>(),
                    idx,
                    live,
                ))
            };
        }
    }
    std::array::from_fn(|j| {
        if live[j] {
            // SAFETY: the caller bounds every live index by x.len().
            acc[j] + v[j] * unsafe { *x.get_unchecked(idx[j] as usize) }
        } else {
            acc[j]
        }
    })
}

/// Whether [`window_mul_add8`] permutes on this copy (else a kernel is better off with
/// [`gather_mul_add8`]).
#[inline(always)]
pub(crate) fn permutes8<P: Isa, T: Scalar>() -> bool {
    P::PERMUTES8 && is::<T, f32>()
}

/// One step of an eight-lane dot product over eight slots whose inputs lie in a window of
/// 16 consecutive elements, slots 0-3 in its first eight and slots 4-7 in its last eight:
/// `acc[j] + v[j] * window[offsets[j] + p[j]]`. N:M rows with `M = 2N` have this shape
/// (2:4: eight slots are four groups, 16 columns). The AVX2 and AVX-512 copies for `f32`
/// pick the inputs with two eight-lane permutes (`vpermps`) and a blend instead of a
/// gather, which costs several times more on some CPUs (AMD's Zen 3 among them); others
/// load them one at a time. Same bits on every copy.
///
/// # Safety
/// `v` and `p` must hold 8 entries and `window` 16; `offsets[j] + p[j]` must be `< 8` for
/// `j < 4` and in `8..16` for `j >= 4`.
#[inline(always)]
pub(crate) unsafe fn window_mul_add8<P: Isa, T: Scalar>(
    acc: [T; 8],
    v: &[T],
    p: &[u8],
    window: &[T],
    offsets: [u32; 8],
) -> [T; 8] {
    debug_assert!(v.len() >= 8 && p.len() >= 8 && window.len() >= 16);
    debug_assert!((0..8).all(|j| {
        let at = offsets[j] + u32::from(p[j]);
        if j < 4 { at < 8 } else { (8..16).contains(&at) }
    }));
    #[cfg(target_arch = "x86_64")]
    if permutes8::<P, T>() {
        // SAFETY: T is f32; the copy was compiled with AVX2 (only the AVX2 and AVX-512
        // copies set P::PERMUTES8); the lengths and index bounds are the caller's contract.
        return unsafe {
            std::mem::transmute_copy(&x86::window_mul_add8_f32(
                std::mem::transmute_copy(&acc),
                v.as_ptr().cast::<f32>(),
                p.as_ptr(),
                window.as_ptr().cast::<f32>(),
                offsets,
            ))
        };
    }
    std::array::from_fn(|j| {
        let at = (offsets[j] + u32::from(p[j])) as usize;
        // SAFETY: offsets[j] + p[j] < 16 <= window.len() by the caller's contract.
        acc[j] + v[j] * unsafe { *window.get_unchecked(at) }
    })
}

/// Whether [`window_mul_add16`] permutes on this copy (else a kernel is better off with
/// [`gather_mul_add8`]).
#[inline(always)]
pub(crate) fn permutes16<P: Isa, T: Scalar>() -> bool {
    P::PERMUTES16 && is::<T, f32>()
}

/// Two steps of an eight-lane dot product over sixteen slots whose inputs all lie in a
/// window of 32 consecutive elements: `acc[j] + v[j] * window[offsets[j] + p[j]]` for
/// slots 0-7, then the same for slots 8-15 into the same lanes. N:M rows with `M <= 2N`
/// have this shape (2:4: 16 slots are 8 groups, 32 columns). The AVX-512 copy for `f32`
/// picks the inputs with one two-register permute instead of a gather; others load them
/// one at a time. Same bits on every copy.
///
/// # Safety
/// `v`, `p` and `offsets` must hold 16 entries, `window` 32, and every
/// `offsets[j] + p[j]` must be `< 32`.
#[inline(always)]
pub(crate) unsafe fn window_mul_add16<P: Isa, T: Scalar>(
    acc: [T; 8],
    v: &[T],
    p: &[u8],
    window: &[T],
    offsets: [u32; 16],
) -> [T; 8] {
    debug_assert!(v.len() >= 16 && p.len() >= 16 && window.len() >= 32);
    debug_assert!((0..16).all(|j| offsets[j] + u32::from(p[j]) < 32));
    #[cfg(target_arch = "x86_64")]
    if permutes16::<P, T>() {
        // SAFETY: T is f32; the copy was compiled with AVX-512F (only Avx512 sets
        // P::PERMUTES16); the lengths and index bound are the caller's contract.
        return unsafe {
            std::mem::transmute_copy(&x86::window_mul_add16_f32(
                std::mem::transmute_copy(&acc),
                v.as_ptr().cast::<f32>(),
                p.as_ptr(),
                window.as_ptr().cast::<f32>(),
                offsets,
            ))
        };
    }
    let mut acc = acc;
    for half in [0, 8] {
        acc = std::array::from_fn(|j| {
            let k = half + j;
            // SAFETY: offsets[k] + p[k] < 32 <= window.len() by the caller's contract.
            acc[j]
                + v[k] * unsafe { *window.get_unchecked((offsets[k] + u32::from(p[k])) as usize) }
        });
    }
    acc
}

/// Sixteen columns per step of [`int8_dots`].
pub(crate) const DOT_STEP: usize = 16;

/// The exact integer dot products of `R` int8 weight rows with `J` int8 activation
/// columns (held as `i16`) over their first `steps * 16` entries: `out[i][j] =
/// sum_c rows[i][c] * xs[j][c]`. The AVX2 and AVX-512 copies widen the weights with
/// `vpmovsxbw` and multiply-add pairs into 32-bit lanes with `vpmaddwd`, keeping the
/// `R x J` accumulators in registers; others run the same sums as plain loops, which the
/// compiler vectorises for the baseline ([`int8_dots_biased`] is the VNNI copy's).
/// Integer sums are exact, so every copy gives the same result.
///
/// # Panics
/// If a slice is shorter than `steps * 16` (the callers cut them to exactly that).
/// The sums must not overflow `i32`: with int8 values that holds up to 2^17 columns.
#[inline(always)]
pub(crate) fn int8_dots<P: Isa, const R: usize, const J: usize>(
    rows: [&[i8]; R],
    xs: [&[i16]; J],
    steps: usize,
) -> [[i32; J]; R] {
    let len = dot_len(&rows, &xs, steps);
    #[cfg(target_arch = "x86_64")]
    if P::MADD256 {
        // SAFETY: the copy was compiled with AVX2 (only the AVX2 and AVX-512 copies set
        // P::MADD256); every slice holds `steps * 16` entries (asserted above).
        return unsafe { x86::int8_dots(rows.map(<[i8]>::as_ptr), xs.map(<[i16]>::as_ptr), steps) };
    }
    plain_dots(rows, xs, len, i32::from)
}

/// `steps * DOT_STEP`, once every slice is seen to hold that many entries.
///
/// # Panics
/// If a slice is shorter, or the length overflows.
#[inline(always)]
fn dot_len<A, B>(rows: &[&[A]], xs: &[&[B]], steps: usize) -> usize {
    let len = steps.checked_mul(DOT_STEP);
    assert!(len.is_some_and(|len| {
        rows.iter().all(|r| r.len() >= len) && xs.iter().all(|x| x.len() >= len)
    }));
    steps * DOT_STEP
}

/// The dot products of [`int8_dots`] and [`int8_dots_biased`] as plain loops over the
/// first `len` entries, each activation read through `value`.
#[inline(always)]
fn plain_dots<X: Copy, const R: usize, const J: usize>(
    rows: [&[i8]; R],
    xs: [&[X]; J],
    len: usize,
    value: impl Fn(X) -> i32,
) -> [[i32; J]; R] {
    let mut out = [[0i32; J]; R];
    for (i, row) in rows.iter().enumerate() {
        for (j, x) in xs.iter().enumerate() {
            out[i][j] =
                row[..len].iter().zip(&x[..len]).map(|(&w, &x)| i32::from(w) * value(x)).sum();
        }
    }
    out
}

/// Activations are stored for [`int8_dots_biased`] as their int8 value plus this, so
/// that they are unsigned bytes (`1..=255`).
pub(crate) const ACTIVATION_BIAS: i32 = 128;

/// [`int8_dots`] for activations stored biased ([`ACTIVATION_BIAS`] added, as `u8`):
/// `out[i][j] = sum_c rows[i][c] * (xs[j][c] - 128)` over the first `steps * 16` entries.
/// The [`Avx512Vnni`] copy multiplies 64 byte pairs per `vpdpbusd` (unsigned by signed
/// bytes, four pairs summed into each 32-bit lane), half the instructions of 16-bit
/// pairs, and subtracts 128 times each row's sum, which one more `vpdpbusd` per row
/// against bytes of 1 accumulates; the [`AvxVnni`] copy does the same 32 pairs at a
/// time; others run plain loops. Every sum is exact, so every copy gives
/// [`int8_dots`]'s result.
///
/// # Panics
/// If a slice is shorter than `steps * 16` (the callers cut them to exactly that).
/// The sums must not overflow `i32`: with weights in `-128..=127` that holds up to 2^16
/// columns (`2^16 * 255 * 128 < 2^31`).
#[inline(always)]
pub(crate) fn int8_dots_biased<P: Isa, const R: usize, const J: usize>(
    rows: [&[i8]; R],
    xs: [&[u8]; J],
    steps: usize,
) -> [[i32; J]; R] {
    let len = dot_len(&rows, &xs, steps);
    #[cfg(target_arch = "x86_64")]
    if P::VNNI512 {
        // SAFETY: P::VNNI512 holds for Avx512Vnni alone, which the kernels instantiate
        // only inside copies compiled with AVX-512F, AVX-512BW and AVX-512 VNNI and run
        // after `vnni512()` detected them (the tests call it after checking too); every
        // slice holds `len` entries.
        return unsafe {
            x86::int8_dots_biased(rows.map(<[i8]>::as_ptr), xs.map(<[u8]>::as_ptr), len)
        };
    }
    #[cfg(target_arch = "x86_64")]
    if P::VNNI256 {
        // SAFETY: P::VNNI256 holds for AvxVnni alone, which the kernels instantiate only
        // inside copies compiled with AVX2 and AVX-VNNI and run after `avx_vnni()`
        // detected them (the tests call it after checking too); every slice holds `len`
        // entries, a whole number of 16-entry steps.
        return unsafe {
            x86::int8_dots_biased_256(rows.map(<[i8]>::as_ptr), xs.map(<[u8]>::as_ptr), len)
        };
    }
    plain_dots(rows, xs, len, |x| i32::from(x) - ACTIVATION_BIAS)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// [`super::int8_dots`] on AVX2: per step of 16 columns, `R` sign-extending loads of
    /// weights, `J` loads of activations and `R x J` `vpmaddwd` + `vpaddd` into
    /// register-resident accumulators, summed across lanes at the end.
    ///
    /// # Safety
    /// AVX2 must be available; every pointer must be valid for `steps * 16` reads.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn int8_dots<const R: usize, const J: usize>(
        rows: [*const i8; R],
        xs: [*const i16; J],
        steps: usize,
    ) -> [[i32; J]; R] {
        let mut acc = [[_mm256_setzero_si256(); J]; R];
        for s in 0..steps {
            let mut w = [_mm256_setzero_si256(); R];
            for i in 0..R {
                // SAFETY: 16 bytes at rows[i] + 16 s are in bounds by the caller's contract.
                w[i] = _mm256_cvtepi8_epi16(unsafe {
                    _mm_loadu_si128(rows[i].add(s * 16).cast::<__m128i>())
                });
            }
            for j in 0..J {
                // SAFETY: 16 i16 at xs[j] + 16 s are in bounds by the caller's contract.
                let x = unsafe { _mm256_loadu_si256(xs[j].add(s * 16).cast::<__m256i>()) };
                for i in 0..R {
                    acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(w[i], x));
                }
            }
        }
        let mut out = [[0i32; J]; R];
        for i in 0..R {
            for j in 0..J {
                out[i][j] = reduce_add_256(acc[i][j]);
            }
        }
        out
    }

    /// [`super::int8_dots_biased`] with AVX-512 VNNI: per 64 columns, `R` loads of
    /// weights, `R` `vpdpbusd` of them against bytes of 1 (the rows' sums), `J` loads of
    /// activations and `R x J` `vpdpbusd` into register-resident accumulators; the last
    /// columns with masked loads (zeros past the end, which add nothing).
    ///
    /// # Safety
    /// AVX-512F, AVX-512BW and AVX-512 VNNI must be available; every pointer must be
    /// valid for `len` reads.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(crate) unsafe fn int8_dots_biased<const R: usize, const J: usize>(
        rows: [*const i8; R],
        xs: [*const u8; J],
        len: usize,
    ) -> [[i32; J]; R] {
        let mut acc = [[_mm512_setzero_si512(); J]; R];
        let mut sums = [_mm512_setzero_si512(); R];
        let ones = _mm512_set1_epi8(1);
        let mut c = 0;
        while c < len {
            // All 64 lanes, or the columns left.
            let mask: __mmask64 = if len - c >= 64 { !0 } else { (1u64 << (len - c)) - 1 };
            let mut w = [_mm512_setzero_si512(); R];
            for i in 0..R {
                // SAFETY: the lanes of `mask` are in bounds by the caller's contract;
                // masked-off lanes are not read.
                w[i] = unsafe { _mm512_maskz_loadu_epi8(mask, rows[i].add(c)) };
                sums[i] = _mm512_dpbusd_epi32(sums[i], ones, w[i]);
            }
            for j in 0..J {
                // SAFETY: as above.
                let x = unsafe { _mm512_maskz_loadu_epi8(mask, xs[j].add(c).cast::<i8>()) };
                for i in 0..R {
                    acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], x, w[i]);
                }
            }
            c += 64;
        }
        let mut out = [[0i32; J]; R];
        for i in 0..R {
            // Exact: |sum| <= len * 128 (see the caller's bound).
            let bias = super::ACTIVATION_BIAS * _mm512_reduce_add_epi32(sums[i]);
            for j in 0..J {
                out[i][j] = _mm512_reduce_add_epi32(acc[i][j]) - bias;
            }
        }
        out
    }

    /// [`super::int8_dots_biased`] with AVX-VNNI: per 32 columns, `R` loads of weights,
    /// `R` `vpdpbusd` of them against bytes of 1 (the rows' sums), `J` loads of
    /// activations and `R x J` `vpdpbusd` into register-resident accumulators; a last
    /// 16 columns as the low halves of zeroed vectors (zeros add nothing).
    ///
    /// # Safety
    /// AVX2 and AVX-VNNI must be available; every pointer must be valid for `len` reads,
    /// and `len` a multiple of 16.
    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    pub(crate) unsafe fn int8_dots_biased_256<const R: usize, const J: usize>(
        rows: [*const i8; R],
        xs: [*const u8; J],
        len: usize,
    ) -> [[i32; J]; R] {
        let mut acc = [[_mm256_setzero_si256(); J]; R];
        let mut sums = [_mm256_setzero_si256(); R];
        let ones = _mm256_set1_epi8(1);
        let mut c = 0;
        while c < len {
            // SAFETY: 32 bytes from `c`, or the last 16 (`len` is a multiple of 16), are
            // in bounds of every row and activation by the caller's contract.
            let load = |p: *const u8| unsafe {
                if len - c >= 32 {
                    _mm256_loadu_si256(p.add(c).cast())
                } else {
                    _mm256_zextsi128_si256(_mm_loadu_si128(p.add(c).cast()))
                }
            };
            let mut w = [_mm256_setzero_si256(); R];
            for i in 0..R {
                w[i] = load(rows[i].cast());
                sums[i] = _mm256_dpbusd_avx_epi32(sums[i], ones, w[i]);
            }
            for j in 0..J {
                let x = load(xs[j]);
                for i in 0..R {
                    acc[i][j] = _mm256_dpbusd_avx_epi32(acc[i][j], x, w[i]);
                }
            }
            c += 32;
        }
        let mut out = [[0i32; J]; R];
        for i in 0..R {
            // Exact: |sum| <= len * 128 (see the caller's bound).
            let bias = super::ACTIVATION_BIAS * reduce_add_256(sums[i]);
            for j in 0..J {
                out[i][j] = reduce_add_256(acc[i][j]) - bias;
            }
        }
        out
    }

    /// Eight `f16` values, by their bits, as `f32`: one `vcvtph2ps`.
    ///
    /// # Safety
    /// F16C must be available.
    #[inline]
    #[target_feature(enable = "avx,f16c")]
    pub(crate) unsafe fn widen_f16(bits: &[u16; 8]) -> [f32; 8] {
        // SAFETY: `bits` is 16 bytes, `out` 32.
        unsafe {
            let wide = _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr().cast()));
            let mut out = [0.0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), wide);
            out
        }
    }

    /// An 8 x 8 block of `f32` transposed: `dst[i * dst_stride + j] = src[j * src_stride +
    /// i]` for `i, j < 8`, eight loads, 24 shuffles in registers and eight stores.
    ///
    /// # Safety
    /// AVX must be available; for every `i, j < 8`, `src + j * src_stride + i` must be
    /// valid for reads and `dst + i * dst_stride + j` for writes.
    #[inline]
    #[target_feature(enable = "avx")]
    pub(crate) unsafe fn transpose8_f32(
        src: *const f32,
        src_stride: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        // SAFETY: each load reads src + j * src_stride + (0..8), each store writes
        // dst + i * dst_stride + (0..8), in bounds by the caller's contract.
        unsafe {
            let rows = std::array::from_fn(|j| _mm256_loadu_ps(src.add(j * src_stride)));
            for (i, row) in transpose8(rows).into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(i * dst_stride), row);
            }
        }
    }

    /// `y[j][i] = alpha * z[i * z_stride + j]`, plus `beta * y[j][i]` unless `beta` is
    /// zero (then `y` is not read), for `i, j < 8`: the scalar `combine`'s roundings (each
    /// product rounded, then their sum), eight values of a column at a time.
    ///
    /// # Safety
    /// AVX must be available; for every `i, j < 8`, `z + i * z_stride + j` must be valid
    /// for reads and `y[j] + i` for reads and writes.
    #[inline]
    #[target_feature(enable = "avx")]
    pub(crate) unsafe fn transpose8_combine_f32(
        alpha: f32,
        z: *const f32,
        z_stride: usize,
        beta: f32,
        y: [*mut f32; 8],
    ) {
        // SAFETY: each load reads z + i * z_stride + (0..8) and y[j] + (0..8), each store
        // writes y[j] + (0..8), in bounds by the caller's contract.
        unsafe {
            let rows = std::array::from_fn(|i| _mm256_loadu_ps(z.add(i * z_stride)));
            let (alpha, beta_v) = (_mm256_set1_ps(alpha), _mm256_set1_ps(beta));
            for (column, y) in transpose8(rows).into_iter().zip(y) {
                let mut v = _mm256_mul_ps(alpha, column);
                if beta != 0.0 {
                    v = _mm256_add_ps(v, _mm256_mul_ps(beta_v, _mm256_loadu_ps(y)));
                }
                _mm256_storeu_ps(y, v);
            }
        }
    }

    /// Eight rows of eight lanes transposed: lane `j` of `out[i]` is lane `i` of
    /// `rows[j]`. Unpacks pair the rows' lanes, shuffles gather four rows' lanes in each
    /// 128-bit half, and 128-bit permutes join the halves of rows 0-3 and 4-7.
    #[inline]
    #[target_feature(enable = "avx")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let pairs = |a: __m256, b: __m256| (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        let ((t0, t1), (t2, t3)) = (pairs(r[0], r[1]), pairs(r[2], r[3]));
        let ((t4, t5), (t6, t7)) = (pairs(r[4], r[5]), pairs(r[6], r[7]));
        let quads = |a: __m256, b: __m256| {
            (_mm256_shuffle_ps::<0x44>(a, b), _mm256_shuffle_ps::<0xEE>(a, b))
        };
        let ((s0, s1), (s2, s3)) = (quads(t0, t2), quads(t1, t3));
        let ((s4, s5), (s6, s7)) = (quads(t4, t6), quads(t5, t7));
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }

    /// The sum of eight 32-bit lanes (wrapping, as the lanes' own sums do).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn reduce_add_256(v: __m256i) -> i32 {
        let half = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let quad = _mm_add_epi32(half, _mm_unpackhi_epi64(half, half));
        let pair = _mm_add_epi32(quad, _mm_shuffle_epi32::<0b01>(quad));
        _mm_cvtsi128_si32(pair)
    }

    /// `acc + v * base[idx]` over eight `f32` lanes, the loads as one `vgatherdps`.
    ///
    /// # Safety
    /// AVX2 must be available, `v` must point to 8 values and every `base + idx[j]` must
    /// be in bounds of one allocation.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn gather_mul_add8_f32(
        acc: __m256,
        v: *const f32,
        base: *const f32,
        idx: [u32; 8],
    ) -> __m256 {
        // SAFETY: [u32; 8] and __m256i have the same size; the loads are in bounds by the
        // caller's contract.
        unsafe {
            let offsets: __m256i = std::mem::transmute(idx);
            let xs = _mm256_i32gather_ps::<4>(base, offsets);
            _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(v), xs))
        }
    }

    /// `acc + v * base[idx]` over eight `f32` lanes, each half of the vector built by a
    /// `vmovss` and three `vinsertps` from memory: seven shuffles for eight loads, one
    /// multiply and one add.
    ///
    /// # Safety
    /// As for [`gather_mul_add8_f32`].
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn lane_mul_add8_f32(
        acc: __m256,
        v: *const f32,
        base: *const f32,
        idx: [u32; 8],
    ) -> __m256 {
        // SAFETY: the loads are in bounds by the caller's contract.
        unsafe {
            let at = |j: usize| _mm_load_ss(base.add(idx[j] as usize));
            let mut lo = at(0);
            lo = _mm_insert_ps::<0x10>(lo, at(1));
            lo = _mm_insert_ps::<0x20>(lo, at(2));
            lo = _mm_insert_ps::<0x30>(lo, at(3));
            let mut hi = at(4);
            hi = _mm_insert_ps::<0x10>(hi, at(5));
            hi = _mm_insert_ps::<0x20>(hi, at(6));
            hi = _mm_insert_ps::<0x30>(hi, at(7));
            let xs = _mm256_set_m128(hi, lo);
            _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(v), xs))
        }
    }

    /// `acc + v * base[idx]` over eight `f64` lanes, the loads as two `vgatherdpd`.
    ///
    /// # Safety
    /// As for [`gather_mul_add8_f32`].
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn gather_mul_add8_f64(
        acc: [__m256d; 2],
        v: *const f64,
        base: *const f64,
        idx: [u32; 8],
    ) -> [__m256d; 2] {
        // SAFETY: as in gather_mul_add8_f32.
        unsafe {
            let offsets: __m256i = std::mem::transmute(idx);
            let lo = _mm256_i32gather_pd::<8>(base, _mm256_castsi256_si128(offsets));
            let hi = _mm256_i32gather_pd::<8>(base, _mm256_extracti128_si256::<1>(offsets));
            [
                _mm256_add_pd(acc[0], _mm256_mul_pd(_mm256_loadu_pd(v), lo)),
                _mm256_add_pd(acc[1], _mm256_mul_pd(_mm256_loadu_pd(v.add(4)), hi)),
            ]
        }
    }

    /// `acc + v * base[idx]` on the lanes whose `mask` is all ones (the others keep
    /// `acc` and load nothing), over eight `f32` lanes: one masked `vgatherdps`.
    ///
    /// # Safety
    /// AVX2 must be available, `v` must point to 8 values and every `base + idx[j]` with
    /// `mask[j] == -1` must be in bounds of one allocation; `mask` lanes are 0 or -1.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn gather_mul_add8_masked_f32(
        acc: __m256,
        v: *const f32,
        base: *const f32,
        idx: [u32; 8],
        mask: [i32; 8],
    ) -> __m256 {
        // SAFETY: [u32; 8], [i32; 8] and __m256i have the same size; the loads are in
        // bounds by the caller's contract (masked lanes are not loaded).
        unsafe {
            let offsets: __m256i = std::mem::transmute(idx);
            let mask = _mm256_castsi256_ps(std::mem::transmute::<[i32; 8], __m256i>(mask));
            let xs = _mm256_mask_i32gather_ps::<4>(_mm256_setzero_ps(), base, offsets, mask);
            let sum = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(v), xs));
            _mm256_blendv_ps(acc, sum, mask)
        }
    }

    /// [`gather_mul_add8_masked_f32`] for `f64`: two masked `vgatherdpd`.
    ///
    /// # Safety
    /// As for [`gather_mul_add8_masked_f32`].
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn gather_mul_add8_masked_f64(
        acc: [__m256d; 2],
        v: *const f64,
        base: *const f64,
        idx: [u32; 8],
        mask: [i32; 8],
    ) -> [__m256d; 2] {
        // SAFETY: as in gather_mul_add8_masked_f32; sign extension turns each 0 / -1
        // lane of the mask into a 0 / -1 lane of 64 bits.
        unsafe {
            let offsets: __m256i = std::mem::transmute(idx);
            let mask: __m256i = std::mem::transmute(mask);
            let lo_mask = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(mask)));
            let hi_mask =
                _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(mask)));
            let zero = _mm256_setzero_pd();
            let lo =
                _mm256_mask_i32gather_pd::<8>(zero, base, _mm256_castsi256_si128(offsets), lo_mask);
            let hi = _mm256_mask_i32gather_pd::<8>(
                zero,
                base,
                _mm256_extracti128_si256::<1>(offsets),
                hi_mask,
            );
            let sum_lo = _mm256_add_pd(acc[0], _mm256_mul_pd(_mm256_loadu_pd(v), lo));
            let sum_hi = _mm256_add_pd(acc[1], _mm256_mul_pd(_mm256_loadu_pd(v.add(4)), hi));
            [_mm256_blendv_pd(acc[0], sum_lo, lo_mask), _mm256_blendv_pd(acc[1], sum_hi, hi_mask)]
        }
    }

    /// [`super::window_mul_add8`] for `f32` with AVX2: each `vpermps` picks eight lanes
    /// from one half of the window by the low three bits of `offsets + p`, and the blend
    /// takes lanes 0-3 from the first half and 4-7 from the second.
    ///
    /// # Safety
    /// AVX2 must be available; `v`, `p` must point to 8 entries and `window` to 16.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn window_mul_add8_f32(
        acc: __m256,
        v: *const f32,
        p: *const u8,
        window: *const f32,
        offsets: [u32; 8],
    ) -> __m256 {
        // SAFETY: the loads are in bounds by the caller's contract (8 bytes of p, 16
        // values of window, 8 of v); [u32; 8] and __m256i have the same size.
        unsafe {
            let offsets: __m256i = std::mem::transmute(offsets);
            let idx = _mm256_add_epi32(offsets, _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())));
            let lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(window), idx);
            let hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(window.add(8)), idx);
            let xs = _mm256_blend_ps::<0b1111_0000>(lo, hi);
            _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(v), xs))
        }
    }

    /// [`super::window_mul_add16`] for `f32` with AVX-512F: one `vpermt2ps` picks the 16
    /// inputs from the 32-element window.
    ///
    /// # Safety
    /// AVX-512F must be available; `v`, `p` must point to 16 entries and `window` to 32;
    /// every `offsets[j] + p[j]` must be `< 32`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2")]
    pub(crate) unsafe fn window_mul_add16_f32(
        acc: __m256,
        v: *const f32,
        p: *const u8,
        window: *const f32,
        offsets: [u32; 16],
    ) -> __m256 {
        // SAFETY: the loads are in bounds by the caller's contract; [u32; 16] and __m512i
        // have the same size.
        unsafe {
            let offsets: __m512i = std::mem::transmute(offsets);
            let idx = _mm512_add_epi32(offsets, _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast())));
            let xs = _mm512_permutex2var_ps(
                _mm512_loadu_ps(window),
                idx,
                _mm512_loadu_ps(window.add(16)),
            );
            let prod = _mm512_mul_ps(_mm512_loadu_ps(v), xs);
            let lo = _mm512_castps512_ps256(prod);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(prod)));
            _mm256_add_ps(_mm256_add_ps(acc, lo), hi)
        }
    }

    /// A register of rows for the N:M lane kernels ([`nm_lanes_f32`]): eight rows in
    /// AVX2's 256 bits, sixteen in AVX-512's 512. Each method is one or two instructions;
    /// the kernel inlines them into a copy compiled with the features they need.
    trait RowLanes: Copy {
        /// Rows per register.
        const ROWS: usize;
        /// A register of 32-bit positions.
        type Index: Copy;

        fn zero() -> Self;
        /// # Safety
        /// The features of [`RowLanes::ROWS`]; `p` valid for `ROWS` reads.
        unsafe fn load(p: *const f32) -> Self;
        /// # Safety
        /// As for [`RowLanes::load`], `ROWS` bytes widened to 32 bits.
        unsafe fn positions(p: *const u8) -> Self::Index;
        /// The group of `M` inputs at `x`, where [`RowLanes::pick`] finds it for every
        /// row: in each 128-bit lane when `M` is 4, in the low eight lanes when it is 8.
        ///
        /// # Safety
        /// As for [`RowLanes::load`], `x` valid for `M` reads.
        unsafe fn group<const M: usize>(x: *const f32) -> Self;
        /// Lane `j` of `group` at index `p[j]` (below `M`).
        ///
        /// # Safety
        /// The features of [`RowLanes::ROWS`].
        unsafe fn pick<const M: usize>(group: Self, p: Self::Index) -> Self;
        /// # Safety
        /// The features of [`RowLanes::ROWS`].
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self;
        /// # Safety
        /// The features of [`RowLanes::ROWS`].
        unsafe fn add(a: Self, b: Self) -> Self;
        /// # Safety
        /// As for [`RowLanes::load`], `p` valid for `ROWS` writes.
        unsafe fn store(self, p: *mut f32);
    }

    // SAFETY (of every method below): each is an AVX2 and FMA intrinsic (or AVX-512F
    // for __m512), which the trait's contract requires; the pointer bounds are the
    // callers'.
    impl RowLanes for __m256 {
        const ROWS: usize = 8;
        type Index = __m256i;

        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: as above.
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: as above.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn positions(p: *const u8) -> __m256i {
            // SAFETY: as above.
            unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())) }
        }
        #[inline(always)]
        unsafe fn group<const M: usize>(x: *const f32) -> Self {
            // SAFETY: as above.
            unsafe {
                if M == 4 {
                    let group = _mm_loadu_ps(x);
                    _mm256_set_m128(group, group)
                } else {
                    _mm256_loadu_ps(x)
                }
            }
        }
        #[inline(always)]
        unsafe fn pick<const M: usize>(group: Self, p: __m256i) -> Self {
            // SAFETY: as above.
            unsafe {
                if M == 4 {
                    _mm256_permutevar_ps(group, p)
                } else {
                    _mm256_permutevar8x32_ps(group, p)
                }
            }
        }
        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: as above.
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            // SAFETY: as above.
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(p, self) }
        }
    }

    impl RowLanes for __m512 {
        const ROWS: usize = 16;
        type Index = __m512i;

        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: as above.
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: as above.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn positions(p: *const u8) -> __m512i {
            // SAFETY: as above.
            unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast())) }
        }
        #[inline(always)]
        unsafe fn group<const M: usize>(x: *const f32) -> Self {
            // SAFETY: as above.
            unsafe {
                if M == 4 {
                    _mm512_broadcast_f32x4(_mm_loadu_ps(x))
                } else {
                    _mm512_zextps256_ps512(_mm256_loadu_ps(x))
                }
            }
        }
        #[inline(always)]
        unsafe fn pick<const M: usize>(group: Self, p: __m512i) -> Self {
            // SAFETY: as above.
            unsafe {
                if M == 4 {
                    _mm512_permutevar_ps(group, p)
                } else {
                    _mm512_permutexvar_ps(p, group)
                }
            }
        }
        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: as above.
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            // SAFETY: as above.
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(p, self) }
        }
    }

    /// Windows of slots of a register of rows (`R::ROWS`, 8 or 16) of an N:M matrix (`M`
    /// 4 or 8) times `J` batch columns, added to `totals`: lane `j` of total `t` gains
    /// row `j`'s sum against column `t` over each window of `window` slots in turn,
    /// summed from zero with one fused multiply-add per slot in slot order, then added to
    /// the total. These are the row-major N:M kernel's (`nm_tile`) bits over the same
    /// windows, whatever the register's width.
    ///
    /// `values` and `positions` hold the slots of the rows interleaved: slot `k` of row
    /// `j` at `k * R::ROWS + j`. Each group of `N` slots reads the `M` inputs of its group
    /// (`x[t] + g * M`, `g` counted from the first slot's group) once per column, and each
    /// slot picks every row's input from them with one permute: no gather, and no copy of
    /// `X` or `Y` into another layout.
    ///
    /// # Safety
    /// The features of `R` must be available; `values` and `positions` must hold
    /// `slots * R::ROWS` entries, every position below `M`; `slots` and `window` must be
    /// multiples of `N` (`window > 0`); each `x[t]` must be valid for `slots / N * M`
    /// reads; `totals` must be valid for `J * R::ROWS` reads and writes.
    #[inline(always)]
    unsafe fn nm_lanes<R: RowLanes, const N: usize, const M: usize, const J: usize>(
        values: *const f32,
        positions: *const u8,
        slots: usize,
        window: usize,
        x: [*const f32; J],
        totals: *mut f32,
    ) {
        let rows = R::ROWS;
        // SAFETY: totals holds J * rows values (the caller's contract).
        let mut total: [R; J] = std::array::from_fn(|t| unsafe { R::load(totals.add(t * rows)) });
        let mut w0 = 0;
        while w0 < slots {
            let w1 = (w0 + window).min(slots);
            let mut acc = [R::zero(); J];
            for g in w0 / N..w1 / N {
                // SAFETY: slots g * N .. (g + 1) * N are below `slots`, so their lanes
                // are in bounds; the positions are below M by the contract.
                let (v, p) = unsafe {
                    (
                        std::array::from_fn::<R, N, _>(|s| R::load(values.add((g * N + s) * rows))),
                        std::array::from_fn::<R::Index, N, _>(|s| {
                            R::positions(positions.add((g * N + s) * rows))
                        }),
                    )
                };
                for t in 0..J {
                    // SAFETY: group g's M inputs are within the caller's bound on x[t]; the
                    // features are the caller's.
                    unsafe {
                        let inputs = R::group::<M>(x[t].add(g * M));
                        for s in 0..N {
                            acc[t] = R::mul_add(v[s], R::pick::<M>(inputs, p[s]), acc[t]);
                        }
                    }
                }
            }
            for t in 0..J {
                // SAFETY: the features are the caller's.
                total[t] = unsafe { R::add(total[t], acc[t]) };
            }
            w0 = w1;
        }
        for (t, total) in total.into_iter().enumerate() {
            // SAFETY: as for the loads above.
            unsafe { total.store(totals.add(t * rows)) };
        }
    }

    /// [`nm_lanes`] for eight rows per register.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; the rest as for [`nm_lanes`] with eight rows.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn nm_lanes_f32<const N: usize, const M: usize, const J: usize>(
        values: *const f32,
        positions: *const u8,
        slots: usize,
        window: usize,
        x: [*const f32; J],
        totals: *mut f32,
    ) {
        // SAFETY: the caller's contract is nm_lanes's for __m256.
        unsafe { nm_lanes::<__m256, N, M, J>(values, positions, slots, window, x, totals) }
    }

    /// [`nm_lanes`] for sixteen rows per register: half the permutes per product.
    ///
    /// # Safety
    /// AVX-512F must be available; the rest as for [`nm_lanes`] with sixteen rows.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn nm_lanes16_f32<const N: usize, const M: usize, const J: usize>(
        values: *const f32,
        positions: *const u8,
        slots: usize,
        window: usize,
        x: [*const f32; J],
        totals: *mut f32,
    ) {
        // SAFETY: the caller's contract is nm_lanes's for __m512.
        unsafe { nm_lanes::<__m512, N, M, J>(values, positions, slots, window, x, totals) }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod arm {
    use std::arch::aarch64::*;

    /// Four `f32` lanes `base[idx[j]]`, each with one `ld1 {v.s}[j]` (lanes where `live`
    /// is false stay zero and load nothing).
    ///
    /// # Safety
    /// Every `base + idx[j]` with `live[j]` must be in bounds of one allocation.
    #[inline(always)]
    unsafe fn lanes_f32(base: *const f32, idx: &[u32], live: [bool; 4]) -> float32x4_t {
        // SAFETY: each load is in bounds by the caller's contract.
        unsafe {
            let mut x = vdupq_n_f32(0.0);
            if live[0] {
                x = vld1q_lane_f32::<0>(base.add(idx[0] as usize), x);
            }
            if live[1] {
                x = vld1q_lane_f32::<1>(base.add(idx[1] as usize), x);
            }
            if live[2] {
                x = vld1q_lane_f32::<2>(base.add(idx[2] as usize), x);
            }
            if live[3] {
                x = vld1q_lane_f32::<3>(base.add(idx[3] as usize), x);
            }
            x
        }
    }

    /// Two `f64` lanes `base[idx[j]]`, as [`lanes_f32`].
    ///
    /// # Safety
    /// As for [`lanes_f32`].
    #[inline(always)]
    unsafe fn lanes_f64(base: *const f64, idx: &[u32], live: [bool; 2]) -> float64x2_t {
        // SAFETY: each load is in bounds by the caller's contract.
        unsafe {
            let mut x = vdupq_n_f64(0.0);
            if live[0] {
                x = vld1q_lane_f64::<0>(base.add(idx[0] as usize), x);
            }
            if live[1] {
                x = vld1q_lane_f64::<1>(base.add(idx[1] as usize), x);
            }
            x
        }
    }

    /// `acc + v * base[idx]` over eight `f32` lanes in two vectors: a multiply and an
    /// add (`fmul`, `fadd`; not `fmla`, which would round once and differ from the other
    /// copies).
    ///
    /// # Safety
    /// `v` must point to 8 values and every `base + idx[j]` must be in bounds of one
    /// allocation.
    #[inline(always)]
    pub(crate) unsafe fn gather_mul_add8_f32(
        acc: [float32x4_t; 2],
        v: *const f32,
        base: *const f32,
        idx: [u32; 8],
    ) -> [float32x4_t; 2] {
        // SAFETY: the loads are in bounds by the caller's contract.
        unsafe {
            let lo = lanes_f32(base, &idx[..4], [true; 4]);
            let hi = lanes_f32(base, &idx[4..], [true; 4]);
            [
                vaddq_f32(acc[0], vmulq_f32(vld1q_f32(v), lo)),
                vaddq_f32(acc[1], vmulq_f32(vld1q_f32(v.add(4)), hi)),
            ]
        }
    }

    /// [`gather_mul_add8_f32`] for `f64`: four two-lane vectors.
    ///
    /// # Safety
    /// As for [`gather_mul_add8_f32`].
    #[inline(always)]
    pub(crate) unsafe fn gather_mul_add8_f64(
        acc: [float64x2_t; 4],
        v: *const f64,
        base: *const f64,
        idx: [u32; 8],
    ) -> [float64x2_t; 4] {
        // SAFETY: the loads are in bounds by the caller's contract.
        unsafe {
            std::array::from_fn(|q| {
                let x = lanes_f64(base, &idx[2 * q..], [true; 2]);
                vaddq_f64(acc[q], vmulq_f64(vld1q_f64(v.add(2 * q)), x))
            })
        }
    }

    /// `acc + v * base[idx]` on the lanes where `live` (the others keep `acc` and load
    /// nothing), over eight `f32` lanes: the sum is selected lane by lane (`bsl`), so a
    /// dead lane keeps its bits whatever its value is.
    ///
    /// # Safety
    /// `v` must point to 8 values and every `base + idx[j]` with `live[j]` must be in
    /// bounds of one allocation.
    #[inline(always)]
    pub(crate) unsafe fn gather_mul_add8_masked_f32(
        acc: [float32x4_t; 2],
        v: *const f32,
        base: *const f32,
        idx: [u32; 8],
        live: [bool; 8],
    ) -> [float32x4_t; 2] {
        let mask: [u32; 8] = live.map(|l| if l { u32::MAX } else { 0 });
        // SAFETY: the live loads are in bounds by the caller's contract; `mask` holds 8
        // lanes.
        unsafe {
            std::array::from_fn(|h| {
                let lanes = [live[4 * h], live[4 * h + 1], live[4 * h + 2], live[4 * h + 3]];
                let x = lanes_f32(base, &idx[4 * h..], lanes);
                let sum = vaddq_f32(acc[h], vmulq_f32(vld1q_f32(v.add(4 * h)), x));
                vbslq_f32(vld1q_u32(mask.as_ptr().add(4 * h)), sum, acc[h])
            })
        }
    }

    /// [`gather_mul_add8_masked_f32`] for `f64`.
    ///
    /// # Safety
    /// As for [`gather_mul_add8_masked_f32`].
    #[inline(always)]
    pub(crate) unsafe fn gather_mul_add8_masked_f64(
        acc: [float64x2_t; 4],
        v: *const f64,
        base: *const f64,
        idx: [u32; 8],
        live: [bool; 8],
    ) -> [float64x2_t; 4] {
        let mask: [u64; 8] = live.map(|l| if l { u64::MAX } else { 0 });
        // SAFETY: as in gather_mul_add8_masked_f32.
        unsafe {
            std::array::from_fn(|q| {
                let x = lanes_f64(base, &idx[2 * q..], [live[2 * q], live[2 * q + 1]]);
                let sum = vaddq_f64(acc[q], vmulq_f64(vld1q_f64(v.add(2 * q)), x));
                vbslq_f64(vld1q_u64(mask.as_ptr().add(2 * q)), sum, acc[q])
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::KernelPath;

    /// The biased dots equal the plain ones on the unbiased values, on the plain loop and
    /// (where the CPU has them) the VNNI copies, for lengths of whole 64-byte steps, a
    /// masked (or half-vector) tail and both; weights of every value, -128 included.
    #[test]
    fn biased_dots_equal_the_plain_sums() {
        let mut next = crate::testing::xorshift(11);
        for steps in 0..11 {
            let len = steps * DOT_STEP;
            let rows: Vec<Vec<i8>> =
                (0..4).map(|_| (0..len).map(|_| next() as u8 as i8).collect()).collect();
            let xs: Vec<Vec<i16>> =
                (0..6).map(|_| (0..len).map(|_| (next() % 255) as i16 - 127).collect()).collect();
            let biased: Vec<Vec<u8>> =
                xs.iter().map(|x| x.iter().map(|&v| (v + 128) as u8).collect()).collect();
            let r: [&[i8]; 4] = std::array::from_fn(|i| &rows[i][..]);
            let x: [&[i16]; 6] = std::array::from_fn(|j| &xs[j][..]);
            let b: [&[u8]; 6] = std::array::from_fn(|j| &biased[j][..]);
            let want = int8_dots::<Portable, 4, 6>(r, x, steps);
            assert_eq!(int8_dots_biased::<Portable, 4, 6>(r, b, steps), want, "{steps} steps");
            #[cfg(target_arch = "x86_64")]
            if vnni512() {
                let got = int8_dots_biased::<Avx512Vnni, 4, 6>(r, b, steps);
                assert_eq!(got, want, "{steps} steps, VNNI");
            }
            #[cfg(target_arch = "x86_64")]
            if avx_vnni() {
                let got = int8_dots_biased::<AvxVnni, 4, 6>(r, b, steps);
                assert_eq!(got, want, "{steps} steps, AVX-VNNI");
            }
        }
    }

    fn fixture<T: Scalar>() -> ([T; 8], Vec<T>, Vec<u8>, Vec<T>) {
        let acc = std::array::from_fn(|j| T::from_f64_lossy(j as f64 * 0.25 - 1.0));
        let v = (0..16).map(|k| T::from_f64_lossy((k as f64 * 0.37).sin())).collect();
        let p = (0..16).map(|k| ((k * 5) % 2) as u8).collect();
        let window = (0..32).map(|k| T::from_f64_lossy((k as f64 * 0.11).cos())).collect();
        (acc, v, p, window)
    }

    /// Two eight-lane steps by hand: the reference for both helpers.
    fn by_hand<T: Scalar>(acc: [T; 8], v: &[T], x: &[T], idx: &[usize]) -> [T; 8] {
        let mut acc = acc;
        for half in [0, 8] {
            for j in 0..8 {
                acc[j] += v[half + j] * x[idx[half + j]];
            }
        }
        acc
    }

    fn bits<T: Scalar>(a: [T; 8]) -> [u64; 8] {
        a.map(|v| v.as_f64().to_bits())
    }

    /// The helpers on copy `P`: both gather steps, the 16-slot window step, the masked
    /// gather with every other lane dead (their indices far past the window: a copy that
    /// loaded one would read outside it), and the 8-slot window step.
    fn on_copy<P: Isa, T: Scalar>() -> [[u64; 8]; 4] {
        let (acc, v, p, window) = fixture::<T>();
        let offsets: [u32; 16] = std::array::from_fn(|j| (j / 2 * 4) as u32);
        let idx: [u32; 16] = std::array::from_fn(|j| offsets[j] + u32::from(p[j]));
        let step = |acc, half: usize| {
            let i: [u32; 8] = std::array::from_fn(|j| idx[half + j]);
            // SAFETY: every index is < 32 == window.len(); callers run a copy only where
            // the CPU supports it.
            unsafe { gather_mul_add8::<P, T>(acc, &v[half..], &window, i) }
        };
        // SAFETY: 16 values and positions, a 32-element window, offsets + p < 32.
        let windowed = unsafe { window_mul_add16::<P, T>(acc, &v, &p, &window, offsets) };
        let live: [bool; 8] = std::array::from_fn(|j| j % 2 == 0);
        let masked_idx: [u32; 8] = std::array::from_fn(|j| if live[j] { idx[j] } else { 1 << 30 });
        // SAFETY: the live indices are < 32; the dead ones are never loaded.
        let masked = unsafe { gather_mul_add8_masked::<P, T>(acc, &v, &window, masked_idx, live) };
        let offsets8: [u32; 8] = std::array::from_fn(|j| offsets[j]);
        // SAFETY: 8 values and positions, a 16-element window; slots 0-3 read below 8 and
        // slots 4-7 in 8..16 (offsets 0, 0, 4, 4, 8, 8, 12, 12 plus positions 0 or 1).
        let windowed8 = unsafe { window_mul_add8::<P, T>(acc, &v, &p, &window[..16], offsets8) };
        [bits(step(step(acc, 0), 8)), bits(windowed), bits(masked), bits(windowed8)]
    }

    /// Every copy this CPU runs of the helpers, for both element types, gives the
    /// by-hand bits; the portable fallback of the window helper (which kernels only reach
    /// through the AVX-512 copy for f32) included.
    #[test]
    fn helpers_match_the_formula_on_every_copy() {
        fn check<T: Scalar>() {
            let (acc, v, p, window) = fixture::<T>();
            let idx: Vec<usize> = (0..16).map(|j| j / 2 * 4 + usize::from(p[j])).collect();
            let full = bits(by_hand(acc, &v, &window, &idx));
            let mut masked = acc;
            for j in (0..8).step_by(2) {
                masked[j] += v[j] * window[idx[j]];
            }
            let mut first8 = acc;
            for j in 0..8 {
                first8[j] += v[j] * window[idx[j]];
            }
            let want = [full, full, bits(masked), bits(first8)];
            let supported = |path| KernelPath::resolve(path) == path;
            assert_eq!(on_copy::<Portable, T>(), want, "portable");
            #[cfg(target_arch = "x86_64")]
            {
                if supported(KernelPath::Avx2) {
                    assert_eq!(on_copy::<Avx2, T>(), want, "avx2");
                    assert_eq!(on_copy::<LaneLoads<Avx2>, T>(), want, "avx2, lane loads");
                }
                if supported(KernelPath::Avx512) {
                    assert_eq!(on_copy::<Avx512, T>(), want, "avx512");
                    assert_eq!(on_copy::<LaneLoads<Avx512>, T>(), want, "avx512, lane loads");
                }
            }
            #[cfg(target_arch = "aarch64")]
            {
                assert!(supported(KernelPath::Neon));
                assert_eq!(on_copy::<Neon, T>(), want, "neon");
            }
        }
        check::<f32>();
        check::<f64>();
    }
}
