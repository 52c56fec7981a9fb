//! Zeroed matrices and vectors of caller-given sizes, refused when their bytes could not
//! be addressed or allocated: nalgebra multiplies the dimensions unchecked, and a product
//! that wraps would give a matrix whose storage is shorter than its shape.

use nalgebra::{DMatrix, DVector};
use shears_core::{Result, Scalar};

/// A `nrows x ncols` matrix of zeros.
///
/// # Errors
/// [`shears_core::Error::DimensionOverflow`] if its bytes exceed `isize::MAX`,
/// [`shears_core::Error::OutOfMemory`] if they cannot be allocated.
pub(crate) fn zeros<T: Scalar>(nrows: usize, ncols: usize) -> Result<DMatrix<T>> {
    shears_core::try_zeros(nrows, ncols)
}

/// A vector of `len` zeros.
///
/// # Errors
/// [`shears_core::Error::DimensionOverflow`] if its bytes exceed `isize::MAX`,
/// [`shears_core::Error::OutOfMemory`] if they cannot be allocated.
pub(crate) fn zeros_vector<T: Scalar>(len: usize) -> Result<DVector<T>> {
    let column = shears_core::try_zeros(len, 1)?;
    Ok(DVector::from_vec(column.data.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_whose_bytes_cannot_be_addressed_are_refused() {
        // 2^32 * 2^32 wraps to 0 elements in release arithmetic.
        let wraps = 1usize << (usize::BITS / 2);
        for (r, c) in [(wraps, wraps), (usize::MAX, 1), (isize::MAX as usize / 2, 2)] {
            let err = zeros::<f32>(r, c).unwrap_err();
            assert!(err.to_string().contains("too large for this machine"), "{err}");
        }
        assert!(zeros_vector::<f64>(usize::MAX / 4).is_err());
    }

    #[test]
    fn addressable_sizes_give_zeros() {
        assert_eq!(zeros::<f32>(2, 3).unwrap(), DMatrix::zeros(2, 3));
        assert_eq!(zeros::<f64>(0, 7).unwrap().shape(), (0, 7));
        assert_eq!(zeros_vector::<f64>(4).unwrap(), DVector::zeros(4));
    }
}
