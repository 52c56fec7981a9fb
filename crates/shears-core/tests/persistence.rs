//! Mask serialisation round-trips and corruption handling.

use proptest::prelude::*;
use shears_core::{Error, Mask, proptest as arb};

proptest! {
    #[test]
    fn bytes_round_trip(m in arb::any_mask(40)) {
        prop_assert_eq!(Mask::from_bytes(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn serde_round_trip(m in arb::any_mask(30)) {
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&m, cfg).unwrap();
        let (back, _): (Mask, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        prop_assert_eq!(back, m);
    }

    /// Any single flipped byte or truncation is rejected or decodes to a valid mask; it never panics.
    #[test]
    fn corruption_never_panics(m in arb::any_mask(20), at in any::<prop::sample::Index>(), flip in 1u8..=255, cut in any::<prop::sample::Index>()) {
        let bytes = m.to_bytes();
        let mut flipped = bytes.clone();
        let i = at.index(flipped.len());
        flipped[i] ^= flip;
        if let Ok(decoded) = Mask::from_bytes(&flipped) {
            // Whatever decodes satisfies the invariants, so it re-encodes to the same bytes.
            prop_assert_eq!(decoded.to_bytes(), flipped);
        }
        let truncated = &bytes[..cut.index(bytes.len())];
        prop_assert!(matches!(Mask::from_bytes(truncated), Err(Error::Format(_))));
    }
}

#[test]
fn serde_rejects_inconsistent_shape() {
    // (nrows=3, ncols=3, words=[]) as bincode: varints 3, 3, length 0.
    let cfg = bincode::config::standard();
    let err = bincode::serde::decode_from_slice::<Mask, _>(&[3, 3, 0], cfg);
    assert!(err.is_err());
}

/// bincode's varints accept over-long encodings (`251, 75, 0` for `75`); the mask format
/// takes only the canonical one, so every stored mask has exactly one encoding.
#[test]
fn over_long_varints_are_rejected() {
    let mask = Mask::from_fn(75, 1, |r, _| r % 2 == 0).unwrap();
    let bytes = mask.to_bytes();
    assert_eq!(bytes[12], 75, "nrows is the first varint of the payload");
    let mut long = bytes[..12].to_vec();
    long.extend_from_slice(&[251, 75, 0]);
    long.extend_from_slice(&bytes[13..]);
    assert!(matches!(
        Mask::from_bytes(&long),
        Err(Error::Format(shears_core::FormatError::NonCanonical))
    ));
}
