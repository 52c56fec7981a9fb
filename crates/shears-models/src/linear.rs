//! [`Linear`]: every linear layer of the encoder, `y = W x + b`, its weights dense (one
//! GEMM over all of a batch's tokens), in any shears-sparse format (dense, CSR and N:M
//! with bf16 or f16 values when every weight is exact in them, as a half-precision
//! checkpoint's are), or int8 (integer products on tokens quantized to int8).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use faer::{Accum, MatMut, MatRef, Par};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use nalgebra::{DMatrix, DVector};
use shears_core::Mask;
use shears_io::Int8Tensor;
use shears_sparse::{
    AnySparse, Format, Int8Matrix, Layout, NarrowCsr, NarrowNm, NarrowValue, Orientation,
    QuantScheme, SpIndex, SparseProduct,
};

use crate::error::{Error, Result};
use crate::math::{Elementwise, apply};

/// Int8 weights as a checkpoint stores them (`NAME` beside its `NAME.scale`, read with
/// [`Checkpoint::read_int8`](shears_io::Checkpoint::read_int8)) as the [`Int8Matrix`]
/// that [`Linear::from_int8`] runs: the tensor's matrix view, one scale per row or per
/// group of columns as the checkpoint says.
///
/// # Errors
/// [`Int8Matrix::try_from_parts`]'s, should the values or scales not fit the shape.
pub fn int8_matrix(tensor: Int8Tensor) -> shears_sparse::Result<Int8Matrix> {
    let (rows, cols) = tensor.shape();
    let scheme = tensor.group().map_or(QuantScheme::PerRow, QuantScheme::PerGroup);
    let (values, scales) = tensor.into_parts();
    Int8Matrix::try_from_parts(rows, cols, scheme, values, scales)
}

/// The weights of a linear layer, in the form its products run in.
#[derive(Debug, Clone)]
enum LinearWeights {
    /// Dense, `W` column-major, so that faer's GEMM takes `W` as it is (its kernels pack
    /// it as they multiply) where a row-major `W` would first be transposed into packed
    /// form at every product. See [`dense_product`] for the threads.
    Dense(DMatrix<f32>),
    /// Dense with half-precision values, which hold every weight exactly; laid out as
    /// [`LinearWeights::Dense`], each product widening a band of rows at a time.
    DenseHalf(HalfDense),
    /// Sparse, in the format chosen for it.
    Sparse(AnySparse<f32>),
    /// Sparse with half-precision values, which hold every weight exactly.
    Half(HalfSparse),
    /// Int8 with its scales, as a quantized checkpoint stores it: each product quantizes
    /// the tokens to int8 and sums in integers.
    Int8(Int8Matrix),
}

/// A linear layer `y = W x + b` of the encoder: `W` is `outputs x inputs` (PyTorch's
/// `nn.Linear.weight`), `x` one token per column.
#[derive(Debug, Clone)]
pub struct Linear {
    name: String,
    weights: LinearWeights,
    bias: DVector<f32>,
    /// Changes whenever the weights may have changed (a number no other weights have had
    /// in this process; a clone keeps it, as it keeps the weights): what a copy built from
    /// them, such as [`stacked`] layers, checks to know it is still theirs.
    generation: u64,
}

