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
