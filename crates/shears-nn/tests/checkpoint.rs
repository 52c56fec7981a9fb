//! Safetensors checkpoints: round trips and malformed files.

use shears_core::Mask;
use shears_core::Masks;
use shears_nn::{Error, Mlp, checkpoint, weight_name};

#[test]
fn round_trip_with_masks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mlp = Mlp::<f32>::new(&[6, 5, 3], 9).unwrap();
    let masks = Masks::from([(weight_name(1), Mask::from_fn(3, 5, |r, c| r != c).unwrap())]);
    checkpoint::save(&mlp, &masks, &path).unwrap();
    let (back, back_masks) = checkpoint::load::<f32>(&path).unwrap();
    assert_eq!(back, mlp);
    assert_eq!(back_masks, masks);
    // No temporary file is left beside the target.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // An f64 network reads the f32 file, and writes f64.
    let (wide, _) = checkpoint::load::<f64>(&path).unwrap();
    assert_eq!(wide.layers()[0].weight()[(1, 2)], f64::from(mlp.layers()[0].weight()[(1, 2)]));
}

#[test]
fn malformed_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    assert!(matches!(
        checkpoint::load::<f32>(&path),
        Err(Error::File(shears_io::Error::NotSafetensors { kind: shears_io::FileKind::Text, .. }))
    ));
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{").unwrap();
    assert!(matches!(
        checkpoint::load::<f32>(&path),
        Err(Error::File(shears_io::Error::Header { .. }))
    ));
    assert!(matches!(
        checkpoint::load::<f32>(dir.path().join("missing")),
        Err(Error::File(shears_io::Error::Io { .. }))
    ));
    // A file without layers.0.weight.
    let empty =
        safetensors::serialize(Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(), None)
            .unwrap();
    std::fs::write(&path, empty).unwrap();
    let err = checkpoint::load::<f32>(&path).unwrap_err();
    assert!(err.to_string().contains("layers.0.weight"), "{err}");
    // Layers 0 and 2 without layer 1: layer 2 would be dropped without a word.
    let mlp = Mlp::<f32>::new(&[3, 3, 3, 3], 0).unwrap();
    checkpoint::save(&mlp, &Masks::new(), &path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&std::fs::read(&path).unwrap())
        .unwrap()
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("layers.1."))
        .map(|(name, view)| (name, view.data().to_vec(), view.shape().to_vec()))
        .collect::<Vec<_>>();
    let views: Vec<_> = tensors
        .iter()
        .map(|(name, data, shape)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let err = checkpoint::load::<f32>(&path).unwrap_err();
    assert!(err.to_string().contains("follows a missing `layers.1.weight`"), "{err}");
    // A layer that does not take its predecessor's outputs: named, with both shapes.
    let (w0, b0, w1, b1) =
        (vec![0u8; 8 * 4 * 4], vec![0u8; 8 * 4], vec![0u8; 3 * 7 * 4], vec![0u8; 3 * 4]);
    let view = |shape: Vec<usize>, data| {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, data).unwrap()
    };
    let views = vec![
        ("layers.0.weight".to_owned(), view(vec![8, 4], &w0)),
        ("layers.0.bias".to_owned(), view(vec![8], &b0)),
        ("layers.1.weight".to_owned(), view(vec![3, 7], &w1)),
        ("layers.1.bias".to_owned(), view(vec![3], &b1)),
    ];
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let err = checkpoint::load::<f32>(&path).unwrap_err().to_string();
    let expected = "`layers.1.weight` has shape [3, 7]: it takes 7 inputs, but `layers.0.weight` of shape [8, 4] gives 8 outputs";
    assert!(err.contains(expected) && err.contains("bad.safetensors"), "{err}");
    // A layer with no outputs: nothing could run after it, and nothing exports it.
    let views = vec![
        ("layers.0.weight".to_owned(), view(vec![0, 4], &[])),
        ("layers.0.bias".to_owned(), view(vec![0], &[])),
    ];
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let err = checkpoint::load::<f32>(&path).unwrap_err().to_string();
    let expected = "`layers.0.weight` has shape [0, 4]: a layer needs at least one input";
    assert!(err.contains(expected), "{err}");
    // A layer numbered in any other spelling than plain decimal would be dropped.
    let (w, b) = (vec![0u8; 2 * 2 * 4], vec![0u8; 2 * 4]);
    for index in ["-1", "+1", "01", "1x", "18446744073709551616"] {
        let views = vec![
            ("layers.0.weight".to_owned(), view(vec![2, 2], &w)),
            ("layers.0.bias".to_owned(), view(vec![2], &b)),
            (format!("layers.{index}.weight"), view(vec![2, 2], &w)),
            (format!("layers.{index}.bias"), view(vec![2], &b)),
        ];
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let err = checkpoint::load::<f32>(&path).unwrap_err().to_string();
        let expected =
            format!("names layer `{index}`: layers are numbered 0, 1, 2, ... in plain decimal");
        assert!(err.contains(&expected), "{err}");
    }
}