/// A number no weights have had before in this process.
fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Linear {
    /// A dense layer named `name` (its weight's tensor name).
    ///
    /// # Errors
    /// [`Error::Argument`] if `bias` has not one entry per output.
    pub fn new(
        name: impl Into<String>,
        weights: DMatrix<f32>,
        bias: DVector<f32>,
    ) -> Result<Linear> {
        let name = name.into();
        if bias.len() != weights.nrows() {
            return Err(Error::Argument(format!(
                "layer `{name}`: {} bias entries for {} outputs",
                bias.len(),
                weights.nrows()
            )));
        }
        Ok(Linear {
            name,
            weights: LinearWeights::Dense(weights),
            bias,
            generation: next_generation(),
        })
    }

    /// A dense layer from `Wᵀ` (`inputs x outputs`): the values of `W` row by row, as a
    /// checkpoint stores them.
    ///
    /// # Errors
    /// [`Error::Argument`] if `bias` has not one entry per output.
    pub fn from_transposed(
        name: impl Into<String>,
        transposed: DMatrix<f32>,
        bias: DVector<f32>,
    ) -> Result<Linear> {
        Self::new(name, transposed.transpose(), bias)
    }

    /// An int8 layer: its products quantize each token to int8 and sum in integers
    /// ([`Int8Matrix`]'s [`SparseProduct`]).
    ///
    /// # Errors
    /// [`Error::Argument`] if `bias` has not one entry per output.
    pub fn from_int8(
        name: impl Into<String>,
        weights: Int8Matrix,
        bias: DVector<f32>,
    ) -> Result<Linear> {
        let name = name.into();
        if bias.len() != weights.shape().0 {
            return Err(Error::Argument(format!(
                "layer `{name}`: {} bias entries for {} outputs",
                bias.len(),
                weights.shape().0
            )));
        }
        Ok(Linear {
            name,
            weights: LinearWeights::Int8(weights),
            bias,
            generation: next_generation(),
        })
    }

    /// The weight's tensor name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `(outputs, inputs)`.
    pub fn shape(&self) -> (usize, usize) {
        match &self.weights {
            LinearWeights::Dense(w) => w.shape(),
            LinearWeights::DenseHalf(h) => h.shape(),
            LinearWeights::Sparse(s) => s.shape(),
            LinearWeights::Half(h) => h.product().shape(),
            LinearWeights::Int8(q) => q.shape(),
        }
    }

    /// The int8 weights, when the layer runs in int8.
    pub fn int8(&self) -> Option<&Int8Matrix> {
        match &self.weights {
            LinearWeights::Int8(q) => Some(q),
            _ => None,
        }
    }

    /// The bias.
    pub fn bias(&self) -> &DVector<f32> {
        &self.bias
    }

    /// The weights as a dense matrix (zeros where a sparse format stores nothing; int8
    /// weights times their scales).
    pub fn dense_weights(&self) -> DMatrix<f32> {
        match &self.weights {
            LinearWeights::Dense(w) => w.clone(),
            LinearWeights::DenseHalf(h) => h.as_ref().to_f32(),
            LinearWeights::Sparse(s) => s.to_dense(),
            LinearWeights::Half(h) => h.to_dense(),
            LinearWeights::Int8(q) => q.dequantize(),
        }
    }

    /// Replaces the weights with dense `weights` of the same shape.
    ///
    /// # Errors
    /// [`Error::Argument`] for another shape.
    pub fn set_dense(&mut self, weights: DMatrix<f32>) -> Result<()> {
        self.check_new_shape("weights", weights.shape())?;
        self.weights = LinearWeights::Dense(weights);
        self.generation = next_generation();
        Ok(())
    }

    /// Replaces the weights with int8 `weights` of the same shape.
    ///
    /// # Errors
    /// [`Error::Argument`] for another shape.
    pub fn set_int8(&mut self, weights: Int8Matrix) -> Result<()> {
        self.check_new_shape("int8 weights", weights.shape())?;
        self.weights = LinearWeights::Int8(weights);
        self.generation = next_generation();
        Ok(())
    }

    /// An error unless new `what` of `shape` fit the layer.
    fn check_new_shape(&self, what: &str, shape: (usize, usize)) -> Result<()> {
        if shape == self.shape() {
            return Ok(());
        }
        Err(Error::Argument(format!(
            "layer `{}`: new {what} are {shape:?}, the layer is {:?}",
            self.name,
            self.shape()
        )))
    }

    /// Turns int8 weights into f32 dense ones (values times scales); whether they were
    /// int8.
    pub fn dequantize(&mut self) -> bool {
        let LinearWeights::Int8(q) = &self.weights else { return false };
        self.weights = LinearWeights::Dense(q.dequantize());
        self.generation = next_generation();
        true
    }

    /// Stores the weights in `format`, keeping the nonzeros (dense keeps them all); int8
    /// weights become f32 (their values times their scales). Dense, CSR and N:M store
    /// bf16 values when every (nonzero) weight is exact in bf16 (a bf16 checkpoint's
    /// are), else f16 when they are exact in f16, else f32: the products are the same
    /// bits (the kernels widen each value exactly as they load it) from fewer bytes.
    ///
    /// # Errors
    /// [`Error::Sparse`] if the format cannot hold the weights (an N:M format for
    /// weights that are not N:M).
    pub fn set_format(&mut self, format: Format) -> Result<()> {
        self.store(format, true)
    }

    /// [`Linear::set_format`] with f32 values whatever the weights: for timing the
    /// half-precision formats against the f32 ones.
    ///
    /// # Errors
    /// As [`Linear::set_format`].
    pub fn set_f32_format(&mut self, format: Format) -> Result<()> {
        self.store(format, false)
    }

    /// The weights in `format`, with half-precision values where `half` allows them and
    /// they hold the weights exactly.
    fn store(&mut self, format: Format, half: bool) -> Result<()> {
        let dense = self.dense_weights();
        self.weights = match format {
            Format::Dense => match half.then(|| HalfDense::new(&dense)).flatten() {
                Some(half) => LinearWeights::DenseHalf(half),
                None => LinearWeights::Dense(dense),
            },
            other => {
                let kept =
                    Mask::from_fn(dense.nrows(), dense.ncols(), |r, c| dense[(r, c)] != 0.0)?;
                match half.then(|| HalfSparse::new(&dense, &kept, other)).transpose()?.flatten() {
                    Some(half) => LinearWeights::Half(half),
                    None => {
                        LinearWeights::Sparse(AnySparse::from_dense_masked(&dense, &kept, other)?)
                    }
                }
            }
        };
        self.generation = next_generation();
        Ok(())
    }

    /// The format the weights run in ([`Format::Dense`] for int8 weights, which are
    /// stored dense: see [`Linear::int8`]).
    pub fn format(&self) -> Format {
        match &self.weights {
            LinearWeights::Dense(_) | LinearWeights::DenseHalf(_) | LinearWeights::Int8(_) => {
                Format::Dense
            }
            LinearWeights::Sparse(s) => s.format(),
            LinearWeights::Half(h) => h.format(),
        }
    }

    /// The type the weights are stored as: `f32`, `bf16`, `f16` or `int8`.
    pub fn value_type(&self) -> &'static str {
        match &self.weights {
            LinearWeights::Dense(_) | LinearWeights::Sparse(_) => "f32",
            LinearWeights::Half(HalfSparse::Bf16(_))
            | LinearWeights::DenseHalf(HalfDense::Bf16(_)) => <bf16 as NarrowValue>::NAME,
            LinearWeights::Half(HalfSparse::F16(_))
            | LinearWeights::DenseHalf(HalfDense::F16(_)) => <f16 as NarrowValue>::NAME,
            LinearWeights::Int8(_) => <i8 as NarrowValue>::NAME,
        }
    }

    /// `W x + b` for the tokens of `x` (one per column).
    ///
    /// # Errors
    /// [`Error::Argument`] if `x` has not one row per input, or the output could not be
    /// addressed.
    pub fn forward(&self, x: &DMatrix<f32>) -> Result<DMatrix<f32>> {
        self.forward_then(x, None)
    }

    /// `f(W x + b)`, `f` applied to every output (none for `None`). A dense layer applies
    /// the bias and `f` to each band of rows as soon as its product is done, while the
    /// band is in cache and on the thread that computed it.
    ///
    /// # Errors
    /// As [`Linear::forward`].
    pub(crate) fn forward_then(
        &self,
        x: &DMatrix<f32>,
        f: Option<Elementwise>,
    ) -> Result<DMatrix<f32>> {
        let (outputs, tokens) = (self.shape().0, x.ncols());
        self.check_input(x.nrows(), tokens)?;
        let epilogue = Epilogue { bias: self.bias.as_slice(), f };
        let dense = |w: DenseRef<'_>| {
            let mut y = zeroed(outputs, tokens);
            let dst = MatMut::from_column_major_slice_mut(y.as_mut_slice(), outputs, tokens);
            dense_product(w, x, dst, epilogue);
            y
        };
        let product: &dyn SparseProduct<f32> = match &self.weights {
            LinearWeights::Dense(w) => return Ok(dense(DenseRef::F32(w))),
            LinearWeights::DenseHalf(h) => return Ok(dense(h.as_ref())),
            LinearWeights::Sparse(s) => s,
            LinearWeights::Half(h) => h.product(),
            LinearWeights::Int8(q) => q,
        };
        // Zeroed on rayon's threads, as the dense products' outputs are: `matmul` would
        // zero all of it on this thread alone while the pool's other threads wait. The
        // epilogue runs in the product's tasks, on each piece as it is finished.
        let mut y = zeroed(outputs, tokens);
        let then = |_: usize, first_row: usize, piece: &mut [f32]| {
            epilogue.apply_to_rows(first_row, piece);
        };
        product.matmul_into_then(1.0, x, 0.0, &mut y, &then)?;
        Ok(y)
    }

    /// Checks an input of `inputs` values for each of `tokens` tokens: as many inputs as
    /// the layer takes, and an output that can be addressed (an input of no rows costs
    /// nothing whatever its token count, so the output it asks for is bounded here rather
    /// than by the input's own allocation).
    fn check_input(&self, inputs: usize, tokens: usize) -> Result<()> {
        let (outputs, takes) = self.shape();
        if inputs != takes {
            let name = &self.name;
            return Err(Error::Argument(format!(
                "layer `{name}` takes {takes} inputs, got {inputs}"
            )));
        }
        if shears_core::check_addressable::<f32>(&[outputs, tokens]).is_err() {
            return Err(Error::Argument(format!(
                "layer `{}`: {outputs} outputs for each of {tokens} tokens are more values \
                 than can be addressed",
                self.name
            )));
        }
        Ok(())
    }

    /// Whether the layer is best given its input and output by rows (one row per token,
    /// [`SparseProduct::matmul_oriented_into`]) when its neighbour takes them so: N:M
    /// weights in f32 or half precision, whose kernel reads and writes a whole panel of
    /// tokens per row, so that a chain of such layers saves the copies between
    /// orientations. CSR's panels are a quarter as wide: each row's copy is a short run,
    /// which costs about what the transpose it replaces does.
    pub(crate) fn prefers_rows(&self) -> bool {
        match &self.weights {
            LinearWeights::Sparse(s) => matches!(s.format(), Format::Nm(_)),
            LinearWeights::Half(h) => matches!(h.format(), Format::Nm(_)),
            LinearWeights::Dense(_) | LinearWeights::DenseHalf(_) | LinearWeights::Int8(_) => false,
        }
    }

    /// [`Linear::forward_then`] with the tokens of `x` and of the output each by
    /// columns or by rows, as `layout` says: the same bits. Dense and int8 weights get
    /// the tokens by columns and back.
    ///
    /// # Errors
    /// As [`Linear::forward`].
    pub(crate) fn forward_oriented(
        &self,
        x: &DMatrix<f32>,
        layout: Layout,
        f: Option<Elementwise>,
    ) -> Result<DMatrix<f32>> {
        let rows = |o: Orientation| o == Orientation::Rows;
        let product: &dyn SparseProduct<f32> = match &self.weights {
            LinearWeights::Sparse(s) => s,
            LinearWeights::Half(h) => h.product(),
            LinearWeights::Dense(_) | LinearWeights::DenseHalf(_) | LinearWeights::Int8(_) => {
                let transposed;
                let by_columns = if rows(layout.x) {
                    transposed = x.transpose();
                    &transposed
                } else {
                    x
                };
                let y = self.forward_then(by_columns, f)?;
                return Ok(if rows(layout.y) { y.transpose() } else { y });
            }
        };
        let outputs = self.shape().0;
        let (got, tokens) = if rows(layout.x) { (x.ncols(), x.nrows()) } else { x.shape() };
        self.check_input(got, tokens)?;
        let epilogue = Epilogue { bias: self.bias.as_slice(), f };
        let mut y;
        if rows(layout.y) {
            y = zeroed(tokens, outputs);
            let then = |output: usize, _: usize, piece: &mut [f32]| {
                epilogue.apply_to_output(output, piece);
            };
            product.matmul_oriented_into(1.0, x, 0.0, &mut y, layout, Some(&then))?;
        } else {
            y = zeroed(outputs, tokens);
            let then = |_: usize, first_row: usize, piece: &mut [f32]| {
                epilogue.apply_to_rows(first_row, piece);
            };
            product.matmul_oriented_into(1.0, x, 0.0, &mut y, layout, Some(&then))?;
        }
        Ok(y)
    }
}

