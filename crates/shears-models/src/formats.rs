//! Which format each linear layer runs in: the one `choose_format` picks for its mask
//! and the batch's token count (or, where that is dense, the N:M pattern its zeros
//! follow, or CSR for a sparsity up to a margin below CSR's break-even), kept only where
//! a timed product says it beats the dense GEMM at that token count. A sparse format
//! that is slower is never used.

use std::time::{Duration, Instant};

use nalgebra::DMatrix;
use serde::Serialize;
use shears_core::Mask;
use shears_sparse::calibrate::Crossovers;
use shears_sparse::{
    Format, Int8Matrix, Layout, NmPattern, Orientation, choose_format, choose_format_with,
};

use crate::bert::{BertModel, EncoderLayer};
use crate::error::{Error, Result};
use crate::linear::{Linear, stacked, stacked_forward};
use crate::math::Elementwise;

/// Tokens [`choose_formats`] times each product on at most: 32 sentences of 128 tokens. A format's
/// speed changes with the token count (how many panels of `X` a product walks, how much
/// of the weights and inputs stays in cache), so a layer timed on fewer tokens than it
/// runs on can pick a format that loses in the model. The cap bounds planning (three
/// runs of each candidate for the first layer of a kind of product, one for each later
/// one) for larger batches.
pub const TIMING_TOKENS: usize = 4096;

/// How far below `choose_format`'s CSR break-even a layer's sparsity may fall and CSR
/// still be timed against dense. The break-even is a crossover measured on square
/// matrices at a few batches, so on one layer's shape CSR can win a little below it;
/// and a layer pruned row by row to a round sparsity sits a hair below the break-even it
/// was pruned to reach (70% of 1536 inputs is 1075.2 weights, so 1075 of each row go).
/// Timing one more candidate costs planning time only: the faster format runs. The
/// margin is one step of the fixed break-evens (0.6 at one token, 0.5 at a few, 0.7 at
/// many), so a layer from 60% on is timed at 128 tokens.
const BREAK_EVEN_MARGIN: f64 = 0.1;

/// What an int8 layer's proposal reads where its integer products ran faster than its
/// dequantized weights' proposed format, and its choice where they ran fastest.
const INT8: &str = "int8";

/// The decision for one linear layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormatChoice {
    /// The weight's tensor name.
    pub name: String,
    /// The fraction of its weights that are zero.
    pub sparsity: f64,
    /// The sparse format `choose_format` proposed, or where it proposed dense the N:M
    /// pattern the zeros follow, else CSR (sliced ELLPACK at one token) if the sparsity
    /// is up to 0.1 below CSR's break-even (dense when there is none of these), with
    /// its value type when its half-precision values (see
    /// [`Linear::set_format`](crate::Linear::set_format)) ran faster than the same format
    /// in f32: `csr bf16`, `n:m 2:4 f16`. For an int8 layer, whose dequantized weights
    /// are timed as any others are (dense, and in the format proposed for their zeros),
    /// `int8` (its integer products), or that format where it ran faster than them.
    pub proposed: String,
    /// The dense product's time, in seconds, at the timing token count (f32, an int8
    /// layer's weights dequantized; the faster of their own type and f32 for bf16 or
    /// f16 weights): the fastest of all the layers of this shape and value type where
    /// both sides' products are of a kind (see [`choose_formats`]), else of those up to
    /// this one, or its own. For query, key and value projections proposed one N:M or CSR
    /// format, which run as one product and are planned as one, the time of that one
    /// dense product, as for `proposed_seconds`; for a feed-forward pair planned as one,
    /// the time of its two dense products.
    pub dense_seconds: f64,
    /// The proposed format's time, if one was timed: for N:M and for weights whose rows
    /// all keep the same count, and for int8, the fastest of all the layers of this shape
    /// and kind, as for dense; for projections planned as one, their one product's, the
    /// fastest of all the layers'; for a feed-forward pair, its two products'. A product
    /// that ran over four times the dense time on a sixteenth of the tokens (and longer
    /// than a few milliseconds) is not run on all of them: its time is that sixteenth's,
    /// a lower bound.
    pub proposed_seconds: Option<f64>,
    /// The format the layer now runs in.
    pub chosen: String,
    /// The other layers whose one product these times are, where layers run as one
    /// (query, key and value projections planned together) or pass their products on
    /// to each other (the feed-forward pair planned together): their times are not this
    /// layer's alone, so a sum over layers counts them once. Empty for a layer timed
    /// alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timed_with: Vec<String>,
}

/// Sets every linear layer of `model` to the fastest of dense and the format
/// `choose_format` proposes for its zeros at `tokens` tokens per product (or, where that
/// is dense, the N:M pattern its zeros follow, 2:4 or 4:8, if any, else CSR for a
/// sparsity up to 0.1 below CSR's break-even), timing both on `min(tokens, 4096)` tokens;
/// a format that can hold the weights in bf16 or f16, dense included, is timed that way
/// and in f32, and runs the faster. Each timing takes more runs while they take under a
/// few milliseconds. The products whose times do not depend on where the weights sit
/// (dense, N:M, int8, and CSR or sliced ELLPACK for weights whose rows all keep the same
/// count) are timed at least three times for the first layer of a shape, format and
/// value type, and at least once for each further one, and once all are timed every
/// layer whose sides are all such kinds is decided on the fastest of all their runs, its
/// value types included; other layers are decided on their own best of three or more
/// runs against the fastest so far. An int8 layer is set to the fastest of its integer
/// products (timed as a kind as well) and its dequantized weights planned as above,
/// dense or in the format proposed for their zeros; where that format ran faster than
/// the integer products, the layer takes part in what follows as any other. A layer's
/// query, key and value projections proposed the same N:M or CSR format are
/// then timed as the one product they run as, stacked, against their one dense product,
/// and all three take the faster, whatever each gave alone. Likewise a layer's
/// intermediate and output layers both proposed N:M are timed as the pair they run as
/// (the intermediate passed by rows, which neither product alone shows) against the
/// dense pair, and both take the faster.
///
/// # Errors
/// A format that cannot be built from the weights.
pub fn choose_formats(model: &mut BertModel, tokens: usize) -> Result<Vec<FormatChoice>> {
    let timing = tokens.clamp(1, TIMING_TOKENS);
    let near_break_even = near_break_even_crossovers()?;
    let mut inputs = TimingInputs { tokens: timing, by_width: Vec::new() };
    let mut times = ShapeTimes::default();
    let mut choices = Vec::new();
    let mut plans = Vec::new();
    for layer in model.layers_mut() {
        for (_, linear) in layer.linears_mut() {
            let x = inputs.for_layer(linear);
            let (choice, plan) = time_linear(linear, x, tokens, &near_break_even, &mut times)?;
            choices.push(choice);
            plans.push(plan);
        }
    }
    // Every layer of a kind has now added its runs to the kind's fastest time: each layer
    // whose sides are such kinds is decided on those times, so a kind's layers agree.
    let linears = model.layers_mut().iter_mut().flat_map(|layer| layer.linears_mut());
    for (((_, linear), choice), plan) in linears.zip(&mut choices).zip(&mut plans) {
        match plan {
            Pending::Float(plan) => plan.settle(linear, choice, &times)?,
            Pending::Int8(plan) => plan.settle(linear, choice, &times)?,
        }
    }
    let mut together = Vec::with_capacity(model.layers().len());
    let layers = model.layers_mut().iter_mut().zip(plans.chunks(6)).zip(choices.chunks(6));
    for ((layer, plans), choices) in layers {
        let x = inputs.for_layer(&layer.query);
        let float = |k: usize| float_plan(&plans[k], &choices[k]);
        let projections = [float(0), float(1), float(2)];
        together.push(time_projections_together(layer, projections, x, &mut times)?);
    }
    let layers = model.layers_mut().iter_mut().zip(choices.chunks_mut(6));
    for ((layer, choices), together) in layers.zip(together) {
        if let Some(together) = together {
            together.settle(layer, &mut choices[..3], &times)?;
        }
    }
    let mut pairs = Vec::with_capacity(model.layers().len());
    let activation = model.config().hidden_act.elementwise();
    let layers = model.layers_mut().iter_mut().zip(plans.chunks(6)).zip(choices.chunks(6));
    for ((layer, plans), choices) in layers {
        let x = inputs.for_layer(&layer.intermediate);
        let pair = [float_plan(&plans[4], &choices[4]), float_plan(&plans[5], &choices[5])];
        pairs.push(time_feed_forward_together(layer, pair, (x, activation), &mut times)?);
    }
    let layers = model.layers_mut().iter_mut().zip(choices.chunks_mut(6));
    for ((layer, choices), pair) in layers.zip(pairs) {
        if let Some(pair) = pair {
            pair.settle(layer, &mut choices[4..], &times)?;
        }
    }
    Ok(choices)
}

