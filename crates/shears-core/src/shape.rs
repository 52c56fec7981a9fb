//! [`WeightShape`]: how a weight tensor is viewed as the matrix that masks and selection use.

use std::ops::Range;

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::Scalar;
use crate::error::{Error, Result};

/// The longest side of an array shears accepts, from callers and from files alike: a
/// vector of one 8-byte count per index along it (a mask's kept weights per row or per
/// column, say) can be addressed. An array with a zero side has no elements, whatever its
/// other sides, so its sides are bounded by this rather than by its size.
pub const MAX_SIDE: usize = isize::MAX as usize / size_of::<u64>();

/// The element count of an array of `dims` holding `T`s, if its bytes can be addressed
/// (at most `isize::MAX`, what Rust allows one allocation). nalgebra multiplies a
/// matrix's dimensions unchecked, so sizes from callers or files are checked here before
/// a matrix is made of them: a wrapped count would give storage shorter than the shape.
///
/// ```
/// use shears_core::check_addressable;
/// assert_eq!(check_addressable::<f32>(&[3, 4])?, 12);
/// assert!(check_addressable::<f32>(&[1 << (usize::BITS / 2), 1 << (usize::BITS / 2)]).is_err());
/// # Ok::<(), shears_core::Error>(())
/// ```
///
/// # Errors
/// [`Error::DimensionOverflow`] naming `dims` when the bytes would pass `isize::MAX`.
pub fn check_addressable<T>(dims: &[usize]) -> Result<usize> {
    let elements = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    elements
        .filter(|&n| n.checked_mul(size_of::<T>()).is_some_and(|b| b <= isize::MAX as usize))
        .ok_or_else(|| Error::DimensionOverflow { dims: dims.to_vec() })
}

/// A `nrows x ncols` matrix of zeros, for sizes from callers or files: an `Err` rather
/// than an overflow when its bytes could not be addressed, and rather than an abort when
/// the allocator has no memory for them (a file of a few bytes may describe a matrix of
/// no elements whose products have outputs of exabytes).
///
/// ```
/// use shears_core::try_zeros;
/// assert_eq!(try_zeros::<f32>(2, 3)?.shape(), (2, 3));
/// assert!(try_zeros::<f32>(shears_core::MAX_SIDE, 2).is_err());
/// # Ok::<(), shears_core::Error>(())
/// ```
///
/// # Errors
/// [`Error::DimensionOverflow`] as [`check_addressable`]; [`Error::OutOfMemory`] when the
/// allocation fails.
pub fn try_zeros<T: Scalar>(nrows: usize, ncols: usize) -> Result<DMatrix<T>> {
    let dims = [nrows, ncols];
    let len = check_addressable::<T>(&dims)?;
    let mut values = Vec::new();
    values
        .try_reserve_exact(len)
        .map_err(|_| Error::OutOfMemory { dims: dims.to_vec(), bytes: len * size_of::<T>() })?;
    values.resize(len, T::zero());
    Ok(DMatrix::from_vec(nrows, ncols, values))
}

/// The shape of a prunable weight and its matrix view.
///
/// - A fully connected weight `(out_features, in_features)` is its own matrix: an output
///   neuron is a row (PyTorch and safetensors layout; `y = W x`).
/// - A convolution weight `(out_channels, in_channels, kh, kw)` is viewed as the matrix
///   `(out_channels, in_channels * kh * kw)`: a filter is a row and an input channel is a
///   group of `kh * kw` adjacent columns. Its row-major data *is* that matrix's row-major
///   data, so no element moves.
///
/// # Invariants
/// Every dimension product fits in `usize` (checked by every constructor).
///
/// # Examples
/// ```
/// use shears_core::WeightShape;
/// let conv = WeightShape::conv(64, 3, 3, 3)?;
/// assert_eq!(conv.matrix_shape(), (64, 27));
/// assert_eq!(conv.channel_columns(1), Some(9..18));
/// assert_eq!(WeightShape::from_dims(&[10, 20])?, WeightShape::dense(10, 20)?);
/// assert!(WeightShape::from_dims(&[10]).is_err());
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<usize>", into = "Vec<usize>")]
pub struct WeightShape {
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Dense { rows: usize, cols: usize },
    Conv { out_channels: usize, in_channels: usize, kh: usize, kw: usize },
}