/// The half-precision type weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HalfType {
    Bf16,
    F16,
}

impl HalfType {
    /// bf16 if every one of `weights()` is exact in bf16, else f16 if every one is exact
    /// in f16; `None` for weights exact in neither. Half formats hold finite values only,
    /// so an infinite or NaN weight keeps f32.
    fn holding<W: Iterator<Item = f32>>(weights: impl Fn() -> W) -> Option<HalfType> {
        let exact_in = |round: fn(f32) -> f32| weights().all(|w| w.is_finite() && round(w) == w);
        if exact_in(|w| bf16::from_f32(w).to_f32()) {
            Some(HalfType::Bf16)
        } else if exact_in(|w| f16::from_f32(w).to_f32()) {
            Some(HalfType::F16)
        } else {
            None
        }
    }
}

/// CSR or N:M weights with half-precision values.
#[derive(Debug, Clone)]
enum HalfSparse {
    Bf16(Half<bf16>),
    F16(Half<f16>),
}

/// A CSR (with the narrowest column index that fits) or N:M matrix with values `V`.
#[derive(Debug, Clone)]
enum Half<V: NarrowValue> {
    Csr16(NarrowCsr<V, u16>),
    Csr32(NarrowCsr<V, u32>),
    Nm(NarrowNm<V>),
}

impl HalfSparse {
    /// The kept weights in `format` with bf16 values if all are exact in bf16, else f16
    /// if all are exact in f16; `None` for another format or weights exact in neither.
    fn new(weights: &DMatrix<f32>, kept: &Mask, format: Format) -> Result<Option<HalfSparse>> {
        if !matches!(format, Format::Csr | Format::Nm(_)) {
            return Ok(None);
        }
        let kept_weights = || kept.iter_kept().map(|(r, c)| weights[(r, c)]);
        Ok(match HalfType::holding(kept_weights) {
            Some(HalfType::Bf16) => Some(HalfSparse::Bf16(Half::new(weights, kept, format)?)),
            Some(HalfType::F16) => Some(HalfSparse::F16(Half::new(weights, kept, format)?)),
            None => None,
        })
    }

    fn product(&self) -> &dyn SparseProduct<f32> {
        match self {
            HalfSparse::Bf16(h) => h.product(),
            HalfSparse::F16(h) => h.product(),
        }
    }

    fn to_dense(&self) -> DMatrix<f32> {
        match self {
            HalfSparse::Bf16(h) => h.to_dense(),
            HalfSparse::F16(h) => h.to_dense(),
        }
    }

    fn format(&self) -> Format {
        match self {
            HalfSparse::Bf16(h) => h.format(),
            HalfSparse::F16(h) => h.format(),
        }
    }
}

impl<V: NarrowValue> Half<V> {
    /// `format` is CSR or N:M, and every kept weight is exact in `V`.
    fn new(weights: &DMatrix<f32>, kept: &Mask, format: Format) -> Result<Half<V>> {
        Ok(match format {
            Format::Nm(pattern) => Half::Nm(NarrowNm::from_dense_masked(weights, kept, pattern)?),
            _ if weights.ncols() <= u16::MAX_COLS => {
                Half::Csr16(NarrowCsr::from_dense_masked(weights, kept)?)
            }
            _ => Half::Csr32(NarrowCsr::from_dense_masked(weights, kept)?),
        })
    }

    fn product(&self) -> &dyn SparseProduct<f32> {
        match self {
            Half::Csr16(m) => m,
            Half::Csr32(m) => m,
            Half::Nm(m) => m,
        }
    }

    fn to_dense(&self) -> DMatrix<f32> {
        match self {
            Half::Csr16(m) => m.to_csr().to_dense(),
            Half::Csr32(m) => m.to_csr().to_dense(),
            Half::Nm(m) => m.to_nm().to_dense(),
        }
    }

    fn format(&self) -> Format {
        match self {
            Half::Csr16(_) | Half::Csr32(_) => Format::Csr,
            Half::Nm(m) => Format::Nm(m.pattern()),
        }
    }
}

/// Dense weights with half-precision values, column-major as [`LinearWeights::Dense`].
#[derive(Debug, Clone)]
enum HalfDense {
    Bf16(DMatrix<bf16>),
    F16(DMatrix<f16>),
}

impl HalfDense {
    /// `weights` in bf16 if every one is exact in bf16, else in f16 if every one is
    /// exact in f16; `None` for weights exact in neither (or not finite).
    fn new(weights: &DMatrix<f32>) -> Option<HalfDense> {
        match HalfType::holding(|| weights.iter().copied())? {
            HalfType::Bf16 => Some(HalfDense::Bf16(weights.map(bf16::from_f32))),
            HalfType::F16 => Some(HalfDense::F16(weights.map(f16::from_f32))),
        }
    }

    fn shape(&self) -> (usize, usize) {
        match self {
            HalfDense::Bf16(w) => w.shape(),
            HalfDense::F16(w) => w.shape(),
        }
    }

    fn as_ref(&self) -> DenseRef<'_> {
        match self {
            HalfDense::Bf16(w) => DenseRef::Bf16(w),
            HalfDense::F16(w) => DenseRef::F16(w),
        }
    }
}