/// Times `linear` dense and in the format proposed for its zeros at `tokens` tokens on
/// `x` (an int8 layer in its integer products as well: [`time_int8`]), leaves it in the
/// fastest, and returns its choice and what deciding it again on its kinds' fastest
/// times takes.
fn time_linear(
    linear: &mut Linear,
    x: &DMatrix<f32>,
    tokens: usize,
    near_break_even: &Crossovers,
    times: &mut ShapeTimes,
) -> Result<(FormatChoice, Pending)> {
    if let Some(int8) = linear.int8().cloned() {
        return time_int8(linear, int8, x, tokens, near_break_even, times);
    }
    let (choice, plan) = time_float(linear, x, tokens, near_break_even, times)?;
    Ok((choice, Pending::Float(plan)))
}

/// Times an int8 layer (`int8`, its weights) in its integer products and, dequantized, as
/// [`time_float`] times any other weights: dense, and in the format proposed for their
/// zeros. Without VNNI, integer products are often no faster than the f32 GEMM, while a
/// pruned layer's zeros still pay in a sparse format. Leaves it in the fastest.
fn time_int8(
    linear: &mut Linear,
    int8: Int8Matrix,
    x: &DMatrix<f32>,
    tokens: usize,
    near_break_even: &Crossovers,
    times: &mut ShapeTimes,
) -> Result<(FormatChoice, Pending)> {
    linear.dequantize();
    let (float_choice, float) = time_float(linear, x, tokens, near_break_even, times)?;
    linear.set_int8(int8.clone())?;
    // Against dense, which every layer of this shape shares: a probe hopeless against it
    // stands for the integer products' kind (a lower bound), and must stay hopeless for
    // every other layer of the kind, whatever its zeros let its sparse format run in.
    let int8_seconds = times.time(linear, x, None, Some(float_choice.dense_seconds))?;
    let int8_kind = ShapeTimes::kind(linear, None);
    let plan = Int8Plan { int8, int8_kind, int8_seconds, float, float_choice };
    let mut choice = plan.float_choice.clone();
    plan.decide(linear, &mut choice)?;
    Ok((choice, Pending::Int8(Box::new(plan))))
}

/// Times f32 or half-precision `linear` dense and in the format proposed for its zeros,
/// as [`time_linear`] says, and leaves it in the faster.
fn time_float(
    linear: &mut Linear,
    x: &DMatrix<f32>,
    tokens: usize,
    near_break_even: &Crossovers,
    times: &mut ShapeTimes,
) -> Result<(FormatChoice, Plan)> {
    let weights = linear.dense_weights();
    let (rows, cols) = weights.shape();
    let mask = Mask::from_fn(rows, cols, |r, c| weights[(r, c)] != 0.0)?;
    let sparsity = mask.sparsity().get();
    let row_length = uniform_row_length(&mask);
    let proposed = match choose_format(&mask, tokens) {
        Format::Dense => nm_pattern_of(&mask)
            .map(Format::Nm)
            .or_else(|| sparse_near_break_even(&mask, tokens, near_break_even))
            .unwrap_or(Format::Dense),
        other => other,
    };
    linear.set_format(Format::Dense)?;
    let mut dense_seconds = times.time(linear, x, row_length, None)?;
    // Dense half-precision weights (a bf16 or f16 checkpoint's) widen a band of rows per
    // product: kept only where they beat the same weights in f32.
    let mut dense_half = linear.value_type() != "f32";
    let mut dense_variants = vec![(dense_half, ShapeTimes::kind(linear, row_length))];
    if dense_half {
        linear.set_f32_format(Format::Dense)?;
        let f32_seconds = times.time(linear, x, row_length, None)?;
        dense_variants.push((false, ShapeTimes::kind(linear, row_length)));
        if f32_seconds < dense_seconds {
            (dense_seconds, dense_half) = (f32_seconds, false);
        } else {
            linear.set_format(Format::Dense)?;
        }
    }
    let mut choice = FormatChoice {
        name: linear.name().to_owned(),
        sparsity,
        proposed: proposed.to_string(),
        dense_seconds,
        proposed_seconds: None,
        chosen: Format::Dense.to_string(),
        timed_with: Vec::new(),
    };
    let (mut proposed_variants, mut half_values) = (Vec::new(), None);
    if proposed != Format::Dense {
        linear.set_format(proposed)?;
        let mut seconds = times.time(linear, x, row_length, Some(dense_seconds))?;
        let values = linear.value_type();
        proposed_variants.push((values != "f32", ShapeTimes::kind(linear, row_length)));
        if values != "f32" {
            // Half-precision values (a bf16 or f16 checkpoint's) are named, and kept
            // only where they beat the same format in f32.
            half_values = Some(values);
            choice.proposed = format!("{proposed} {values}");
            linear.set_f32_format(proposed)?;
            let f32_seconds = times.time(linear, x, row_length, Some(dense_seconds))?;
            proposed_variants.push((false, ShapeTimes::kind(linear, row_length)));
            if f32_seconds < seconds {
                (seconds, choice.proposed) = (f32_seconds, proposed.to_string());
            } else {
                linear.set_format(proposed)?;
            }
        }
        choice.proposed_seconds = Some(seconds);
        if seconds < dense_seconds {
            choice.chosen = choice.proposed.clone();
        } else if dense_half {
            linear.set_format(Format::Dense)?;
        } else {
            linear.set_f32_format(Format::Dense)?;
        }
    }
    let half = choice.proposed != proposed.to_string();
    let plan = Plan {
        timed: Timed { proposed, half, dense_half },
        dense: dense_variants,
        proposed: proposed_variants,
        half_values,
        row_length,
    };
    Ok((choice, plan))
}

/// What a layer was timed in: the format proposed for it (with half-precision values if
/// `half`), and dense with half-precision values if `dense_half`.
#[derive(Debug, Clone, Copy)]
struct Timed {
    proposed: Format,
    half: bool,
    dense_half: bool,
}

impl Timed {
    /// Sets `linear` to the proposed format (`sparse`) or to dense, in the value type it
    /// was timed in.
    fn apply(self, linear: &mut Linear, sparse: bool) -> Result<()> {
        let (format, half) =
            if sparse { (self.proposed, self.half) } else { (Format::Dense, self.dense_half) };
        if half { linear.set_format(format) } else { linear.set_f32_format(format) }
    }
}

