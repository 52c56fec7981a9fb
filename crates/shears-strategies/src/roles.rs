//! [`TensorRole`]: what a checkpoint's tensor is for, from its name, dtype and shape, and
//! so whether practitioners prune it.
//!
//! The names are those of the common model families' PyTorch implementations (Hugging
//! Face `transformers` for BERT, GPT-2, LLaMA/Qwen/Mistral, T5 and ViT; torchvision for
//! ResNet and other CNNs). Pruning works on the layers that do the matrix products;
//! embedding tables are lookups, not products, and the first convolution and the output
//! head are small and sensitive, so they are left alone unless asked for.

/// What a tensor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TensorRole {
    /// The weight of a linear (fully connected) layer, stored `(out, in)`.
    Linear,
    /// A linear layer stored `(in, out)`: GPT-2's `Conv1D` (`c_attn`, `c_fc`, `c_proj`), a
    /// Keras or Flax dense `kernel`. Row, column and N:M patterns run along its
    /// `(out, in)` view.
    TransposedLinear,
    /// A convolution's weight `(out, in, kh, kw)`.
    Conv,
    /// The first convolution of a network on images (it reads the raw pixels: `conv1`
    /// of a ResNet, or any convolution with at most 4 input channels).
    InputConv,
    /// An embedding table (words, positions, token types, image patches): a lookup, not
    /// a product.
    Embedding,
    /// The output head (`lm_head`, `classifier`, a ResNet's `fc`, a ViT's `head`).
    OutputHead,
    /// A pooler (BERT's `pooler.dense`).
    Pooler,
    /// A 2-D or 4-D floating tensor that is not a layer's `weight` (a buffer, a token).
    OtherMatrix,
    /// Not 2-D or 4-D: biases, norms, scalars, buffers.
    NotAMatrix,
    /// Not a floating-point tensor.
    NotFloat,
    /// The scales of an int8 tensor (`NAME.scale` beside an int8 `NAME`): part of that
    /// tensor, never pruned on their own. [`TensorRole::classify`] goes by name and
    /// cannot tell; a reader that sees the file can.
    QuantizationScale,
}

impl TensorRole {
    /// Whether shears prunes tensors of this role unless told otherwise.
    pub fn pruned_by_default(self) -> bool {
        matches!(self, TensorRole::Linear | TensorRole::TransposedLinear | TensorRole::Conv)
    }

    /// Whether a tensor of this role can be pruned at all (a 2-D or 4-D floating tensor).
    pub fn prunable(self) -> bool {
        !matches!(
            self,
            TensorRole::NotAMatrix | TensorRole::NotFloat | TensorRole::QuantizationScale
        )
    }

    /// The role, in words a report can show.
    pub fn describe(self) -> &'static str {
        match self {
            TensorRole::Linear => "linear layer",
            TensorRole::TransposedLinear => "linear layer stored (in, out)",
            TensorRole::Conv => "convolution",
            TensorRole::InputConv => "first convolution",
            TensorRole::Embedding => "embedding",
            TensorRole::OutputHead => "output head",
            TensorRole::Pooler => "pooler",
            TensorRole::OtherMatrix => "not a layer's weight",
            TensorRole::NotAMatrix => "not 2-D or 4-D",
            TensorRole::NotFloat => "not floating point",
            TensorRole::QuantizationScale => "an int8 tensor's scales",
        }
    }

    /// The role of the tensor called `name`, of a floating dtype or not, of `shape`.
    ///
    /// ```
    /// use shears_strategies::TensorRole;
    ///
    /// let role = |name, shape: &[usize]| TensorRole::classify(name, true, shape);
    /// assert_eq!(role("encoder.layer.0.attention.self.query.weight", &[384, 384]), TensorRole::Linear);
    /// assert_eq!(role("embeddings.word_embeddings.weight", &[30522, 384]), TensorRole::Embedding);
    /// assert_eq!(role("lm_head.weight", &[32000, 4096]), TensorRole::OutputHead);
    /// assert_eq!(role("transformer.h.0.attn.c_attn.weight", &[768, 2304]), TensorRole::TransposedLinear);
    /// assert_eq!(role("conv1.weight", &[64, 3, 7, 7]), TensorRole::InputConv);
    /// assert_eq!(role("layer1.0.conv1.weight", &[64, 64, 3, 3]), TensorRole::Conv);
    /// assert_eq!(role("fc.weight", &[1000, 512]), TensorRole::OutputHead);
    /// assert_eq!(role("encoder.layer.0.output.LayerNorm.weight", &[384]), TensorRole::NotAMatrix);
    /// ```
    pub fn classify(name: &str, float: bool, shape: &[usize]) -> TensorRole {
        if !float {
            return TensorRole::NotFloat;
        }
        if !matches!(shape.len(), 2 | 4) {
            return TensorRole::NotAMatrix;
        }
        let lower = name.to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('.').collect();
        let has = |f: &dyn Fn(&str) -> bool| parts.iter().any(|p| f(p));
        if has(&|p| p.contains("embed") || p == "wte" || p == "wpe")
            || lower == "shared.weight"
            || has(&|p| p == "relative_attention_bias")
        {
            return TensorRole::Embedding;
        }
        match parts.last() {
            Some(&"weight") => {}
            // Keras and Flax store a dense layer's kernel `(in, out)`, and convolution
            // kernels `(kh, kw, in, out)`, which is not the layout shears reads.
            Some(&"kernel") if shape.len() == 2 => return TensorRole::TransposedLinear,
            _ => return TensorRole::OtherMatrix,
        }
        if has(&|p| p == "pooler") {
            return TensorRole::Pooler;
        }
        let head_names = ["lm_head", "classifier", "qa_outputs", "score", "head", "heads", "cls"];
        if has(&|p| head_names.contains(&p)) || lower == "fc.weight" {
            return TensorRole::OutputHead;
        }
        if shape.len() == 4 {
            let first = lower == "conv1.weight" || has(&|p| p == "stem") || shape[1] <= 4;
            return if first { TensorRole::InputConv } else { TensorRole::Conv };
        }
        if has(&|p| matches!(p, "c_attn" | "c_fc" | "c_proj")) && !has(&|p| p == "q_proj") {
            return TensorRole::TransposedLinear;
        }
        TensorRole::Linear
    }
}