/// Dense weights as a product reads them: f32 as they are, half precision widened to
/// f32 a band of rows at a time.
#[derive(Debug, Clone, Copy)]
enum DenseRef<'a> {
    F32(&'a DMatrix<f32>),
    Bf16(&'a DMatrix<bf16>),
    F16(&'a DMatrix<f16>),
}

impl DenseRef<'_> {
    fn to_f32(self) -> DMatrix<f32> {
        /// `w` widened, exactly, by `widen`.
        fn widened<H>(w: &DMatrix<H>, widen: fn(&[H], &mut [f32])) -> DMatrix<f32> {
            let mut widened = DMatrix::zeros(w.nrows(), w.ncols());
            widen(w.as_slice(), widened.as_mut_slice());
            widened
        }
        match self {
            DenseRef::F32(w) => w.clone(),
            DenseRef::Bf16(w) => widened(w, widen_bf16),
            DenseRef::F16(w) => widened(w, widen_f16),
        }
    }

    fn shape(&self) -> (usize, usize) {
        match self {
            DenseRef::F32(w) => w.shape(),
            DenseRef::Bf16(w) => w.shape(),
            DenseRef::F16(w) => w.shape(),
        }
    }

    /// `f(W[rows, ..])`, the rows as f32: a view of f32 weights, or half-precision ones
    /// widened (exactly) into this thread's scratch buffer.
    /// (See [`widened_rows`] for what `f` may do.)
    fn with_rows<R>(&self, rows: Range<usize>, f: impl FnOnce(MatRef<'_, f32>) -> R) -> R {
        let (outputs, inputs) = self.shape();
        match self {
            DenseRef::F32(w) => {
                let all = MatRef::from_column_major_slice(w.as_slice(), outputs, inputs);
                f(all.subrows(rows.start, rows.len()))
            }
            DenseRef::Bf16(w) => widened_rows(w.as_slice(), widen_bf16, (outputs, inputs), rows, f),
            DenseRef::F16(w) => widened_rows(w.as_slice(), widen_f16, (outputs, inputs), rows, f),
        }
    }
}

/// `values` as f32, exactly: a bf16 is the upper half of the f32 it stands for. A loop
/// the compiler vectorizes, where widening one value at a time is several times slower.
fn widen_bf16(values: &[bf16], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(values) {
        *o = f32::from_bits(u32::from(v.to_bits()) << 16);
    }
}

/// `values` as f32, exactly, with `half`'s slice conversion (F16C where the CPU has it).
fn widen_f16(values: &[f16], out: &mut [f32]) {
    values.convert_to_f32_slice(out);
}

thread_local! {
    /// A thread's band of half-precision weights widened to f32 for one GEMM.
    static WIDENED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` of rows `rows` of the column-major `outputs x inputs` matrix `values`, widened
/// to f32 (column-major, `rows.len()` rows) in this thread's [`WIDENED`] buffer. `f`
/// must not start work that other rayon tasks could run on this thread while it holds
/// the buffer: a one-thread GEMM.
fn widened_rows<H, R>(
    values: &[H],
    widen: impl Fn(&[H], &mut [f32]),
    (outputs, inputs): (usize, usize),
    rows: Range<usize>,
    f: impl FnOnce(MatRef<'_, f32>) -> R,
) -> R {
    let height = rows.len();
    if height == 0 {
        return f(MatRef::from_column_major_slice(&[], 0, inputs));
    }
    WIDENED.with_borrow_mut(|band| {
        band.clear();
        band.resize(height * inputs, 0.0);
        for (column, widened) in values.chunks_exact(outputs).zip(band.chunks_exact_mut(height)) {
            widen(&column[rows.clone()], widened);
        }
        f(MatRef::from_column_major_slice(band, height, inputs))
    })
}

/// `[W₁; W₂; ...] x + [b₁; b₂; ...]`: the outputs of dense layers that share their input,
/// stacked (a transformer's query, key and value projections), each layer's GEMM writing
/// its rows of the one output; `None` if a layer is not dense or the layers' inputs
/// differ.
///
/// # Errors
/// [`Error::Argument`] if `x` has not one row per input.
pub(crate) fn stacked_forward(
    layers: &[&Linear],
    x: &DMatrix<f32>,
) -> Option<Result<DMatrix<f32>>> {
    let inputs = layers.first()?.shape().1;
    let mut dense = Vec::with_capacity(layers.len());
    for layer in layers {
        let w = match &layer.weights {
            LinearWeights::Dense(w) => DenseRef::F32(w),
            LinearWeights::DenseHalf(h) => h.as_ref(),
            _ => return None,
        };
        if w.shape().1 != inputs {
            return None;
        }
        dense.push(w);
    }
    if x.nrows() != inputs {
        let name = &layers[0].name;
        let got = x.nrows();
        return Some(Err(Error::Argument(format!(
            "layer `{name}` takes {inputs} inputs, got {got}"
        ))));
    }
    let outputs = dense.iter().map(|w| w.shape().0).sum();
    let tokens = x.ncols();
    let mut y = zeroed(outputs, tokens);
    let mut all = MatMut::from_column_major_slice_mut(y.as_mut_slice(), outputs, tokens);
    let mut first = 0;
    for (&w, layer) in dense.iter().zip(layers) {
        let rows = w.shape().0;
        let dst = all.as_mut().submatrix_mut(first, 0, rows, tokens);
        dense_product(w, x, dst, Epilogue { bias: layer.bias.as_slice(), f: None });
        first += rows;
    }
    Some(Ok(y))
}

/// `layers` (sharing their inputs) as one layer whose outputs are theirs one after the
/// other, in the sparse format and value type they all run in, when that is N:M or CSR:
/// one product then copies the shared input once and splits one task list between the
/// threads, where three products of a transformer's query, key and value projections
/// each copy it and wait for their slowest task. Each output row gets the bits its own
/// layer gives (these formats sum every row on its own, whatever rows run beside it).
/// `None` for dense layers (see [`stacked_forward`]), other formats, or layers that
/// differ in format, value type or inputs.
///
/// # Errors
/// A format that cannot hold the stacked weights.
pub(crate) fn stacked(layers: &[&Linear]) -> Result<Option<Linear>> {
    let Some(first) = layers.first() else { return Ok(None) };
    let (format, values, inputs) = (first.format(), first.value_type(), first.shape().1);
    let stackable = matches!(format, Format::Nm(_) | Format::Csr);
    let alike =
        |l: &&Linear| l.format() == format && l.value_type() == values && l.shape().1 == inputs;
    if !stackable || !layers.iter().all(alike) {
        return Ok(None);
    }
    let parts: Vec<DMatrix<f32>> = layers.iter().map(|l| l.dense_weights()).collect();
    let outputs: usize = parts.iter().map(DMatrix::nrows).sum();
    let mut weights = DMatrix::zeros(outputs, inputs);
    let mut bias = DVector::zeros(outputs);
    let mut first_row = 0;
    for (part, layer) in parts.iter().zip(layers) {
        let rows = part.nrows();
        weights.rows_mut(first_row, rows).copy_from(part);
        bias.rows_mut(first_row, rows).copy_from(&layer.bias);
        first_row += rows;
    }
    let names: Vec<&str> = layers.iter().map(|l| l.name()).collect();
    let mut stacked = Linear::new(names.join("+"), weights, bias)?;
    if values == "f32" {
        stacked.set_f32_format(format)?;
    } else {
        stacked.set_format(format)?;
    }
    Ok((stacked.value_type() == values).then_some(stacked))
}

/// The layers a [`stacked`] layer was built from, and that layer (`None` where they do
/// not stack), kept while none of them changes: built at a forward pass's first use and
/// again after any of its layers changes. A clone starts empty.
#[derive(Debug, Default)]
pub(crate) struct StackedCache {
    built: Mutex<Option<Built>>,
}

/// The generations of the layers a [`StackedCache`] was built from, and what it built.
type Built = (Vec<u64>, Option<Arc<Linear>>);

impl Clone for StackedCache {
    fn clone(&self) -> Self {
        StackedCache::default()
    }
}

impl StackedCache {
    /// The [`stacked`] form of `layers` as they are now, building it if they changed
    /// since it was last built; `None` where they do not stack (or their stacked weights
    /// cannot be built, when the layers run apart, as they would unstacked).
    pub(crate) fn get(&self, layers: &[&Linear]) -> Option<Arc<Linear>> {
        let generations: Vec<u64> = layers.iter().map(|l| l.generation).collect();
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        match &*built {
            Some((of, stacked)) if *of == generations => stacked.clone(),
            _ => {
                let stacked = stacked(layers).ok().flatten().map(Arc::new);
                *built = Some((generations, stacked.clone()));
                stacked
            }
        }
    }
}

/// The token count up to which [`dense_product`] splits the output rows into bands of
/// [`BAND_ROWS`], each a one-thread GEMM on one of rayon's threads. faer's own parallel
/// GEMM has its threads meet at barriers inside the product, which costs more than it
/// shares in products this short; at thousands of tokens it is the faster of the two.
const ROW_SPLIT_MAX_TOKENS: usize = 256;

/// Output rows per band of a short product: a multiple of faer's f32 register tiles
/// (up to 96 rows), and few enough rows that a 384-output layer has work for four
/// threads. The bands follow from the shape alone, never from the thread count, so
/// neither do the outputs' bits.
const BAND_ROWS: usize = 96;

/// A zeroed `rows x cols` matrix for a product to write, zeroed on rayon's threads:
/// nalgebra's `zeros` writes it on the calling thread alone, while the pool's other
/// threads wait for the product and, waiting long enough, fall asleep (waking one
/// costs more than its share of a short product).
pub(crate) fn zeroed(rows: usize, cols: usize) -> DMatrix<f32> {
    use rayon::prelude::*;
    let len = rows * cols;
    let values: Vec<f32> = rayon::iter::repeat_n(0.0, len).with_min_len(1 << 14).collect();
    DMatrix::from_vec(rows, cols, values)
}

/// What follows a layer's product on each output: the bias added, then `f` if any.
#[derive(Debug, Clone, Copy)]
struct Epilogue<'a> {
    /// One per output row.
    bias: &'a [f32],
    f: Option<Elementwise>,
}

impl<'a> Epilogue<'a> {
    /// Applies the epilogue to `dst`, whose rows are the outputs `bias` stands for.
    fn apply_to(&self, dst: MatMut<'_, f32>) {
        for mut column in dst.col_iter_mut() {
            if let Some(column) = column.as_mut().try_as_col_major_mut() {
                self.apply_to_column(column.as_slice_mut());
            } else {
                // Not a column of a column-major output: through a copy, the same steps.
                let mut copy: Vec<f32> = column.as_mut().iter().copied().collect();
                self.apply_to_column(&mut copy);
                column.iter_mut().zip(copy).for_each(|(v, c)| *v = c);
            }
        }
    }

    fn apply_to_column(&self, column: &mut [f32]) {
        self.apply_to_rows(0, column);
    }

    /// Applies the epilogue to `piece`, the outputs from row `first_row` on.
    fn apply_to_rows(&self, first_row: usize, piece: &mut [f32]) {
        let bias = self.bias.get(first_row..).unwrap_or_default();
        piece.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        if let Some(f) = self.f {
            apply(f, piece);
        }
    }

    /// Applies the epilogue to `piece`, values of output `output` alone (part of a row of
    /// an output by rows).
    fn apply_to_output(&self, output: usize, piece: &mut [f32]) {
        if let Some(&b) = self.bias.get(output) {
            piece.iter_mut().for_each(|v| *v += b);
        }
        if let Some(f) = self.f {
            apply(f, piece);
        }
    }

    /// The epilogues of the rows before `at` and of the rows from `at` on.
    fn split_at(self, at: usize) -> (Epilogue<'a>, Epilogue<'a>) {
        let (upper, lower) = self.bias.split_at(at.min(self.bias.len()));
        (Epilogue { bias: upper, f: self.f }, Epilogue { bias: lower, f: self.f })
    }
}

/// `dst = epilogue(W x)` by faer's GEMM on rayon's threads (`dst` is not read).
fn dense_product(w: DenseRef<'_>, x: &DMatrix<f32>, mut dst: MatMut<'_, f32>, epilogue: Epilogue) {
    let rhs = MatRef::from_column_major_slice(x.as_slice(), x.nrows(), x.ncols());
    let outputs = w.shape().0;
    if x.ncols() <= ROW_SPLIT_MAX_TOKENS {
        product_in_row_bands(dst, w, 0..outputs, rhs, outputs.div_ceil(BAND_ROWS), epilogue);
        return;
    }
    // Long products widen half-precision weights whole: the copy is small beside them.
    let widened;
    let w = match w {
        DenseRef::F32(w) => w,
        DenseRef::Bf16(_) | DenseRef::F16(_) => {
            widened = w.to_f32();
            &widened
        }
    };
    let lhs = MatRef::from_column_major_slice(w.as_slice(), w.nrows(), w.ncols());
    faer::linalg::matmul::matmul(dst.as_mut(), Accum::Replace, lhs, rhs, 1.0, Par::rayon(0));
    apply_in_parallel(dst, epilogue);
}

/// [`Epilogue::apply_to`] on `dst`, its columns split across rayon's threads.
fn apply_in_parallel(dst: MatMut<'_, f32>, epilogue: Epilogue) {
    const COLUMNS: usize = 64;
    let tokens = dst.ncols();
    if tokens <= COLUMNS {
        epilogue.apply_to(dst);
        return;
    }
    let (left, right) = dst.split_at_col_mut((tokens / 2).next_multiple_of(COLUMNS).min(tokens));
    rayon::join(|| apply_in_parallel(left, epilogue), || apply_in_parallel(right, epilogue));
}

/// `dst = epilogue(W[rows, ..] rhs)` (`dst` is not read) in `parts` one-thread GEMMs on
/// bands of rows (whole vectors of 16, except the last), in parallel on rayon's threads;
/// each band's epilogue runs right after its product.
fn product_in_row_bands(
    mut dst: MatMut<'_, f32>,
    w: DenseRef<'_>,
    rows: Range<usize>,
    rhs: MatRef<'_, f32>,
    parts: usize,
    epilogue: Epilogue,
) {
    const BAND_ALIGN: usize = 16;
    let height = rows.len();
    if parts <= 1 || height <= BAND_ALIGN {
        w.with_rows(rows, |lhs| {
            faer::linalg::matmul::matmul(dst.as_mut(), Accum::Replace, lhs, rhs, 1.0, Par::Seq);
        });
        epilogue.apply_to(dst);
        return;
    }
    let upper_parts = parts / 2;
    let split = (height * upper_parts / parts).next_multiple_of(BAND_ALIGN).min(height);
    let (upper, lower) = dst.split_at_row_mut(split);
    let (upper_rows, lower_rows) = (rows.start..rows.start + split, rows.start + split..rows.end);
    let (epilogue_upper, epilogue_lower) = epilogue.split_at(split);
    rayon::join(
        || product_in_row_bands(upper, w, upper_rows, rhs, upper_parts, epilogue_upper),
        || product_in_row_bands(lower, w, lower_rows, rhs, parts - upper_parts, epilogue_lower),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> Linear {
        let w = DMatrix::from_fn(6, 8, |r, c| {
            if (r + c) % 3 == 0 { 0.0 } else { (r * 8 + c) as f32 * 0.1 - 2.0 }
        });
        Linear::new("l.weight", w, DVector::from_fn(6, |r, _| r as f32)).unwrap()
    }

    /// A layer's product by rows (input, output or both) gives the bits of its product
    /// by columns, with its bias and activation, in every format (the sparse formats
    /// whose kernels take rows, and the others, which copy into columns), in f32 and
    /// bf16; only N:M layers prefer rows.
    #[test]
    fn a_layer_by_rows_gives_the_bits_by_columns() {
        let (outputs, inputs) = (40, 36);
        let w = DMatrix::from_fn(outputs, inputs, |r, c| {
            let v = if (r + c) % 4 < 2 { ((r * 7 + c * 3) % 11) as f32 * 0.25 - 1.2 } else { 0.0 };
            bf16::from_f32(v).to_f32()
        });
        let bias = DVector::from_fn(outputs, |r, _| r as f32 * 0.1 - 2.0);
        let formats = [
            (Format::Csr, false),
            (Format::SlicedEll, false),
            (Format::Nm(shears_core::NmPattern::TWO_FOUR), true),
            (Format::Bsr(shears_core::BlockShape::new(2, 2).unwrap()), false),
            (Format::Compact, false),
            (Format::Dense, false),
        ];
        let (columns, rows) = (Orientation::Columns, Orientation::Rows);
        let layouts = [(columns, columns), (rows, columns), (columns, rows), (rows, rows)];
        for (format, prefers_rows) in formats {
            for half in [false, true] {
                let mut layer = Linear::new("l.weight", w.clone(), bias.clone()).unwrap();
                if half {
                    layer.set_format(format).unwrap();
                } else {
                    layer.set_f32_format(format).unwrap();
                }
                assert_eq!(layer.prefers_rows(), prefers_rows, "{format}");
                for tokens in [1, 5, 70] {
                    let x = DMatrix::from_fn(inputs, tokens, |r, c| ((r * 5 + c) % 9) as f32 - 4.0);
                    let want = layer.forward_then(&x, Some(Elementwise::Gelu)).unwrap();
                    for (x_by, y_by) in layouts {
                        let layout = Layout::new(x_by, y_by);
                        let input = if x_by == rows { x.transpose() } else { x.clone() };
                        let got = layer.forward_oriented(&input, layout, Some(Elementwise::Gelu));
                        let got = got.unwrap();
                        let got = if y_by == rows { got.transpose() } else { got };
                        let bits =
                            |m: &DMatrix<f32>| m.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        let case = format!("{format}, half {half}, {tokens} tokens, {layout:?}");
                        assert!(bits(&got) == bits(&want), "{case}");
                    }
                    let wrong = DMatrix::zeros(tokens, inputs + 1);
                    assert!(layer.forward_oriented(&wrong, Layout::new(rows, rows), None).is_err());
                }
            }
        }
    }

    /// Layers stacked in N:M or CSR, with f32 or bf16 values, give each layer's own bits
    /// in its rows; dense layers and layers of different formats or value types do not
    /// stack.
    #[test]
    fn stacked_layers_give_each_layer_its_own_bits() {
        // 2 of every 4 columns kept per row, values exact in bf16.
        let weights = |seed: usize, rows: usize| {
            DMatrix::from_fn(rows, 8, |r, c| {
                let kept = (c + r + seed) % 4 < 2;
                if kept { ((r * 8 + c + seed) % 13) as f32 * 0.125 - 0.625 } else { 0.0 }
            })
        };
        let layer = |seed: usize, format: Format, half: bool| {
            let rows = 4 + seed;
            let bias = DVector::from_fn(rows, |r, _| r as f32 * 0.5 - seed as f32);
            let mut l = Linear::new(format!("l{seed}"), weights(seed, rows), bias).unwrap();
            if half { l.set_format(format) } else { l.set_f32_format(format) }.unwrap();
            l
        };
        let x = DMatrix::from_fn(8, 37, |r, c| ((r * 37 + c) as f32 * 0.11).cos());
        let bits = |m: &DMatrix<f32>| m.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let two_four = Format::Nm(shears_core::NmPattern::TWO_FOUR);
        for (format, half) in [(two_four, false), (Format::Csr, false), (Format::Csr, true)] {
            let layers: Vec<Linear> = (0..3).map(|i| layer(i, format, half)).collect();
            let values = if half { "bf16" } else { "f32" };
            assert!(layers.iter().all(|l| l.value_type() == values));
            let refs: Vec<&Linear> = layers.iter().collect();
            let stacked = stacked(&refs).unwrap().expect("stacks");
            assert_eq!((stacked.format(), stacked.value_type()), (format, values));
            let y = stacked.forward(&x).unwrap();
            assert_eq!(y.shape(), (4 + 5 + 6, 37));
            let mut first = 0;
            for l in &layers {
                let own = l.forward(&x).unwrap();
                let rows = y.rows(first, own.nrows()).into_owned();
                assert_eq!(bits(&rows), bits(&own), "{format} {values}: {}", l.name());
                first += own.nrows();
            }
        }
        let dense: Vec<Linear> = (0..3).map(|i| layer(i, Format::Dense, false)).collect();
        assert!(stacked(&dense.iter().collect::<Vec<_>>()).unwrap().is_none());
        let (nm, csr) = (layer(0, two_four, false), layer(1, Format::Csr, false));
        assert!(stacked(&[&nm, &csr]).unwrap().is_none());
        let half_csr = layer(2, Format::Csr, true);
        assert!(stacked(&[&csr, &half_csr]).unwrap().is_none());
    }

    /// The cache keeps its stacked layer while the layers stay as they were, and builds
    /// it again from their new weights after any of them changes.
    #[test]
    fn the_stacked_cache_follows_its_layers() {
        let two_four = Format::Nm(shears_core::NmPattern::TWO_FOUR);
        let weights = |scale: f32| {
            DMatrix::from_fn(
                4,
                8,
                |r, c| if (r + c) % 2 == 0 { scale * (r + c) as f32 } else { 0.0 },
            )
        };
        let layer = |name: &str, scale: f32| {
            let mut l = Linear::new(name, weights(scale), DVector::zeros(4)).unwrap();
            l.set_f32_format(two_four).unwrap();
            l
        };
        let (a, mut b) = (layer("a", 1.0), layer("b", 2.0));
        let cache = StackedCache::default();
        let first = cache.get(&[&a, &b]).expect("stacks");
        assert!(Arc::ptr_eq(&first, &cache.get(&[&a, &b]).unwrap()));
        b.set_dense(weights(3.0)).unwrap();
        assert!(cache.get(&[&a, &b]).is_none(), "a dense layer does not stack");
        b.set_f32_format(two_four).unwrap();
        let rebuilt = cache.get(&[&a, &b]).expect("stacks again");
        assert!(!Arc::ptr_eq(&first, &rebuilt));
        let x = DMatrix::from_fn(8, 3, |r, c| (r + c) as f32);
        let y = rebuilt.forward(&x).unwrap();
        assert_eq!(y.rows(4, 4).into_owned(), b.forward(&x).unwrap());
        assert!(cache.clone().built.lock().unwrap().is_none(), "a clone starts empty");
    }

    #[test]
    fn every_format_computes_the_dense_product() {
        let x = DMatrix::from_fn(8, 5, |r, c| (r as f32 - c as f32) * 0.25);
        let l = layer();
        let w = l.dense_weights();
        let mut expected = &w * &x;
        for mut col in expected.column_iter_mut() {
            col += l.bias();
        }
        assert!((l.forward(&x).unwrap() - &expected).abs().max() < 1e-5);
        for format in [Format::Csr, Format::SlicedEll, Format::Dense] {
            let mut sparse = l.clone();
            sparse.set_format(format).unwrap();
            assert_eq!(sparse.format(), format);
            assert_eq!(sparse.dense_weights(), w);
            let got = sparse.forward(&x).unwrap();
            assert!((got - &expected).abs().max() < 1e-5, "{format:?}");
        }
    }

    /// Weights exact in bf16 (or, failing that, f16) run CSR and N:M with those values,
    /// and give the bits of the f32 format; weights exact in neither stay f32, and other
    /// formats always do.
    #[test]
    fn half_precision_values_give_the_f32_formats_bits() {
        let x = DMatrix::from_fn(8, 5, |r, c| (r as f32 - c as f32) * 0.37);
        let l = layer();
        let nm_mask = |w: &DMatrix<f32>| {
            DMatrix::from_fn(6, 8, |r, c| if c % 4 < 2 { w[(r, c)] } else { 0.0 })
        };
        let as_bf16 = l.dense_weights().map(|w| bf16::from_f32(w).to_f32());
        let as_f16 = DMatrix::from_fn(6, 8, |r, c| {
            // Exact in f16 (11 significant bits), not in bf16 (8).
            if (r + c) % 3 == 0 { 0.0 } else { 1.0 + (r * 8 + c) as f32 / 1024.0 }
        });
        let f32_only = l.dense_weights().map(|w| w + 1e-6);
        let two_four = Format::Nm(shears_sparse::NmPattern::TWO_FOUR);
        let cases = [
            (as_bf16.clone(), Format::Csr, "bf16"),
            (nm_mask(&as_bf16), two_four, "bf16"),
            (as_f16.clone(), Format::Csr, "f16"),
            (nm_mask(&as_f16), two_four, "f16"),
            (f32_only.clone(), Format::Csr, "f32"),
            (nm_mask(&f32_only), two_four, "f32"),
            (as_bf16.clone(), Format::SlicedEll, "f32"),
        ];
        for (weights, format, values) in cases {
            let mut half = l.clone();
            half.set_dense(weights.clone()).unwrap();
            half.set_format(format).unwrap();
            assert_eq!((half.format(), half.value_type()), (format, values));
            assert_eq!(half.dense_weights(), weights, "{format:?} {values}");
            let kept = Mask::from_fn(6, 8, |r, c| weights[(r, c)] != 0.0).unwrap();
            let f32_format = AnySparse::from_dense_masked(&weights, &kept, format).unwrap();
            let mut expected = f32_format.matmul(&x).unwrap();
            for mut column in expected.column_iter_mut() {
                column += l.bias();
            }
            let got = half.forward(&x).unwrap();
            assert_eq!(got, expected, "{format:?} {values}");
        }
        let mut wide = l.clone();
        wide.set_dense(as_bf16.clone()).unwrap();
        wide.set_format(Format::Dense).unwrap();
        assert_eq!(wide.value_type(), "bf16");
        wide.set_f32_format(Format::Csr).unwrap();
        assert_eq!((wide.format(), wide.value_type()), (Format::Csr, "f32"));
        // An infinite weight keeps f32 (half formats hold finite values only).
        let mut infinite = as_bf16;
        infinite[(0, 1)] = f32::INFINITY;
        wide.set_dense(infinite).unwrap();
        wide.set_format(Format::Csr).unwrap();
        assert_eq!(wide.value_type(), "f32");
        // Past 65 536 columns the column indices widen to u32.
        let cols = 70_000;
        let w =
            DMatrix::from_fn(2, cols, |r, c| if (r + c) % 5 == 0 { (c % 7) as f32 } else { 0.0 });
        let mut long = Linear::new("long.weight", w.clone(), DVector::zeros(2)).unwrap();
        long.set_format(Format::Csr).unwrap();
        assert_eq!(long.value_type(), "bf16");
        assert_eq!(long.dense_weights(), w);
        let x = DMatrix::from_fn(cols, 3, |r, c| ((r + c) % 3) as f32);
        assert_eq!(long.forward(&x).unwrap(), &w * &x);
    }

    /// Dense weights exact in bf16 (else f16) are kept in it and give the f32 layer's
    /// bits: in bands of rows (up to 256 tokens), widened whole (past them), and stacked.
    #[test]
    fn half_precision_dense_weights_give_the_f32_bits() {
        let as_bf16 = filled(200, 40, 3).map(|v| bf16::from_f32(v).to_f32());
        let as_f16 = DMatrix::from_fn(200, 40, |r, c| 1.0 + ((r * 40 + c) % 1000) as f32 / 1024.0);
        let bias = DVector::from_fn(200, |r, _| r as f32 * 0.01);
        for (weights, values) in [(as_bf16, "bf16"), (as_f16, "f16")] {
            let f32_layer = Linear::new("l.weight", weights.clone(), bias.clone()).unwrap();
            let mut half = f32_layer.clone();
            half.set_format(Format::Dense).unwrap();
            assert_eq!((half.format(), half.value_type()), (Format::Dense, values));
            assert_eq!(half.dense_weights(), weights);
            for tokens in [1, 7, ROW_SPLIT_MAX_TOKENS, ROW_SPLIT_MAX_TOKENS + 44] {
                let x = DMatrix::from_fn(40, tokens, |r, c| ((r * 3 + c) % 11) as f32 * 0.1 - 0.5);
                let case = format!("{values}, {tokens} tokens");
                assert_eq!(half.forward(&x).unwrap(), f32_layer.forward(&x).unwrap(), "{case}");
                let stacked = |l: &Linear| stacked_forward(&[l, l], &x).unwrap().unwrap();
                assert_eq!(stacked(&half), stacked(&f32_layer), "{case}");
            }
        }
    }

    fn filled(rows: usize, cols: usize, seed: usize) -> DMatrix<f32> {
        DMatrix::from_fn(rows, cols, |r, c| ((r * 31 + c * 17 + seed) % 23) as f32 * 0.125 - 1.4)
    }

    /// Within a float's rounding of nalgebra's product (faer and nalgebra may sum in
    /// different orders).
    #[track_caller]
    fn assert_close(got: &DMatrix<f32>, expected: &DMatrix<f32>, context: &str) {
        assert_eq!(got.shape(), expected.shape(), "{context}");
        for (g, e) in got.iter().zip(expected.iter()) {
            assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{context}: {g} against {e}");
        }
    }

    /// `W x` by [`dense_product`] on `threads` threads, into an output that starts as
    /// NaN (a row no band writes stays NaN).
    fn product_on(threads: usize, w: &DMatrix<f32>, x: &DMatrix<f32>) -> DMatrix<f32> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut y = DMatrix::from_element(w.nrows(), x.ncols(), f32::NAN);
        let dst = MatMut::from_column_major_slice_mut(y.as_mut_slice(), w.nrows(), x.ncols());
        let zeros = vec![0.0; w.nrows()];
        let w = DenseRef::F32(w);
        pool.install(|| dense_product(w, x, dst, Epilogue { bias: &zeros, f: None }));
        y
    }

    /// The bias and activation applied to each band (or, past the band's token count,
    /// after faer's parallel GEMM) give the bits of the same steps run one after the
    /// other on the whole output, on any thread count.
    #[test]
    fn fused_epilogues_equal_the_steps_run_apart() {
        let shapes = [(385, 24, 9), (200, 16, ROW_SPLIT_MAX_TOKENS + 70), (17, 5, 1)];
        for (rows, inputs, tokens) in shapes {
            let (w, x) = (filled(rows, inputs, rows), filled(inputs, tokens, 3));
            let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.37 - 20.0).collect();
            for f in [None, Some(Elementwise::Gelu), Some(Elementwise::Relu)] {
                let mut apart = product_on(1, &w, &x);
                for mut column in apart.column_iter_mut() {
                    for (v, b) in column.iter_mut().zip(&bias) {
                        *v += b;
                    }
                    if let Some(f) = f {
                        apply(f, column.as_mut_slice());
                    }
                }
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
                    let mut y = DMatrix::from_element(rows, tokens, f32::NAN);
                    let dst = MatMut::from_column_major_slice_mut(y.as_mut_slice(), rows, tokens);
                    let epilogue = Epilogue { bias: &bias, f };
                    let w = DenseRef::F32(&w);
                    pool.unwrap().install(|| dense_product(w, &x, dst, epilogue));
                    let same = y.iter().zip(apart.iter()).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{rows}x{inputs} by {tokens}, {f:?}, {threads} threads");
                }
            }
        }
    }

    /// An output whose columns are not contiguous (a transposed view) gets the same
    /// bits as a column-major one.
    #[test]
    fn epilogues_on_strided_columns_equal_contiguous_ones() {
        let bias: Vec<f32> = (0..7).map(|r| r as f32 * 0.5 - 1.0).collect();
        let epilogue = Epilogue { bias: &bias, f: Some(Elementwise::Gelu) };
        let y = filled(7, 5, 1);
        let mut contiguous = y.clone();
        epilogue.apply_to(MatMut::from_column_major_slice_mut(contiguous.as_mut_slice(), 7, 5));
        // The transpose's storage, read as 5x7 column-major, is `y` transposed.
        let mut t = y.transpose();
        let view = MatMut::from_column_major_slice_mut(t.as_mut_slice(), 5, 7).transpose_mut();
        epilogue.apply_to(view);
        assert_eq!(t.transpose(), contiguous);
        assert_ne!(contiguous, y);
    }

    /// A matrix zeroed on rayon's threads is all zeros, at every size around its
    /// chunks' length.
    #[test]
    fn zeroed_matrices_are_zero() {
        for (rows, cols) in [(0, 3), (3, 0), (1, 1), (128, 128), (129, 127), (384, 1000)] {
            assert_eq!(zeroed(rows, cols), DMatrix::zeros(rows, cols), "{rows}x{cols}");
        }
    }

    /// Bands cover every output once, whatever the rows' count against the bands'
    /// sizes, and the outputs' bits do not depend on the thread count; on both sides of
    /// the token count where faer's own parallel GEMM takes over.
    #[test]
    fn dense_products_do_not_depend_on_the_thread_count() {
        let shapes =
            [(0, 8, 3), (1, 24, 5), (15, 24, 0), (16, 24, 1), (17, 600, 5)].into_iter().chain([
                (97, 40, 2),
                (385, 24, 9),
                (384, 384, 128),
                (200, 16, ROW_SPLIT_MAX_TOKENS + 3),
            ]);
        for (rows, inputs, tokens) in shapes {
            let w = filled(rows, inputs, rows);
            let x = filled(inputs, tokens, 3);
            let one = product_on(1, &w, &x);
            let context = format!("{rows}x{inputs} by {tokens} tokens");
            assert_close(&one, &(&w * &x), &context);
            for threads in [2, 3, 8] {
                let got = product_on(threads, &w, &x);
                let same = got.iter().zip(one.iter()).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{context} on {threads} threads differs from one thread");
            }
        }
    }

    /// However many bands, every output row is written once, from f32 weights and from
    /// half-precision ones widened a band at a time.
    #[test]
    fn row_bands_cover_every_row() {
        for rows in [1, 15, 16, 17, 33, 100, 385] {
            let (w, x) = (filled(rows, 24, rows), filled(24, 5, 3));
            let (as_bf16, as_f16) = (w.map(bf16::from_f32), w.map(f16::from_f32));
            let weights = [
                (DenseRef::F32(&w), w.clone()),
                (DenseRef::Bf16(&as_bf16), as_bf16.map(bf16::to_f32)),
                (DenseRef::F16(&as_f16), as_f16.map(f16::to_f32)),
            ];
            for (w, exact) in weights {
                for parts in [1, 2, 3, 5, 64] {
                    let mut y = DMatrix::from_element(rows, 5, f32::NAN);
                    let dst = MatMut::from_column_major_slice_mut(y.as_mut_slice(), rows, 5);
                    let rhs = MatRef::from_column_major_slice(x.as_slice(), 24, 5);
                    let zeros = vec![0.0; rows];
                    let epilogue = Epilogue { bias: &zeros, f: None };
                    product_in_row_bands(dst, w, 0..rows, rhs, parts, epilogue);
                    assert_close(&y, &(&exact * &x), &format!("{rows} rows in {parts} bands"));
                }
            }
        }
    }

    /// Stacked dense layers give each layer's own outputs, on both sides of the token
    /// count where the GEMM changes its threading, on three threads so that the bands
    /// split the stacked output's rows.
    #[test]
    fn stacked_layers_give_each_layers_outputs() {
        let sizes = [40, 8, 33];
        let weights: Vec<DMatrix<f32>> = sizes.iter().map(|&o| filled(o, 12, o)).collect();
        let biases: Vec<DVector<f32>> =
            sizes.iter().map(|&o| DVector::from_fn(o, |r, _| r as f32 * 0.5)).collect();
        let layers: Vec<Linear> = weights
            .iter()
            .zip(&biases)
            .map(|(w, b)| Linear::new(format!("l{}.weight", w.nrows()), w.clone(), b.clone()))
            .collect::<Result<_>>()
            .unwrap();
        let refs: Vec<&Linear> = layers.iter().collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        pool.install(|| {
            for tokens in [0, 1, 7, ROW_SPLIT_MAX_TOKENS, ROW_SPLIT_MAX_TOKENS + 1] {
                let x = filled(12, tokens, tokens);
                let stacked = stacked_forward(&refs, &x).unwrap().unwrap();
                assert_eq!(stacked.shape(), (81, tokens));
                let mut first = 0;
                for ((w, b), layer) in weights.iter().zip(&biases).zip(&layers) {
                    let mut expected = w * &x;
                    for mut column in expected.column_iter_mut() {
                        column += b;
                    }
                    let rows = stacked.rows(first, w.nrows()).into_owned();
                    let context = format!("{} at {tokens} tokens", layer.name());
                    assert_close(&rows, &expected, &context);
                    assert_close(&layer.forward(&x).unwrap(), &expected, &context);
                    first += w.nrows();
                }
            }
        });
        assert!(stacked_forward(&refs, &filled(11, 3, 0)).unwrap().is_err());
        let mut sparse = layers[1].clone();
        sparse.set_format(Format::Csr).unwrap();
        assert!(stacked_forward(&[&layers[0], &sparse], &filled(12, 3, 0)).is_none());
        let other_inputs = Linear::new("o.weight", filled(4, 5, 0), DVector::zeros(4)).unwrap();
        assert!(stacked_forward(&[&layers[0], &other_inputs], &filled(12, 3, 0)).is_none());
    }

    /// A layer built from `Wᵀ`, as a checkpoint stores it, is the layer built from `W`.
    #[test]
    fn transposed_weights_build_the_same_layer() {
        let w = filled(6, 9, 4);
        let bias = DVector::from_fn(6, |r, _| r as f32);
        let from_w = Linear::new("a.weight", w.clone(), bias.clone()).unwrap();
        let from_wt = Linear::from_transposed("a.weight", w.transpose(), bias).unwrap();
        assert_eq!(from_wt.shape(), (6, 9));
        assert_eq!(from_wt.dense_weights(), w);
        let x = filled(9, 4, 1);
        assert_eq!(from_wt.forward(&x).unwrap(), from_w.forward(&x).unwrap());
        assert!(Linear::from_transposed("b", DMatrix::zeros(3, 2), DVector::zeros(3)).is_err());
    }

    #[test]
    fn shapes_are_checked() {
        let mut l = layer();
        assert!(l.forward(&DMatrix::zeros(7, 2)).is_err());
        assert!(l.set_dense(DMatrix::zeros(8, 6)).is_err());
        assert!(Linear::new("x", DMatrix::zeros(2, 2), DVector::zeros(3)).is_err());
        assert_eq!(l.forward(&DMatrix::zeros(8, 0)).unwrap().shape(), (6, 0));
        // A layer of no inputs takes an empty `x` of any width; an output too large to
        // address is refused rather than wrapped.
        let none_in = Linear::new("n", DMatrix::zeros(2, 0), DVector::zeros(2)).unwrap();
        let err = none_in.forward(&DMatrix::zeros(0, usize::MAX / 2)).unwrap_err();
        assert!(err.to_string().contains("more values than can be addressed"), "{err}");
        assert_eq!(none_in.forward(&DMatrix::zeros(0, 3)).unwrap(), DMatrix::zeros(2, 3));
    }
}