/// What deciding a layer again on its kinds' fastest times takes, once every layer is
/// timed.
#[derive(Debug, Clone)]
enum Pending {
    /// A layer of `f32`, bf16 or f16 weights.
    Float(Plan),
    /// An int8 layer (boxed: its weights' matrix is several times a float plan's size).
    Int8(Box<Int8Plan>),
}

/// The plan of what a layer runs in as a float layer, for the stages that time layers
/// together: a float layer's own, and an int8 layer's dequantized weights' where their
/// proposed format is what `choice` proposes (it ran faster than the integer products,
/// so the layer runs it or dense, as a float layer would). `None` for an int8 layer
/// whose integer products were proposed.
fn float_plan<'a>(pending: &'a Pending, choice: &FormatChoice) -> Option<&'a Plan> {
    match pending {
        Pending::Float(plan) => Some(plan),
        Pending::Int8(plan) => (choice.proposed != INT8).then_some(&plan.float),
    }
}

/// How an int8 layer was timed: its int8 weights, the kind and time of its integer
/// product (the kind's fastest once settled), and the plan and choice of its dequantized
/// weights (dense, or the format proposed for their zeros; in bf16 or f16 where those
/// hold them exactly and ran faster, as for any weights).
#[derive(Debug, Clone)]
struct Int8Plan {
    int8: Int8Matrix,
    int8_kind: Option<ProductKind>,
    int8_seconds: f64,
    float: Plan,
    float_choice: FormatChoice,
}

impl Int8Plan {
    /// The time of what the dequantized weights run in: the faster of dense and their
    /// proposed format.
    fn fastest_float(float: &FormatChoice) -> f64 {
        match float.proposed_seconds {
            Some(proposed) if float.chosen != Format::Dense.to_string() => proposed,
            _ => float.dense_seconds,
        }
    }

    /// Sets `linear` to int8 or to what its dequantized weights run in, whichever is
    /// faster, and `choice` to the float choice with the integer products in it: they
    /// are the proposed side unless the float side's proposed format ran faster.
    fn decide(&self, linear: &mut Linear, choice: &mut FormatChoice) -> Result<()> {
        let float = &self.float_choice;
        *choice = float.clone();
        if float.proposed_seconds.is_none_or(|proposed| self.int8_seconds < proposed) {
            choice.proposed = INT8.to_owned();
            choice.proposed_seconds = Some(self.int8_seconds);
        }
        if self.int8_seconds < Self::fastest_float(float) {
            if linear.int8().is_none() {
                linear.set_int8(self.int8.clone())?;
            }
            choice.chosen = INT8.to_owned();
            return Ok(());
        }
        let sparse = float.chosen != Format::Dense.to_string();
        let runs = if sparse { self.float.timed.proposed } else { Format::Dense };
        if linear.int8().is_some() || linear.format() != runs {
            self.float.timed.apply(linear, sparse)?;
        }
        Ok(())
    }

    /// Decides `linear` again as [`Plan::settle`] decides its dequantized weights, and
    /// its integer products on their kind's fastest time, then keeps the faster of the
    /// two.
    fn settle(
        &mut self,
        linear: &mut Linear,
        choice: &mut FormatChoice,
        times: &ShapeTimes,
    ) -> Result<()> {
        self.float.settle(linear, &mut self.float_choice, times)?;
        if let Some(seconds) = times.fastest(self.int8_kind) {
            self.int8_seconds = seconds;
        }
        self.decide(linear, choice)
    }
}

/// How a (not int8) layer was timed: in what it runs for now, the value types each side
/// was timed in (half-precision values or not) with their products' kinds (`None` for
/// one timed on its own; no proposed side for a dense proposal), the name of the layer's
/// half-precision value type if it has one, and the count every row of its weights
/// keeps, if they all keep the same.
#[derive(Debug, Clone)]
struct Plan {
    timed: Timed,
    dense: Vec<(bool, Option<ProductKind>)>,
    proposed: Vec<(bool, Option<ProductKind>)>,
    half_values: Option<&'static str>,
    row_length: Option<usize>,
}

/// The fastest of `variants` (each a value type, half-precision or not, and its kind) by
/// their kinds' fastest times, the first of equals: its time and whether it is the
/// half-precision one. `None` if there is none, or one was timed on its own.
fn fastest_variant(
    times: &ShapeTimes,
    variants: &[(bool, Option<ProductKind>)],
) -> Option<(f64, bool)> {
    let mut best: Option<(f64, bool)> = None;
    for &(half, kind) in variants {
        let seconds = times.fastest(kind)?;
        if best.is_none_or(|(fastest, _)| seconds < fastest) {
            best = Some((seconds, half));
        }
    }
    best
}

impl Plan {
    /// Decides `linear` again on its sides' kinds' fastest times, if every variant of
    /// both sides is a kind: each side in its faster value type, then the faster side (a
    /// layer proposed dense has one side); sets the layer, its choice and this plan
    /// accordingly.
    fn settle(
        &mut self,
        linear: &mut Linear,
        choice: &mut FormatChoice,
        times: &ShapeTimes,
    ) -> Result<()> {
        let Some((dense, dense_half)) = fastest_variant(times, &self.dense) else {
            return Ok(());
        };
        if self.proposed.is_empty() {
            // Proposed dense: only the value type to settle.
            if dense_half != self.timed.dense_half {
                self.timed.dense_half = dense_half;
                self.timed.apply(linear, false)?;
            }
            choice.dense_seconds = dense;
            return Ok(());
        }
        let Some((proposed, half)) = fastest_variant(times, &self.proposed) else {
            return Ok(());
        };
        let sparse = proposed < dense;
        let before = (choice.chosen != Format::Dense.to_string(), self.timed);
        self.timed = Timed { proposed: self.timed.proposed, half, dense_half };
        let runs_half = |(sparse, t): (bool, Timed)| if sparse { t.half } else { t.dense_half };
        if (sparse, runs_half((sparse, self.timed))) != (before.0, runs_half(before)) {
            self.timed.apply(linear, sparse)?;
        }
        let format = self.timed.proposed;
        choice.proposed = match self.half_values {
            Some(values) if half => format!("{format} {values}"),
            _ => format.to_string(),
        };
        choice.dense_seconds = dense;
        choice.proposed_seconds = Some(proposed);
        choice.chosen = if sparse { choice.proposed.clone() } else { Format::Dense.to_string() };
        Ok(())
    }
}

/// A layer's query, key and value projections timed as one product each way: each
/// side's kind (`None` for one timed on its own) and time.
#[derive(Debug, Clone)]
struct Together {
    plans: [Plan; 3],
    sparse: (Option<ProductKind>, f64),
    dense: (Option<ProductKind>, f64),
}

/// The three projections, each set to its proposed format (`sparse`) or dense as
/// `plans` timed it, on copies of `layer`'s.
fn projection_copies(layer: &EncoderLayer, plans: &[Plan; 3], sparse: bool) -> Result<[Linear; 3]> {
    let mut copies = [layer.query.clone(), layer.key.clone(), layer.value.clone()];
    for (linear, plan) in copies.iter_mut().zip(plans) {
        plan.timed.apply(linear, sparse)?;
    }
    Ok(copies)
}

