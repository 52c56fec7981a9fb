//! How a model-wide density is spread over layers, and the sparse masks a network starts
//! from when it is trained sparse from scratch.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use shears_core::{Masks, Prunable, Scalar, Selector, Sparsity, WeightShape};

use crate::criteria::stable_hash;
use crate::error::{Error, Result};

/// How a target sparsity for the whole model is spread over its layers.
///
/// - [`Distribution::Uniform`]: every layer at the target.
/// - [`Distribution::ErdosRenyi`]: a layer's density proportional to
///   `(n_in + n_out) / (n_in * n_out)` (Mocanu et al. 2018), so small layers keep more.
/// - [`Distribution::ErdosRenyiKernel`]: the same with the kernel dimensions of a
///   convolution added to the sum and the product (Evci et al. 2020, RigL's ERK); equal to
///   Erdős–Rényi on fully connected layers.
///
/// In the scaled distributions a layer whose density would exceed 1 is kept dense and the
/// others are rescaled, as RigL's reference does, so that the kept weights of the model add
/// up to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Distribution {
    /// The same sparsity in every layer.
    #[default]
    Uniform,
    /// Erdős–Rényi: density proportional to `(n_in + n_out) / (n_in * n_out)`.
    ErdosRenyi,
    /// Erdős–Rényi-Kernel: convolution kernels counted as dimensions too.
    ErdosRenyiKernel,
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Distribution::Uniform => "uniform",
            Distribution::ErdosRenyi => "er",
            Distribution::ErdosRenyiKernel => "erk",
        })
    }
}

impl std::str::FromStr for Distribution {
    type Err = shears_core::Error;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim() {
            "uniform" => Ok(Distribution::Uniform),
            "er" | "erdos-renyi" => Ok(Distribution::ErdosRenyi),
            "erk" | "erdos-renyi-kernel" => Ok(Distribution::ErdosRenyiKernel),
            other => Err(shears_core::Error::Parse {
                what: "density distribution",
                value: other.to_owned(),
                expected: "uniform, er or erk",
            }),
        }
    }
}

impl Distribution {
    /// `(n_in + n_out) / (n_in * n_out)`, or with the kernel dimensions for ERK.
    fn raw_density(self, shape: &WeightShape) -> f64 {
        let (rows, cols) = shape.matrix_shape();
        let dims: Vec<usize> = match (self, shape.conv_dims()) {
            (Distribution::ErdosRenyiKernel, Some((o, i, kh, kw))) => vec![o, i, kh, kw],
            (_, Some((o, i, kh, kw))) => vec![o, i * kh * kw],
            _ => vec![rows, cols],
        };
        let sum: f64 = dims.iter().map(|&d| d as f64).sum();
        let product: f64 = dims.iter().map(|&d| d as f64).product();
        sum / product
    }