impl WeightShape {
    /// A fully connected weight `(rows, cols)` = `(out_features, in_features)`.
    ///
    /// # Errors
    /// [`Error::DimensionOverflow`] if the element count does not fit in `usize`.
    pub fn dense(rows: usize, cols: usize) -> Result<Self> {
        rows.checked_mul(cols).ok_or(Error::DimensionOverflow { dims: vec![rows, cols] })?;
        Ok(WeightShape { kind: Kind::Dense { rows, cols } })
    }

    /// The fully connected weight of `matrix`'s shape (its elements exist, so their
    /// count fits).
    pub fn of_matrix<T: Scalar>(matrix: &DMatrix<T>) -> Self {
        WeightShape { kind: Kind::Dense { rows: matrix.nrows(), cols: matrix.ncols() } }
    }

    /// A convolution weight `(out_channels, in_channels, kh, kw)`.
    ///
    /// # Errors
    /// [`Error::DimensionOverflow`] if the element count does not fit in `usize`.
    pub fn conv(out_channels: usize, in_channels: usize, kh: usize, kw: usize) -> Result<Self> {
        let dims = vec![out_channels, in_channels, kh, kw];
        let overflow = || Error::DimensionOverflow { dims: dims.clone() };
        let cols =
            in_channels.checked_mul(kh).and_then(|x| x.checked_mul(kw)).ok_or_else(overflow)?;
        out_channels.checked_mul(cols).ok_or_else(overflow)?;
        Ok(WeightShape { kind: Kind::Conv { out_channels, in_channels, kh, kw } })
    }

    /// The shape of a tensor from its dimensions: 2-D is dense, 4-D is a convolution.
    ///
    /// # Errors
    /// [`Error::UnsupportedRank`] for any other rank; [`Error::DimensionOverflow`] if the
    /// element count does not fit in `usize`.
    pub fn from_dims(dims: &[usize]) -> Result<Self> {
        match *dims {
            [rows, cols] => WeightShape::dense(rows, cols),
            [o, i, kh, kw] => WeightShape::conv(o, i, kh, kw),
            _ => Err(Error::UnsupportedRank { dims: dims.to_vec() }),
        }
    }

    /// The tensor's own dimensions (2 or 4 of them).
    pub fn dims(&self) -> Vec<usize> {
        match self.kind {
            Kind::Dense { rows, cols } => vec![rows, cols],
            Kind::Conv { out_channels, in_channels, kh, kw } => {
                vec![out_channels, in_channels, kh, kw]
            }
        }
    }

    /// The matrix view `(rows, cols)`.
    pub fn matrix_shape(&self) -> (usize, usize) {
        match self.kind {
            Kind::Dense { rows, cols } => (rows, cols),
            Kind::Conv { out_channels, in_channels, kh, kw } => {
                (out_channels, in_channels * kh * kw)
            }
        }
    }

    /// Rows of the matrix view (output neurons or filters).
    pub fn rows(&self) -> usize {
        self.matrix_shape().0
    }