/// The query, key and value projections run as one product when they are dense, and
/// when they share a sparse format that stacks ([`crate::linear::stacked`]): where all
/// three were proposed the same N:M or CSR format, times them as that one product and as
/// their one dense product (on copies: the layers do not change), for
/// [`Together::settle`] to decide once every layer's are timed; `None` where they were
/// not, or where they cannot stack.
fn time_projections_together(
    layer: &EncoderLayer,
    plans: [Option<&Plan>; 3],
    x: &DMatrix<f32>,
    times: &mut ShapeTimes,
) -> Result<Option<Together>> {
    let [Some(first), Some(second), Some(third)] = plans else {
        return Ok(None);
    };
    let plans = [first.clone(), second.clone(), third.clone()];
    let timed = |p: &Plan| (p.timed.proposed, p.timed.half);
    let stackable = matches!(first.timed.proposed, Format::Nm(_) | Format::Csr);
    if !stackable || plans.iter().any(|p| timed(p) != timed(first)) {
        return Ok(None);
    }
    let (sparse_layers, dense_layers) =
        (projection_copies(layer, &plans, true)?, projection_copies(layer, &plans, false)?);
    let Some(sparse) = stacked(&[&sparse_layers[0], &sparse_layers[1], &sparse_layers[2]])? else {
        // Half-precision values of different types: each keeps its own choice.
        return Ok(None);
    };
    let dense = [&dense_layers[0], &dense_layers[1], &dense_layers[2]];
    let same_rows = plans.iter().all(|p| p.row_length == first.row_length);
    let row_length = if same_rows { first.row_length } else { None };
    let sparse_kind = ShapeTimes::kind(&sparse, row_length).map(ProductKind::stacked);
    let sparse_seconds = times.time_kind(sparse_kind, None, || sparse.forward(x).map(drop))?;
    let values = dense_layers[0].value_type();
    let dense_kind = dense_layers.iter().all(|l| l.value_type() == values).then(|| {
        let (rows, cols) = sparse.shape();
        let stacked = true;
        ProductKind { rows, cols, format: Format::Dense, values, kept: 0, stacked, paired: false }
    });
    let run_dense = || match stacked_forward(&dense, x) {
        Some(y) => y.map(drop),
        None => Err(Error::Argument("internal error: dense projections".into())),
    };
    let dense_seconds = times.time_kind(dense_kind, None, run_dense)?;
    Ok(Some(Together {
        plans,
        sparse: (sparse_kind, sparse_seconds),
        dense: (dense_kind, dense_seconds),
    }))
}

impl Together {
    /// Sets the three projections all to their stacked product's format or all to
    /// dense, whichever's kind ran faster, and their choices (`choices`, in order) to the
    /// stacked products' times.
    fn settle(
        &self,
        layer: &mut EncoderLayer,
        choices: &mut [FormatChoice],
        times: &ShapeTimes,
    ) -> Result<()> {
        let (sparse_seconds, dense_seconds) =
            (times.settled(self.sparse), times.settled(self.dense));
        let sparse_wins = sparse_seconds < dense_seconds;
        // Built on copies: an error leaves the layers as their own choices say.
        let [query, key, value] = projection_copies(layer, &self.plans, sparse_wins)?;
        (layer.query, layer.key, layer.value) = (query, key, value);
        record_as_one(choices, sparse_wins, (sparse_seconds, dense_seconds));
        Ok(())
    }
}

/// A layer's feed-forward pair, timed as the model runs it in N:M and dense, for
/// [`FeedForward::settle`].
struct FeedForward {
    plans: [Plan; 2],
    sparse: (Option<ProductKind>, f64),
    dense: (Option<ProductKind>, f64),
}

/// The intermediate and output layers, each set to its proposed format (`sparse`) or
/// dense as `plans` timed it, on copies of `layer`'s.
fn feed_forward_copies(
    layer: &EncoderLayer,
    plans: &[Plan; 2],
    sparse: bool,
) -> Result<[Linear; 2]> {
    let mut copies = [layer.intermediate.clone(), layer.output.clone()];
    for (linear, plan) in copies.iter_mut().zip(plans) {
        plan.timed.apply(linear, sparse)?;
    }
    Ok(copies)
}

/// The feed-forward layers pass their intermediate by rows when both are N:M (see
/// [`Linear::prefers_rows`]), which each layer's product timed alone does not show:
/// where both were proposed N:M, times the two as the model then runs them, the
/// intermediate by rows, and as their two dense products (on copies: the layers do not
/// change), for [`FeedForward::settle`] to decide once every layer's are timed; `None`
/// where they were not both proposed N:M.
fn time_feed_forward_together(
    layer: &EncoderLayer,
    plans: [Option<&Plan>; 2],
    (x, activation): (&DMatrix<f32>, Elementwise),
    times: &mut ShapeTimes,
) -> Result<Option<FeedForward>> {
    let [Some(first), Some(second)] = plans else {
        return Ok(None);
    };
    if !matches!((first.timed.proposed, second.timed.proposed), (Format::Nm(_), Format::Nm(_))) {
        return Ok(None);
    }
    let plans = [first.clone(), second.clone()];
    let [up, down] = feed_forward_copies(layer, &plans, true)?;
    let (columns, rows) = (Orientation::Columns, Orientation::Rows);
    let f = Some(activation);
    let run_sparse = || {
        let hidden = up.forward_oriented(x, Layout::new(columns, rows), f)?;
        down.forward_oriented(&hidden, Layout::new(rows, columns), None).map(drop)
    };
    // A pair is of a kind where both layers are: the first's shape, format and values.
    let pair_kind = |up: &Linear, down: &Linear| {
        let kinds = ShapeTimes::kind(up, None).zip(ShapeTimes::kind(down, None));
        let alike = kinds.filter(|(u, d)| (u.format, u.values) == (d.format, d.values));
        alike.map(|(u, _)| u.paired())
    };
    let sparse_kind = pair_kind(&up, &down);
    let sparse_seconds = times.time_kind(sparse_kind, None, run_sparse)?;
    let [up, down] = feed_forward_copies(layer, &plans, false)?;
    let run_dense = || down.forward(&up.forward_then(x, f)?).map(drop);
    let dense_kind = pair_kind(&up, &down);
    let dense_seconds = times.time_kind(dense_kind, None, run_dense)?;
    Ok(Some(FeedForward {
        plans,
        sparse: (sparse_kind, sparse_seconds),
        dense: (dense_kind, dense_seconds),
    }))
}

impl FeedForward {
    /// Sets both layers to their proposed N:M formats or both to dense, whichever pair
    /// ran faster, and their choices (`choices`, in order) to the pair's times.
    fn settle(
        &self,
        layer: &mut EncoderLayer,
        choices: &mut [FormatChoice],
        times: &ShapeTimes,
    ) -> Result<()> {
        let (sparse_seconds, dense_seconds) =
            (times.settled(self.sparse), times.settled(self.dense));
        let sparse_wins = sparse_seconds < dense_seconds;
        // Built on copies: an error leaves the layers as their own choices say.
        let [intermediate, output] = feed_forward_copies(layer, &self.plans, sparse_wins)?;
        (layer.intermediate, layer.output) = (intermediate, output);
        record_as_one(choices, sparse_wins, (sparse_seconds, dense_seconds));
        Ok(())
    }
}

/// Sets the choices of layers decided as one (`choices`, in order) to their side's
/// format (`sparse_wins`) and to the times of the products they run as, each naming the
/// others.
fn record_as_one(choices: &mut [FormatChoice], sparse_wins: bool, (sparse, dense): (f64, f64)) {
    let names: Vec<String> = choices.iter().map(|c| c.name.clone()).collect();
    for choice in choices.iter_mut() {
        choice.timed_with = names.iter().filter(|n| **n != choice.name).cloned().collect();
        choice.dense_seconds = dense;
        choice.proposed_seconds = Some(sparse);
        choice.chosen =
            if sparse_wins { choice.proposed.clone() } else { Format::Dense.to_string() };
    }
}