impl std::fmt::Display for TensorRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(name: &str, shape: &[usize], role: TensorRole) {
        assert_eq!(TensorRole::classify(name, true, shape), role, "{name}");
    }

    #[test]
    fn common_families() {
        use TensorRole::*;
        // BERT / MiniLM.
        check("bert.encoder.layer.3.intermediate.dense.weight", &[1536, 384], Linear);
        check("encoder.layer.0.attention.output.dense.weight", &[384, 384], Linear);
        check("embeddings.position_embeddings.weight", &[512, 384], Embedding);
        check("embeddings.token_type_embeddings.weight", &[2, 384], Embedding);
        check("pooler.dense.weight", &[384, 384], Pooler);
        check("cls.predictions.transform.dense.weight", &[768, 768], OutputHead);
        // GPT-2.
        check("transformer.wte.weight", &[50257, 768], Embedding);
        check("transformer.wpe.weight", &[1024, 768], Embedding);
        check("transformer.h.11.mlp.c_fc.weight", &[768, 3072], TransposedLinear);
        check("transformer.h.11.mlp.c_proj.weight", &[3072, 768], TransposedLinear);
        // LLaMA, Qwen, Mistral.
        check("model.embed_tokens.weight", &[32000, 4096], Embedding);
        check("model.layers.0.self_attn.q_proj.weight", &[4096, 4096], Linear);
        check("model.layers.0.mlp.down_proj.weight", &[4096, 11008], Linear);
        check("lm_head.weight", &[32000, 4096], OutputHead);
        check("score.weight", &[2, 4096], OutputHead);
        // T5.
        check("shared.weight", &[32128, 512], Embedding);
        check(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            &[32, 8],
            Embedding,
        );
        check("encoder.block.0.layer.1.DenseReluDense.wi.weight", &[2048, 512], Linear);
        // ViT.
        check("vit.embeddings.patch_embeddings.projection.weight", &[768, 3, 16, 16], Embedding);
        check("vit.encoder.layer.0.attention.attention.query.weight", &[768, 768], Linear);
        check("head.weight", &[1000, 768], OutputHead);
        check("classifier.weight", &[1000, 768], OutputHead);
        // ResNet (torchvision) and other CNNs.
        check("conv1.weight", &[64, 3, 7, 7], InputConv);
        check("features.0.weight", &[32, 3, 3, 3], InputConv);
        check("layer4.1.conv2.weight", &[512, 512, 3, 3], Conv);
        check("layer2.0.downsample.0.weight", &[128, 64, 1, 1], Conv);
        check("fc.weight", &[1000, 512], OutputHead);
        // Not matrices, not floats, not weights.
        check("layer1.0.bn1.running_mean", &[64], NotAMatrix);
        check("vit.embeddings.cls_token", &[1, 1, 768], NotAMatrix);
        check("some.buffer", &[4, 4], OtherMatrix);
        check("dense_1/kernel", &[784, 128], OtherMatrix);
        check("params.Dense_0.kernel", &[784, 128], TransposedLinear);
        check("params.Conv_0.kernel", &[3, 3, 1, 32], OtherMatrix);
        assert_eq!(TensorRole::classify("embeddings.position_ids", false, &[1, 512]), NotFloat);
    }

    #[test]
    fn only_product_layers_are_pruned_by_default() {
        use TensorRole::*;
        for role in [Linear, TransposedLinear, Conv] {
            assert!(role.pruned_by_default() && role.prunable());
        }
        for role in [InputConv, Embedding, OutputHead, Pooler, OtherMatrix] {
            assert!(!role.pruned_by_default() && role.prunable(), "{role}");
        }
        assert!(!NotAMatrix.prunable() && !NotFloat.prunable());
    }
}