    /// The sparsity of each layer `names` of `model` so that together they reach `target`.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use nalgebra::DMatrix;
    /// use shears_core::{Prunable, Sparsity};
    /// use shears_strategies::Distribution;
    ///
    /// struct Net(BTreeMap<String, DMatrix<f32>>);
    /// impl Prunable<f32> for Net {
    ///     fn prunable_names(&self) -> Vec<String> { self.0.keys().cloned().collect() }
    ///     fn weight(&self, n: &str) -> Option<&DMatrix<f32>> { self.0.get(n) }
    ///     fn weight_mut(&mut self, n: &str) -> Option<&mut DMatrix<f32>> { self.0.get_mut(n) }
    /// }
    /// let net = Net(BTreeMap::from([
    ///     ("big".to_string(), DMatrix::zeros(300, 784)),
    ///     ("small".to_string(), DMatrix::zeros(10, 100)),
    /// ]));
    /// let names = net.prunable_names();
    /// let s = Distribution::ErdosRenyi.layer_sparsities(&net, &names, Sparsity::new(0.9)?)?;
    /// assert!(s["small"].get() < 0.9 && s["big"].get() > 0.9); // small layers keep more
    /// # Ok::<(), shears_strategies::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`shears_core::Error::UnknownLayer`] for a name the model lacks;
    /// [`Error::DuplicateLayer`] for a name given twice.
    pub fn layer_sparsities<T: Scalar, M: Prunable<T> + ?Sized>(
        self,
        model: &M,
        names: &[String],
        target: Sparsity,
    ) -> Result<BTreeMap<String, Sparsity>> {
        let mut layers = Vec::with_capacity(names.len());
        let mut seen = std::collections::BTreeSet::new();
        for name in names {
            if !seen.insert(name) {
                return Err(Error::DuplicateLayer { layer: name.clone() });
            }
            let w = model.require_weight(name)?;
            let shape = model.weight_shape(name).unwrap_or_else(|| WeightShape::of_matrix(w));
            layers.push((name.clone(), w.len() as f64, self.raw_density(&shape)));
        }
        if self == Distribution::Uniform {
            return Ok(layers.into_iter().map(|(name, _, _)| (name, target)).collect());
        }
        // Find eps with sum(min(1, eps * raw_l) * n_l) = density * total: layers that
        // would pass 1 are kept dense, one at a time from the densest, and eps is solved
        // again over the rest.
        // A layer without weights has nothing to prune or keep: it stays out of the sums.
        let total: f64 = layers.iter().map(|l| l.1).sum();
        let wanted = target.density() * total;
        let mut dense = vec![false; layers.len()];
        let eps = loop {
            let dense_weights: f64 =
                layers.iter().zip(&dense).filter(|(_, d)| **d).map(|(l, _)| l.1).sum();
            let scaled: f64 = layers
                .iter()
                .zip(&dense)
                .filter(|(l, d)| !**d && l.1 > 0.0)
                .map(|(l, _)| l.2 * l.1)
                .sum();
            let eps = if scaled > 0.0 { (wanted - dense_weights).max(0.0) / scaled } else { 0.0 };
            let densest = layers
                .iter()
                .enumerate()
                .filter(|(i, l)| !dense[*i] && l.1 > 0.0 && eps * l.2 > 1.0)
                .max_by(|a, b| a.1.2.total_cmp(&b.1.2).then(b.0.cmp(&a.0)))
                .map(|(i, _)| i);
            match densest {
                Some(i) => dense[i] = true,
                None => break eps,
            }
        };
        layers
            .into_iter()
            .zip(dense)
            .map(|((name, len, raw), dense)| {
                let density = if dense || len == 0.0 { 1.0 } else { (eps * raw).clamp(0.0, 1.0) };
                Ok((name, Sparsity::new(1.0 - density)?))
            })
            .collect()
    }
}