/// The 2:4 or 4:8 pattern `mask` follows, if it follows one. `choose_format` proposes
/// N:M only up to `NM_MAX_BATCH` columns; past it N:M's halved arithmetic beats the dense
/// GEMM on some CPUs and layer shapes and not on others, so here, where every proposal is
/// timed, an N:M mask is always a candidate.
fn nm_pattern_of(mask: &Mask) -> Option<NmPattern> {
    let four_eight = NmPattern::new(4, 8).ok()?;
    [NmPattern::TWO_FOUR, four_eight].into_iter().find(|p| p.first_violation(mask).is_none())
}

/// `choose_format`'s fixed crossovers with every CSR break-even lowered by
/// [`BREAK_EVEN_MARGIN`].
fn near_break_even_crossovers() -> Result<Crossovers> {
    let fixed = Crossovers::fixed();
    let lowered = fixed.csr_steps().iter().map(|&(b, s)| (b, (s - BREAK_EVEN_MARGIN).max(0.0)));
    Ok(Crossovers::from_steps(lowered.collect(), fixed.nm_max_batch())?)
}

/// The CSR-family format (CSR, or sliced ELLPACK at one token) that `choose_format_with`
/// picks for `mask` under the lowered crossovers `near`, if it picks one; `None` where
/// it keeps the matrix dense (too small, or sparser by less than the margin allows).
fn sparse_near_break_even(mask: &Mask, tokens: usize, near: &Crossovers) -> Option<Format> {
    match choose_format_with(mask, tokens, near) {
        format @ (Format::Csr | Format::SlicedEll) => Some(format),
        _ => None,
    }
}

/// The inputs the layers are timed on: `tokens` columns of a fixed pattern, one matrix
/// per input width, made at the first layer of that width.
struct TimingInputs {
    tokens: usize,
    by_width: Vec<DMatrix<f32>>,
}

impl TimingInputs {
    /// The input for `linear`'s width.
    fn for_layer(&mut self, linear: &Linear) -> &DMatrix<f32> {
        let cols = linear.shape().1;
        let i = match self.by_width.iter().position(|x| x.nrows() == cols) {
            Some(i) => i,
            None => {
                let pattern = |r: usize, c: usize| ((r * 7 + c * 13) % 17) as f32 - 8.0;
                self.by_width.push(DMatrix::from_fn(cols, self.tokens, pattern));
                self.by_width.len() - 1
            }
        };
        &self.by_width[i]
    }
}

/// The fastest product timed so far for each kind of product whose time depends on its
/// shape and layout alone, not on where its weights sit: dense (int8 included), N:M
/// (every row stores the same count of weights in the same layout, whatever their
/// values), and CSR and sliced ELLPACK for weights whose rows all keep the same count
/// (a prune that compares weights within each row, as Wanda's, leaves them so; the
/// positions then change only which inputs a row reads). Block and compacted formats,
/// whose size follows where the zeros sit, are timed layer by layer. Every layer of such
/// a kind runs the same product, so its time belongs to the kind: the kind's first layer
/// takes three runs and each later one a single run (more for short products), which
/// updates the kind's fastest. That keeps a moment of noise from deciding a layer, and
/// weighs the two sides alike (a dense time that is the fastest of many runs against a
/// format's best of three would favour dense), while planning a model whose layers
/// share a few shapes takes few runs of each layer past the first of its shape. Sparse
/// layers whose rows keep different counts, whose time follows their own zeros, take
/// their own best runs.
#[derive(Default)]
struct ShapeTimes {
    fastest: Vec<(ProductKind, f64)>,
}

/// What a product's time depends on: the weight's rows and columns, its format, its
/// value type, for CSR and sliced ELLPACK the count every row keeps (else 0), and
/// whether it is a stack of layers run as one.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ProductKind {
    rows: usize,
    cols: usize,
    format: Format,
    values: &'static str,
    kept: usize,
    stacked: bool,
    /// A feed-forward pair's two products, of which this is the first's shape.
    paired: bool,
}

impl ProductKind {
    /// The same product, of stacked layers.
    fn stacked(self) -> Self {
        Self { stacked: true, ..self }
    }

    /// A feed-forward pair whose first product is of this kind.
    fn paired(self) -> Self {
        Self { paired: true, ..self }
    }
}

/// The count of kept weights every row of `mask` has, if they all have the same.
fn uniform_row_length(mask: &Mask) -> Option<usize> {
    let counts = mask.kept_per_row();
    let first = *counts.first()?;
    counts.iter().all(|&c| c == first).then_some(first)
}

impl ShapeTimes {
    /// The kind of `linear`'s product in its present format, if its time is one of a
    /// kind (see [`ShapeTimes`]; `row_length` is the count every row of its weights
    /// keeps, if they all keep the same).
    fn kind(linear: &Linear, row_length: Option<usize>) -> Option<ProductKind> {
        let format = linear.format();
        let kept = match (format, row_length) {
            (Format::Dense | Format::Nm(_), _) => 0,
            (Format::Csr | Format::SlicedEll, Some(kept)) => kept,
            _ => return None,
        };
        let (rows, cols) = linear.shape();
        let values = linear.value_type();
        Some(ProductKind { rows, cols, format, values, kept, stacked: false, paired: false })
    }

    /// Times `linear` in its present format on `x`, and returns the fastest product of
    /// its kind so far, or its own best run, in seconds (see [`ShapeTimes::time_kind`];
    /// `rival` is the time of the product it competes with, if known).
    fn time(
        &mut self,
        linear: &Linear,
        x: &DMatrix<f32>,
        row_length: Option<usize>,
        rival: Option<f64>,
    ) -> Result<f64> {
        let kind = Self::kind(linear, row_length);
        let probed = rival.is_some() && self.fastest(kind).is_none() && x.ncols() >= PROBE_SLICES;
        let slice = probed.then(|| x.columns(0, x.ncols() / PROBE_SLICES).into_owned());
        let probe = slice.as_ref().map(|slice| || linear.forward(slice).map(drop));
        self.time_probed(kind, rival, probe, || linear.forward(x).map(drop))
    }

    /// Times `product`, of `kind`, as [`ShapeTimes::time_kind`] does, after `probe` (the
    /// same product on a slice of its tokens) if there is one and the kind has no time
    /// yet: a slice is less work than the whole, so a slice hopeless against `rival`
    /// (see [`hopeless`]) rules the whole out at a fraction of its cost, and its time
    /// stands for the kind's, a lower bound.
    fn time_probed(
        &mut self,
        kind: Option<ProductKind>,
        rival: Option<f64>,
        probe: Option<impl FnOnce() -> Result<()>>,
        product: impl FnMut() -> Result<()>,
    ) -> Result<f64> {
        if let Some(probe) = probe
            && self.fastest(kind).is_none()
        {
            let seconds = once(probe)?;
            if hopeless(seconds, rival) {
                if let Some(kind) = kind {
                    self.fastest.push((kind, seconds));
                }
                return Ok(seconds);
            }
        }
        self.time_kind(kind, rival, product)
    }