    /// Columns of the matrix view.
    pub fn cols(&self) -> usize {
        self.matrix_shape().1
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        let (r, c) = self.matrix_shape();
        r * c
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is a convolution weight.
    pub fn is_conv(&self) -> bool {
        matches!(self.kind, Kind::Conv { .. })
    }

    /// `(out_channels, in_channels, kh, kw)` for a convolution weight.
    pub fn conv_dims(&self) -> Option<(usize, usize, usize, usize)> {
        match self.kind {
            Kind::Conv { out_channels, in_channels, kh, kw } => {
                Some((out_channels, in_channels, kh, kw))
            }
            Kind::Dense { .. } => None,
        }
    }

    /// Input channels of a convolution weight.
    pub fn in_channels(&self) -> Option<usize> {
        self.conv_dims().map(|(_, i, _, _)| i)
    }

    /// The matrix columns of input channel `channel` of a convolution weight.
    pub fn channel_columns(&self, channel: usize) -> Option<Range<usize>> {
        let (_, in_channels, kh, kw) = self.conv_dims()?;
        (channel < in_channels).then(|| channel * kh * kw..(channel + 1) * kh * kw)
    }
}

impl TryFrom<Vec<usize>> for WeightShape {
    type Error = Error;
    fn try_from(dims: Vec<usize>) -> Result<Self> {
        WeightShape::from_dims(&dims)
    }
}

impl From<WeightShape> for Vec<usize> {
    fn from(shape: WeightShape) -> Vec<usize> {
        shape.dims()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zeros of a size that can be addressed but not allocated are an error naming the
    /// shape and the bytes, not an abort; of an unaddressable size, an overflow.
    #[test]
    fn zeros_that_cannot_be_allocated_are_an_error() {
        assert_eq!(try_zeros::<f64>(3, 2).unwrap(), DMatrix::zeros(3, 2));
        assert_eq!(try_zeros::<f32>(MAX_SIDE, 0).unwrap().shape(), (MAX_SIDE, 0));
        let err = try_zeros::<f32>(MAX_SIDE, 2).unwrap_err();
        let bytes = MAX_SIDE * 2 * 4;
        assert_eq!(err, Error::OutOfMemory { dims: vec![MAX_SIDE, 2], bytes });
        assert!(err.to_string().starts_with("no memory for an array of shape"), "{err}");
        let err = try_zeros::<f32>(MAX_SIDE, 4).unwrap_err();
        assert_eq!(err, Error::DimensionOverflow { dims: vec![MAX_SIDE, 4] });
    }

    #[test]
    fn conv_view() {
        let s = WeightShape::conv(4, 2, 3, 3).unwrap();
        assert_eq!(s.matrix_shape(), (4, 18));
        assert_eq!(s.dims(), vec![4, 2, 3, 3]);
        assert_eq!(s.channel_columns(0), Some(0..9));
        assert_eq!(s.channel_columns(2), None);
        assert_eq!(s.in_channels(), Some(2));
        assert!(s.is_conv());
        assert_eq!(WeightShape::dense(3, 4).unwrap().channel_columns(0), None);
    }

    #[test]
    fn errors() {
        assert!(matches!(WeightShape::from_dims(&[1, 2, 3]), Err(Error::UnsupportedRank { .. })));
        assert!(matches!(
            WeightShape::from_dims(&[usize::MAX, 2]),
            Err(Error::DimensionOverflow { .. })
        ));
        assert!(matches!(
            WeightShape::conv(2, usize::MAX, 2, 1),
            Err(Error::DimensionOverflow { .. })
        ));
        assert!(matches!(
            WeightShape::conv(usize::MAX, 2, 1, 1),
            Err(Error::DimensionOverflow { .. })
        ));
        // 2^32 x 2^32 wraps to 0 elements in release arithmetic: an "empty" shape.
        let wraps = 1usize << (usize::BITS / 2);
        assert_eq!(
            WeightShape::dense(wraps, wraps),
            Err(Error::DimensionOverflow { dims: vec![wraps, wraps] })
        );
        let m = DMatrix::<f32>::zeros(3, 5);
        assert_eq!(WeightShape::of_matrix(&m), WeightShape::dense(3, 5).unwrap());
        // Bytes, not only elements, must be addressable: the bound is isize::MAX bytes.
        let most = isize::MAX as usize;
        assert_eq!(check_addressable::<u8>(&[most]), Ok(most));
        assert!(check_addressable::<f64>(&[most / 8 + 1]).is_err());
        assert_eq!(check_addressable::<f64>(&[0, usize::MAX]), Ok(0));
        assert_eq!(check_addressable::<f32>(&[]), Ok(1));
    }
}
