//! ONNX external data: initializers moved out of the `.onnx` file into a data file beside
//! it, as models past protobuf's 2 GiB limit need (and as ONNX Runtime reads them).

use crate::proto::tensor_proto::DataLocation;
use crate::proto::{ModelProto, StringStringEntryProto};

/// Initializers of at least this many bytes move to the data file (ONNX's own
/// `convert_model_to_external_data` default).
pub const EXTERNAL_THRESHOLD: usize = 1024;

/// Offsets in the data file are multiples of this (a page), so a runtime can map each
/// tensor where it lies.
const ALIGNMENT: usize = 4096;

/// Moves every initializer of `model` with at least `threshold` bytes of `raw_data` into
/// one data buffer, which the model then names as `location` (a path relative to the
/// `.onnx` file's folder, by ONNX's rule), each at a page-aligned offset. Returns the
/// buffer, to be written to `location`; the model keeps the tensors' names, types and
/// shapes.
///
/// ```
/// use shears_onnx::{ExportOptions, export_mlp, externalize};
///
/// let mlp = shears_nn::Mlp::<f32>::new(&[64, 32, 3], 0)?;
/// let mut model = export_mlp(&mlp, &ExportOptions::default())?;
/// let data = externalize(&mut model, "mlp.onnx.data", 1024);
/// // The 64x32 weight (8 KiB) moved; the 3x32 one and the biases (under 1 KiB) stayed.
/// let moved = model.graph.as_ref().unwrap().initializer.iter().filter(|t| t.raw_data.is_none());
/// assert_eq!(moved.count(), 1);
/// assert_eq!(data.len(), 64 * 32 * 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn externalize(model: &mut ModelProto, location: &str, threshold: usize) -> Vec<u8> {
    let mut data = Vec::new();
    let Some(graph) = model.graph.as_mut() else { return data };
    for tensor in &mut graph.initializer {
        let Some(raw) = tensor.raw_data.take_if(|raw| raw.len() >= threshold) else {
            continue;
        };
        data.resize(data.len().next_multiple_of(ALIGNMENT), 0);
        let offset = data.len();
        data.extend_from_slice(&raw);
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: Some(key.to_owned()),
            value: Some(value),
        };
        tensor.external_data = vec![
            entry("location", location.to_owned()),
            entry("offset", offset.to_string()),
            entry("length", raw.len().to_string()),
        ];
        tensor.data_location = Some(DataLocation::External as i32);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{GraphProto, TensorProto};

    fn tensor(name: &str, bytes: usize) -> TensorProto {
        TensorProto {
            name: Some(name.to_owned()),
            raw_data: Some((0..bytes).map(|i| (i % 251) as u8).collect()),
            ..TensorProto::default()
        }
    }

    #[test]
    fn large_initializers_move_to_aligned_offsets_and_read_back() {
        let original = vec![tensor("a", 5000), tensor("small", 10), tensor("b", 4096)];
        let mut model = ModelProto {
            graph: Some(GraphProto { initializer: original.clone(), ..GraphProto::default() }),
            ..ModelProto::default()
        };
        let data = externalize(&mut model, "m.onnx.data", 1024);
        let moved = &model.graph.as_ref().unwrap().initializer;
        assert_eq!(moved[1], original[1], "a small tensor stays");
        for (t, o) in [(&moved[0], &original[0]), (&moved[2], &original[2])] {
            assert_eq!(t.data_location, Some(DataLocation::External as i32));
            let get = |k: &str| {
                t.external_data.iter().find(|e| e.key() == k).map(|e| e.value().to_owned()).unwrap()
            };
            assert_eq!(get("location"), "m.onnx.data");
            let (offset, length): (usize, usize) =
                (get("offset").parse().unwrap(), get("length").parse().unwrap());
            assert_eq!(offset % ALIGNMENT, 0);
            assert_eq!(&data[offset..offset + length], o.raw_data());
        }
        assert_eq!(data.len(), 8192 + 4096);
    }
}