    /// Times `product`, of `kind`, and returns the fastest product of that kind so far
    /// (a kind's first timing takes three runs, later ones one, and more while they take
    /// under a few milliseconds), or for no kind the best of its own three or more runs,
    /// in seconds. A product hopeless against `rival` (see [`hopeless`]) takes no more runs: a
    /// kind that already is runs no more at all.
    fn time_kind(
        &mut self,
        kind: Option<ProductKind>,
        rival: Option<f64>,
        product: impl FnMut() -> Result<()>,
    ) -> Result<f64> {
        let Some(kind) = kind else { return best_of(TIMED_RUNS, rival, product) };
        let known = self.fastest.iter().position(|(k, _)| *k == kind);
        if let Some(i) = known
            && hopeless(self.fastest[i].1, rival)
        {
            return Ok(self.fastest[i].1);
        }
        let runs = if known.is_some() { 1 } else { TIMED_RUNS };
        let seconds = best_of(runs, rival, product)?;
        Ok(match known {
            Some(i) => {
                let fastest = &mut self.fastest[i].1;
                *fastest = fastest.min(seconds);
                *fastest
            }
            None => {
                self.fastest.push((kind, seconds));
                seconds
            }
        })
    }

    /// The fastest product of `kind` timed so far, if any.
    /// The time a product timed as `(kind, own best run)` is decided on: its kind's
    /// fastest, or its own where it has no kind.
    fn settled(&self, (kind, own): (Option<ProductKind>, f64)) -> f64 {
        self.fastest(kind).unwrap_or(own)
    }

    fn fastest(&self, kind: Option<ProductKind>) -> Option<f64> {
        let kind = kind?;
        self.fastest.iter().find(|(k, _)| *k == kind).map(|&(_, seconds)| seconds)
    }
}

/// Runs a product is timed over at the least where it has no kind, or is the first of
/// its kind (later ones of a kind take one at the least); the fastest counts.
const TIMED_RUNS: usize = 3;

/// Wall time after which a timing takes no further runs once it has taken its least.
/// Short products (a fraction of a millisecond at one sentence) vary by tens of percent
/// from run to run, as the second thread wakes or not, so a few runs of each side can
/// put either ahead; their best of a few dozen runs settles it, for a few milliseconds.
const TIMING_BUDGET: Duration = Duration::from_millis(4);

/// The most runs any one timing takes.
const MAX_TIMED_RUNS: usize = 64;

/// The share of the tokens (one in this many) a product not timed before is first run
/// on, where it has a rival: if that alone is hopeless (see [`hopeless`]), the product
/// is not run on all of them, and its time is the slice's, a lower bound.
const PROBE_SLICES: usize = 16;

/// How many times its rival's time a product's best run may take before it is
/// hopeless (see [`hopeless`]).
const HOPELESS_FACTOR: f64 = 4.0;

/// Whether a product whose best run took `best` seconds is hopeless against a rival that
/// took `rival`: more than [`HOPELESS_FACTOR`] times as long, and longer than
/// [`TIMING_BUDGET`]. Further runs could not make it win (its time is its kind's, and
/// run-to-run noise on products that long is tens of percent, not fourfold), and each
/// would cost as much as the several products it loses to: an int8 layer quantized in
/// groups of two inputs runs about a hundred times slower than the f32 GEMM. Shorter
/// products are timed in full, as they cost little and vary most.
fn hopeless(best: f64, rival: Option<f64>) -> bool {
    rival.is_some_and(|rival| best > HOPELESS_FACTOR * rival && best > TIMING_BUDGET.as_secs_f64())
}

/// The least of the runs of `f`, in seconds: `runs` of them, and more while they have
/// taken less than [`TIMING_BUDGET`] (up to [`MAX_TIMED_RUNS`]); one, if its first is
/// hopeless against `rival` (see [`hopeless`]).
fn best_of(runs: usize, rival: Option<f64>, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    let start = Instant::now();
    let mut taken = 0;
    while (taken < runs || (start.elapsed() < TIMING_BUDGET && taken < MAX_TIMED_RUNS))
        && !(taken > 0 && hopeless(best, rival))
    {
        best = best.min(once(&mut f)?);
        taken += 1;
    }
    Ok(best)
}