/// Random masks for training sparse from scratch: each layer in `names` keeps a uniformly
/// random set of exactly the count its sparsity under `distribution` asks for (PyTorch's
/// rounding, as everywhere in shears), and its pruned weights are zeroed.
///
/// The draw is ChaCha8, seeded with `seed` and the layer's name: the same seed gives the
/// same masks on every machine and thread count.
///
/// # Errors
/// [`shears_core::Error::UnknownLayer`] for a name the model lacks;
/// [`Error::DuplicateLayer`] for a name given twice; [`shears_core::Error::NonFinite`]
/// naming a layer with a NaN or infinite weight.
pub fn random_masks<T: Scalar, M: Prunable<T> + ?Sized>(
    model: &mut M,
    names: &[String],
    target: Sparsity,
    distribution: Distribution,
    seed: u64,
) -> Result<Masks> {
    let sparsities = distribution.layer_sparsities(model, names, target)?;
    let mut masks = Masks::new();
    for (name, sparsity) in sparsities {
        let weights = model.require_weight_mut(&name)?;
        shears_core::check_finite(&name, weights.as_slice())?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ stable_hash(&name));
        let scores =
            crate::dynamic::uniform_scores::<T>(weights.nrows(), weights.ncols(), &mut rng);
        let mask = Selector::new().select(&name, &scores, sparsity, None)?;
        mask.apply_in_place(weights).map_err(Error::from)?;
        masks.insert(name, mask);
    }
    Ok(masks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::DMatrix;

    struct Net(BTreeMap<String, DMatrix<f64>>, BTreeMap<String, WeightShape>);
    impl Prunable<f64> for Net {
        fn prunable_names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
        fn weight(&self, n: &str) -> Option<&DMatrix<f64>> {
            self.0.get(n)
        }
        fn weight_mut(&mut self, n: &str) -> Option<&mut DMatrix<f64>> {
            self.0.get_mut(n)
        }
        fn weight_shape(&self, n: &str) -> Option<WeightShape> {
            self.1.get(n).copied().or_else(|| self.0.get(n).map(WeightShape::of_matrix))
        }
    }

    fn lenet() -> Net {
        Net(
            BTreeMap::from([
                ("0".to_string(), DMatrix::from_element(300, 784, 1.0)),
                ("1".to_string(), DMatrix::from_element(100, 300, 1.0)),
                ("2".to_string(), DMatrix::from_element(10, 100, 1.0)),
            ]),
            BTreeMap::new(),
        )
    }

    #[test]
    fn erdos_renyi_matches_its_formula_and_the_total() {
        let net = lenet();
        let names = net.prunable_names();
        for target in [0.8, 0.9, 0.95, 0.98] {
            let s = Distribution::ErdosRenyi
                .layer_sparsities(&net, &names, Sparsity::new(target).unwrap())
                .unwrap();
            let kept: f64 = names.iter().map(|n| s[n].density() * net.0[n].len() as f64).sum();
            let total: f64 = net.0.values().map(|w| w.len() as f64).sum();
            assert!((kept - (1.0 - target) * total).abs() < 1e-6 * total, "{target}: {kept}");
            // Layers below density 1 keep densities in the ratio of their raw densities.
            let raw = |r: f64, c: f64| (r + c) / (r * c);
            let (d0, d1) = (s["0"].density(), s["1"].density());
            if d1 < 1.0 {
                assert!((d0 / d1 - raw(300.0, 784.0) / raw(100.0, 300.0)).abs() < 1e-9);
            }
            assert!(d0 < d1 && d1 <= s["2"].density());
        }
        // At 80% the output layer's scaled density passes 1: it is kept dense and the
        // others are rescaled.
        let s = Distribution::ErdosRenyi
            .layer_sparsities(&net, &names, Sparsity::new(0.8).unwrap())
            .unwrap();
        assert_eq!(s["2"].get(), 0.0);
    }

    #[test]
    fn kernel_dimensions_count_only_for_erk() {
        let mut net = lenet();
        net.0.insert("conv".into(), DMatrix::from_element(16, 8 * 9, 1.0));
        net.1.insert("conv".into(), WeightShape::conv(16, 8, 3, 3).unwrap());
        let er = Distribution::ErdosRenyi.raw_density(&net.weight_shape("conv").unwrap());
        let erk = Distribution::ErdosRenyiKernel.raw_density(&net.weight_shape("conv").unwrap());
        assert!((er - (16.0 + 72.0) / (16.0 * 72.0)).abs() < 1e-15);
        assert!((erk - (16.0 + 8.0 + 3.0 + 3.0) / (16.0 * 72.0)).abs() < 1e-15);
        let fc = WeightShape::dense(10, 100).unwrap();
        assert_eq!(
            Distribution::ErdosRenyi.raw_density(&fc),
            Distribution::ErdosRenyiKernel.raw_density(&fc)
        );
    }

    #[test]
    fn random_masks_have_exact_counts_and_zero_the_rest() {
        let mut net = lenet();
        let names = net.prunable_names();
        let target = Sparsity::new(0.95).unwrap();
        let masks = random_masks(&mut net, &names, target, Distribution::ErdosRenyi, 3).unwrap();
        let sparsities = Distribution::ErdosRenyi.layer_sparsities(&net, &names, target).unwrap();
        for name in &names {
            let n = net.0[name].len();
            let expected = sparsities[name].count_of(n, Default::default());
            assert_eq!(masks[name].count_pruned(), expected, "{name}");
            assert_eq!(net.0[name].iter().filter(|&&v| v == 0.0).count(), expected);
        }
        let again =
            random_masks(&mut lenet(), &names, target, Distribution::ErdosRenyi, 3).unwrap();
        assert_eq!(masks, again);
        let other =
            random_masks(&mut lenet(), &names, target, Distribution::ErdosRenyi, 4).unwrap();
        assert_ne!(masks, other);
        assert!(
            random_masks(&mut lenet(), &["nope".into()], target, Distribution::Uniform, 0).is_err()
        );
    }

    #[test]
    fn repeated_names_and_empty_layers() {
        let mut net = lenet();
        let twice = ["0".to_string(), "0".to_string(), "2".to_string()];
        let s = Sparsity::new(0.5).unwrap();
        assert_eq!(
            Distribution::ErdosRenyi.layer_sparsities(&net, &twice, s),
            Err(Error::DuplicateLayer { layer: "0".into() })
        );
        net.0.insert("empty".into(), DMatrix::zeros(0, 10));
        let names = net.prunable_names();
        for d in [Distribution::ErdosRenyi, Distribution::ErdosRenyiKernel] {
            let s = d.layer_sparsities(&net, &names, Sparsity::new(0.9).unwrap()).unwrap();
            assert_eq!(s["empty"].get(), 0.0);
            assert!(s["0"].get() > 0.9);
        }
        net.0.get_mut("2").unwrap()[(1, 1)] = f64::NAN;
        let err =
            random_masks(&mut net, &names, Sparsity::new(0.5).unwrap(), Distribution::Uniform, 0);
        assert!(matches!(err, Err(Error::Core(shears_core::Error::NonFinite { .. }))));
    }

    #[test]
    fn names_parse() {
        for d in [Distribution::Uniform, Distribution::ErdosRenyi, Distribution::ErdosRenyiKernel] {
            assert_eq!(d.to_string().parse::<Distribution>().unwrap(), d);
        }
        assert!("erx".parse::<Distribution>().is_err());
    }
}