/// One timed run of `f`, in seconds.
fn once(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use shears_sparse::tuning::csr_break_even;

    use super::*;

    /// A 384x1536 mask with the given share of each row's 1536 weights pruned (rounded
    /// down to whole weights, as a row-by-row prune leaves them).
    fn rows_pruned(sparsity: f64) -> Mask {
        let pruned = (sparsity * 1536.0) as usize;
        Mask::from_fn(384, 1536, |r, c| (c + r * 7) % 1536 >= pruned).unwrap()
    }

    #[test]
    fn a_product_hopeless_against_its_rival_takes_one_run_and_its_kind_no_more() {
        let kind = ProductKind {
            rows: 4,
            cols: 4,
            format: Format::Dense,
            values: "i8",
            kept: 0,
            stacked: false,
            paired: false,
        };
        // Each run sleeps past the timing budget, so it takes at least that long.
        let slow = TIMING_BUDGET + Duration::from_millis(1);
        let runs = std::cell::Cell::new(0);
        let product = || {
            runs.set(runs.get() + 1);
            std::thread::sleep(slow);
            Ok(())
        };
        let mut times = ShapeTimes::default();
        // Against a rival that takes no time: one run, where a kind's first takes three.
        let first = times.time_kind(Some(kind), Some(0.0), product).unwrap();
        assert_eq!(runs.get(), 1);
        assert!(first >= slow.as_secs_f64());
        // The kind is known to be hopeless against such a rival: no run at all.
        assert_eq!(times.time_kind(Some(kind), Some(0.0), product).unwrap(), first);
        assert_eq!(runs.get(), 1);
        // Against a rival it can beat, or none, it is timed as any other product.
        times.time_kind(Some(kind), Some(1e9), product).unwrap();
        assert_eq!(runs.get(), 2);
        times.time_kind(None, None, product).unwrap();
        assert_eq!(runs.get(), 2 + TIMED_RUNS);
        // A kind first run on a hopeless slice of its tokens is not run in full, now or
        // for later layers.
        let other = ProductKind { rows: 8, ..kind };
        let probes = std::cell::Cell::new(0);
        let probe = || {
            probes.set(probes.get() + 1);
            std::thread::sleep(slow);
            Ok(())
        };
        let sliced = times.time_probed(Some(other), Some(0.0), Some(probe), product).unwrap();
        assert!(sliced >= slow.as_secs_f64());
        assert_eq!((probes.get(), runs.get()), (1, 2 + TIMED_RUNS));
        times.time_probed(Some(other), Some(0.0), Some(probe), product).unwrap();
        assert_eq!((probes.get(), runs.get()), (1, 2 + TIMED_RUNS));
        // A slice it may yet win from is followed by the whole product.
        let third = ProductKind { rows: 16, ..kind };
        times.time_probed(Some(third), Some(1e9), Some(probe), product).unwrap();
        assert_eq!((probes.get(), runs.get()), (2, 2 + 2 * TIMED_RUNS));
        // Hopeless means past both the factor and the budget: a short product is timed
        // in full however far behind it is.
        let budget = TIMING_BUDGET.as_secs_f64();
        assert!(hopeless(2.0 * budget, Some(budget / 4.0)));
        assert!(!hopeless(2.0 * budget, Some(budget)), "within the factor");
        assert!(!hopeless(budget / 2.0, Some(0.0)), "shorter than the budget");
        assert!(!hopeless(1e9, None), "no rival");
    }

    #[test]
    fn times_belong_to_a_shape_format_and_value_type_and_only_fall() {
        let linear = |rows: usize, cols: usize| {
            let w = DMatrix::from_fn(rows, cols, |r, c| (r + 2 * c) as f32 / 64.0);
            Linear::new("layer.weight", w, nalgebra::DVector::zeros(rows)).unwrap()
        };
        let (a, b, wide) = (linear(16, 8), linear(16, 8), linear(16, 24));
        let mut inputs = TimingInputs { tokens: 5, by_width: Vec::new() };
        let mut times = ShapeTimes::default();
        let first = times.time(&a, inputs.for_layer(&a), None, None).unwrap();
        let again = times.time(&b, inputs.for_layer(&b), None, None).unwrap();
        assert!(first > 0.0 && again <= first, "{first} then {again}");
        times.time(&wide, inputs.for_layer(&wide), None, None).unwrap();
        let mut bf16 = linear(16, 8);
        bf16.set_format(Format::Dense).unwrap();
        assert_eq!(bf16.value_type(), "bf16", "weights exact in bf16 are stored so");
        times.time(&bf16, inputs.for_layer(&bf16), None, None).unwrap();
        // N:M products are keyed by their pattern; CSR's by the count every row keeps,
        // else they are the layer's own.
        let w = DMatrix::from_fn(16, 8, |r, c| if c % 4 < 2 { (r + c) as f32 + 0.5 } else { 0.0 });
        let mask = Mask::from_fn(16, 8, |r, c| w[(r, c)] != 0.0).unwrap();
        let mut nm = Linear::new("nm.weight", w, nalgebra::DVector::zeros(16)).unwrap();
        let two_four = Format::Nm(NmPattern::TWO_FOUR);
        nm.set_f32_format(two_four).unwrap();
        times.time(&nm, inputs.for_layer(&nm), uniform_row_length(&mask), None).unwrap();
        nm.set_f32_format(Format::Csr).unwrap();
        times.time(&nm, inputs.for_layer(&nm), None, None).unwrap();
        times.time(&nm, inputs.for_layer(&nm), uniform_row_length(&mask), None).unwrap();
        let keys: Vec<_> = times
            .fastest
            .iter()
            .map(|(k, _)| {
                assert!(!k.stacked);
                (k.rows, k.cols, k.format, k.values, k.kept)
            })
            .collect();
        let (dense, csr) = (Format::Dense, Format::Csr);
        assert_eq!(
            keys,
            [
                (16, 8, dense, "f32", 0),
                (16, 24, dense, "f32", 0),
                (16, 8, dense, "bf16", 0),
                (16, 8, two_four, "f32", 0),
                (16, 8, csr, "f32", 4),
            ]
        );
        let (first_kind, first_seconds) = times.fastest[0];
        assert_eq!(times.fastest(Some(first_kind)), Some(first_seconds));
        assert_eq!(times.fastest(Some(first_kind.stacked())), None);
        assert_eq!(times.fastest(None), None);
        let ragged = Mask::from_fn(3, 4, |r, c| c <= r).unwrap();
        assert_eq!(uniform_row_length(&ragged), None);
        assert_eq!(uniform_row_length(&Mask::all_kept(0, 4).unwrap()), None);
        // One input per width, `tokens` columns each.
        let shapes: Vec<_> = inputs.by_width.iter().map(DMatrix::shape).collect();
        assert_eq!(shapes, [(8, 5), (24, 5)]);
    }

    #[test]
    fn a_layer_settles_on_its_kinds_fastest_value_type_and_side() {
        // 2:4 weights exact in bf16, run in bf16 or f32, dense or 2:4.
        let w = DMatrix::from_fn(16, 8, |r, c| if c % 4 < 2 { (r + c) as f32 + 0.5 } else { 0.0 });
        let mask = Mask::from_fn(16, 8, |r, c| w[(r, c)] != 0.0).unwrap();
        let row_length = uniform_row_length(&mask);
        let mut linear = Linear::new("nm.weight", w, nalgebra::DVector::zeros(16)).unwrap();
        let two_four = Format::Nm(NmPattern::TWO_FOUR);
        let mut kind = |format: Format, half: bool| {
            if half { linear.set_format(format) } else { linear.set_f32_format(format) }.unwrap();
            assert_eq!(linear.value_type(), if half { "bf16" } else { "f32" });
            ShapeTimes::kind(&linear, row_length).unwrap()
        };
        let (dense_bf16, dense_f32) = (kind(Format::Dense, true), kind(Format::Dense, false));
        let (nm_bf16, nm_f32) = (kind(two_four, true), kind(two_four, false));
        // As first timed: dense in f32, against 2:4 in bf16.
        linear.set_f32_format(Format::Dense).unwrap();
        let mut plan = Plan {
            timed: Timed { proposed: two_four, half: true, dense_half: false },
            dense: vec![(true, Some(dense_bf16)), (false, Some(dense_f32))],
            proposed: vec![(true, Some(nm_bf16)), (false, Some(nm_f32))],
            half_values: Some("bf16"),
            row_length,
        };
        let mut choice = FormatChoice {
            name: "nm.weight".into(),
            sparsity: 0.5,
            proposed: "n:m 2:4 bf16".into(),
            dense_seconds: 1.0,
            proposed_seconds: Some(2.0),
            chosen: "dense".into(),
            timed_with: Vec::new(),
        };
        let times = |fastest: [f64; 4]| ShapeTimes {
            fastest: vec![
                (dense_bf16, fastest[0]),
                (dense_f32, fastest[1]),
                (nm_bf16, fastest[2]),
                (nm_f32, fastest[3]),
            ],
        };
        let runs = |linear: &Linear| (linear.format(), linear.value_type());

        // All the layers' runs put 2:4 in f32 ahead.
        plan.settle(&mut linear, &mut choice, &times([3.0, 2.0, 1.5, 1.0])).unwrap();
        assert_eq!((choice.proposed.as_str(), choice.chosen.as_str()), ("n:m 2:4", "n:m 2:4"));
        assert_eq!((choice.dense_seconds, choice.proposed_seconds), (2.0, Some(1.0)));
        assert_eq!(runs(&linear), (two_four, "f32"));

        // Then dense in bf16; equal times keep the first timed, the half-precision one.
        plan.settle(&mut linear, &mut choice, &times([0.5, 2.0, 1.0, 1.0])).unwrap();
        assert_eq!((choice.proposed.as_str(), choice.chosen.as_str()), ("n:m 2:4 bf16", "dense"));
        assert_eq!((choice.dense_seconds, choice.proposed_seconds), (0.5, Some(1.0)));
        assert_eq!(runs(&linear), (Format::Dense, "bf16"));

        // Proposed dense, only the value type settles.
        let mut dense_only = Plan { proposed: Vec::new(), half_values: None, ..plan.clone() };
        let mut alone =
            FormatChoice { proposed: "dense".into(), proposed_seconds: None, ..choice.clone() };
        dense_only.settle(&mut linear, &mut alone, &times([3.0, 2.0, 1.5, 1.0])).unwrap();
        assert_eq!((alone.chosen.as_str(), alone.dense_seconds), ("dense", 2.0));
        assert_eq!(runs(&linear), (Format::Dense, "f32"));
        dense_only.settle(&mut linear, &mut alone, &times([0.5, 2.0, 1.5, 1.0])).unwrap();
        assert_eq!((alone.proposed_seconds, alone.dense_seconds), (None, 0.5));
        assert_eq!(runs(&linear), (Format::Dense, "bf16"));

        // A variant timed on its own leaves the layer as it is.
        let before = choice.clone();
        plan.proposed[1].1 = None;
        plan.settle(&mut linear, &mut choice, &times([3.0, 2.0, 1.5, 1.0])).unwrap();
        assert_eq!(choice, before);
        assert_eq!(runs(&linear), (Format::Dense, "bf16"));
    }

    #[test]
    fn an_int8_layer_settles_on_the_fastest_of_its_integer_products_and_float_formats() {
        // 2:4 weights in int8: dequantized, they run dense or in 2:4 (in f32, as timed).
        let w = DMatrix::from_fn(16, 8, |r, c| {
            if c % 4 < 2 { (r as f32 - c as f32) * 0.3 + 0.1 } else { 0.0 }
        });
        let int8 = Int8Matrix::quantize(&w, shears_sparse::QuantScheme::PerRow).unwrap();
        let dequantized = int8.dequantize();
        let mask = Mask::from_fn(16, 8, |r, c| dequantized[(r, c)] != 0.0).unwrap();
        let row_length = uniform_row_length(&mask);
        let zeros = nalgebra::DVector::zeros(16);
        let mut linear = Linear::new("q.weight", dequantized.clone(), zeros).unwrap();
        let two_four = Format::Nm(NmPattern::TWO_FOUR);
        linear.set_f32_format(two_four).unwrap();
        let nm_kind = ShapeTimes::kind(&linear, row_length);
        linear.set_f32_format(Format::Dense).unwrap();
        let dense_kind = ShapeTimes::kind(&linear, row_length);
        linear.set_int8(int8.clone()).unwrap();
        let int8_kind = ShapeTimes::kind(&linear, None);
        let kinds = [int8_kind.unwrap(), dense_kind.unwrap(), nm_kind.unwrap()];
        assert!(kinds[0] != kinds[1] && kinds[1] != kinds[2] && kinds[0] != kinds[2]);
        let float = Plan {
            timed: Timed { proposed: two_four, half: false, dense_half: false },
            dense: vec![(false, dense_kind)],
            proposed: vec![(false, nm_kind)],
            half_values: None,
            row_length,
        };
        let float_choice = FormatChoice {
            name: "q.weight".into(),
            sparsity: 0.5,
            proposed: two_four.to_string(),
            dense_seconds: 1.0,
            proposed_seconds: Some(2.0),
            chosen: "dense".into(),
            timed_with: Vec::new(),
        };
        let mut plan =
            Int8Plan { int8: int8.clone(), int8_kind, int8_seconds: 3.0, float, float_choice };
        let runs = |l: &Linear| (l.int8().is_some(), l.format(), l.value_type());
        let summary = |c: &FormatChoice| {
            (c.chosen.clone(), c.proposed.clone(), c.proposed_seconds, c.dense_seconds)
        };
        // As first timed: dense, ahead of 2:4, which is ahead of the integer products.
        let mut choice = plan.float_choice.clone();
        plan.decide(&mut linear, &mut choice).unwrap();
        assert_eq!(summary(&choice), ("dense".into(), "n:m 2:4".into(), Some(2.0), 1.0));
        assert_eq!(runs(&linear), (false, Format::Dense, "f32"));
        assert_eq!(linear.dense_weights(), dequantized);
        let times = |int8: f64, dense: f64, nm: f64| ShapeTimes {
            fastest: vec![(kinds[0], int8), (kinds[1], dense), (kinds[2], nm)],
        };
        // All the layers' runs put the integer products ahead.
        plan.settle(&mut linear, &mut choice, &times(0.5, 1.0, 2.0)).unwrap();
        assert_eq!(summary(&choice), (INT8.into(), INT8.into(), Some(0.5), 1.0));
        assert_eq!(linear.int8(), Some(&int8));
        // Then 2:4, which the dequantized weights run in.
        plan.settle(&mut linear, &mut choice, &times(1.5, 1.0, 0.8)).unwrap();
        assert_eq!(summary(&choice), ("n:m 2:4".into(), "n:m 2:4".into(), Some(0.8), 1.0));
        assert_eq!(runs(&linear), (false, two_four, "f32"));
        assert_eq!(linear.dense_weights(), dequantized);
        // Then dense, the integer products the faster of the others.
        plan.settle(&mut linear, &mut choice, &times(1.2, 1.0, 1.5)).unwrap();
        assert_eq!(summary(&choice), ("dense".into(), INT8.into(), Some(1.2), 1.0));
        assert_eq!(runs(&linear), (false, Format::Dense, "f32"));
        // Without a time for a kind, the layer stays as it is.
        let before = choice.clone();
        plan.settle(&mut linear, &mut choice, &ShapeTimes::default()).unwrap();
        assert_eq!(choice, before);
        assert_eq!(runs(&linear), (false, Format::Dense, "f32"));
    }

    #[test]
    fn an_int8_layer_is_timed_with_others_only_where_its_float_format_was_proposed() {
        let w = DMatrix::from_fn(8, 8, |r, c| if c % 4 < 2 { (r + c) as f32 - 3.5 } else { 0.0 });
        let int8 = Int8Matrix::quantize(&w, shears_sparse::QuantScheme::PerRow).unwrap();
        let float = Plan {
            timed: Timed { proposed: Format::Csr, half: false, dense_half: false },
            dense: vec![(false, None)],
            proposed: vec![(false, None)],
            half_values: None,
            row_length: Some(4),
        };
        let choice = |proposed: &str, chosen: &str| FormatChoice {
            name: "q.weight".into(),
            sparsity: 0.5,
            proposed: proposed.into(),
            dense_seconds: 1.0,
            proposed_seconds: Some(0.5),
            chosen: chosen.into(),
            timed_with: Vec::new(),
        };
        let pending = Pending::Int8(Box::new(Int8Plan {
            int8,
            int8_kind: None,
            int8_seconds: 0.7,
            float: float.clone(),
            float_choice: choice("csr", "csr"),
        }));
        let planned = |c: &FormatChoice| float_plan(&pending, c).map(|p| p.timed.proposed);
        assert_eq!(planned(&choice("csr", "csr")), Some(Format::Csr));
        assert_eq!(planned(&choice("csr", "dense")), Some(Format::Csr));
        assert_eq!(planned(&choice(INT8, INT8)), None);
        assert_eq!(planned(&choice(INT8, "dense")), None);
        let pending = Pending::Float(float);
        assert_eq!(
            float_plan(&pending, &choice("csr", "dense")).map(|p| p.timed.proposed),
            Some(Format::Csr)
        );
    }

    #[test]
    fn csr_is_timed_up_to_the_margin_below_its_break_even() {
        let near = near_break_even_crossovers().unwrap();
        for (tokens, sparse) in [(1, Format::SlicedEll), (8, Format::Csr), (128, Format::Csr)] {
            let break_even = csr_break_even(tokens);
            for below in [0.0001, BREAK_EVEN_MARGIN / 2.0, BREAK_EVEN_MARGIN - 0.001] {
                let mask = rows_pruned(break_even - below);
                assert_eq!(choose_format(&mask, tokens), Format::Dense, "{tokens}, {below}");
                let proposed = sparse_near_break_even(&mask, tokens, &near);
                assert_eq!(proposed, Some(sparse), "{tokens} tokens, {below} below");
            }
            let further = rows_pruned(break_even - BREAK_EVEN_MARGIN - 0.01);
            assert_eq!(sparse_near_break_even(&further, tokens, &near), None, "{tokens}");
        }
        // A 70% prune of 1536-input rows leaves 1075 of 1075.2 pruned weights per row.
        let seventy = rows_pruned(0.7);
        assert!(seventy.sparsity().get() < 0.7);
        assert_eq!(sparse_near_break_even(&seventy, 128, &near), Some(Format::Csr));

        // Sparse enough, with no row or column to compact away, but too small.
        let small = Mask::from_fn(64, 64, |r, c| (r + c) % 64 >= 45).unwrap();
        assert_eq!(sparse_near_break_even(&small, 128, &near), None);
    }
}
