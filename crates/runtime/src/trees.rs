//! Tree ensembles evaluated natively: XGBoost's JSON model files and LightGBM's text model
//! files, with the libraries' own semantics (XGBoost compares in single precision, `x <
//! threshold`, and sums in single precision; LightGBM compares and sums in double, `x <=
//! threshold`, with its missing-value types), laid out flat: one array of nodes for every
//! tree, a row walked down each tree with no allocation.
//!
//! The model takes one input, `input-0` (FP32 [N, features]), and gives one output,
//! `predict`, what the library's `predict` gives: the probability of the positive class for a
//! binary classifier ([N]), the class probabilities for a multiclass one ([N, classes]), the
//! value for a regressor ([N]). Missing values are NaN.

use std::path::Path;

use serde_json::Value;

use crate::{DataType, Error, Tensor, TensorData, TensorSpec};

mod onnx_ml;

/// A node: a split (children `left`, `right`) or a leaf (`left == LEAF`, its value in `value`).
#[derive(Debug, Clone, Copy)]
struct Node {
    /// The threshold of a numeric split, the leaf's value, or for a categorical split the
    /// index of its category set in `Forest::cats`.
    value: f64,
    feature: u32,
    left: u32,
    right: u32,
    flags: u8,
}

const LEAF: u32 = u32::MAX;
/// Missing values go left.
const DEFAULT_LEFT: u8 = 1;
/// A categorical split.
const CATEGORICAL: u8 = 2;
/// LightGBM's missing types: zero counts as missing; NaN counts as missing.
const MISSING_ZERO: u8 = 4;
const MISSING_NAN: u8 = 8;

/// Whose semantics the forest follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Library {
    XGBoost,
    LightGBM,
}

/// From the summed margins to the prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    Identity,
    /// `1 / (1 + exp(-scale * x))`, per output.
    Sigmoid(f64),
    /// Over the groups.
    Softmax,
    Exp,
}

/// A tree ensemble, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Forest {
    library: Library,
    nodes: Vec<Node>,
    /// The root of each tree, and the output group it adds to.
    trees: Vec<(u32, u32)>,
    groups: usize,
    features: usize,
    /// The starting margin of each group.
    base: Vec<f64>,
    link: Link,
    /// LightGBM's `average_output` (random forest mode): the margins are means over trees.
    average: bool,
    /// Category sets (bitsets over category numbers), by categorical node.
    cats: Vec<Vec<u32>>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// The evaluation layout, made by [`Forest::compile`].
    flat: Flat,
    /// What the model answers.
    output: Output,
    /// Leaves that add to every group (an ONNX ensemble's multiclass leaves): `groups` values
    /// a node, by node. Empty when each tree adds its leaves to its one group.
    leaf_vectors: Vec<f64>,
}

/// What a forest's model answers.
#[derive(Debug, Clone, PartialEq)]
enum Output {
    /// `predict`, as the library's own `predict` (XGBoost and LightGBM model files).
    Predict,
    /// An ONNX `TreeEnsembleClassifier`'s `label` (INT64 [N]: the label of the highest score,
    /// the first of equal ones) and `probabilities` (FP32 [N, classes]).
    OnnxClassifier { labels: Vec<i64> },
    /// An ONNX `TreeEnsembleRegressor`'s one output (FP32 [N, targets]).
    OnnxRegressor,
    /// An ONNX binary classifier whose weights are for one class, as onnxruntime answers it
    /// from the one score `s` (the sum and base value): with positive weights (probabilities,
    /// no transform) the label is the second when `s > 0.5` and the probabilities `[1 - s,
    /// s]`; with mixed weights (a LOGISTIC booster) the second when `s > 0` and `[σ(-s), σ(s)]`.
    OnnxBinary {
        labels: [i64; 2],
        positive_weights: bool,
    },
}

/// The trees laid out for evaluation: in each tree a node's children are adjacent (`right ==
/// left + 1`), so a step is `i = left + !goes_left` with no branch; every value goes "right"
/// from a leaf, whose "left" is the node before it, so a walk stays on a leaf, takes exactly
/// its tree's depth in steps, and several rows walk a tree side by side.
#[derive(Debug, Clone, Default)]
struct Flat {
    nodes: Vec<FlatNode>,
    /// Each node's leaf value (0 for splits), or with vector leaves its `groups` values.
    values: Vec<f64>,
    /// Values a node: 1, or the groups for vector leaves.
    stride: usize,
    /// Root, depth and output group of each tree.
    trees: Vec<(u32, u32, u32)>,
}

/// 16 bytes: a 300-tree booster's nodes take two thirds of the cache they would unpacked.
#[derive(Debug, Clone, Copy)]
struct FlatNode {
    /// A numeric split's threshold, NaN for a leaf, a categorical split's set index.
    threshold: f64,
    left: u32,
    /// The feature (low 28 bits) and the flags (high 4).
    packed: u32,
}

/// Features a split may name: those that fit in [`FlatNode::packed`].
const MAX_FEATURES: usize = 1 << 28;

impl FlatNode {
    fn new(threshold: f64, feature: u32, left: u32, flags: u8) -> Self {
        Self {
            threshold,
            left,
            packed: feature | (u32::from(flags) << 28),
        }
    }

    #[inline(always)]
    fn feature(&self) -> usize {
        (self.packed & (MAX_FEATURES as u32 - 1)) as usize
    }

    #[inline(always)]
    fn flags(&self) -> u8 {
        (self.packed >> 28) as u8
    }
}

/// Rows walked through a tree side by side.
const LANES: usize = 8;

fn load_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Load {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl Forest {
    /// Loads an XGBoost model saved as JSON or UBJSON (`Booster.save_model("model.json")` or
    /// `"model.ubj"`, told apart by their first bytes).
    pub fn load_xgboost(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| load_error(path, e.to_string()))?;
        let json: Value = if bytes.starts_with(b"{L")
            || bytes.starts_with(b"{l")
            || bytes.starts_with(b"{i")
            || bytes.starts_with(b"{U")
            || bytes.starts_with(b"{I")
        {
            ubjson(&bytes)
                .map_err(|e| load_error(path, format!("not an XGBoost UBJSON model: {e}")))?
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                load_error(
                    path,
                    format!("not an XGBoost JSON model: {e} (the old binary format is not read; save it as .json or .ubj)"),
                )
            })?
        };
        xgboost(&json).map_err(|m| load_error(path, m))
    }

    /// Loads a LightGBM model saved as text (`Booster.save_model("model.txt")`).
    pub fn load_lightgbm(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| load_error(path, e.to_string()))?;
        lightgbm(&text).map_err(|m| load_error(path, m))
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The number of trees.
    pub fn trees(&self) -> usize {
        self.trees.len()
    }

    /// Trees adding to each group: all of them with vector leaves, else their share.
    fn trees_per_group(&self) -> usize {
        if self.leaf_vectors.is_empty() {
            (self.trees.len() / self.groups.max(1)).max(1)
        } else {
            self.trees.len().max(1)
        }
    }

    /// Lays the trees out for evaluation (see [`Flat`]).
    fn compile(&mut self) {
        let stride = if self.leaf_vectors.is_empty() {
            1
        } else {
            self.groups
        };
        let mut flat = Flat {
            stride,
            ..Flat::default()
        };
        for &(root, group) in &self.trees {
            let start = flat.nodes.len() as u32;
            // Breadth first, the two children of a split placed together.
            let mut order: Vec<u32> = vec![root];
            let mut place: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
            place.insert(root, start);
            let mut depth = vec![0u32];
            let mut k = 0;
            while k < order.len() {
                let n = self.nodes[order[k] as usize];
                if n.left != LEAF {
                    for c in [n.left, n.right] {
                        place.insert(c, start + order.len() as u32);
                        order.push(c);
                        depth.push(depth[k] + 1);
                    }
                }
                k += 1;
            }
            for (k, &old) in order.iter().enumerate() {
                let n = self.nodes[old as usize];
                let me = start + k as u32;
                if n.left == LEAF {
                    // Every value goes "right" from a leaf (no comparison with NaN holds, and
                    // no missing value goes left), and its "left" is the node before it: the
                    // walk stays on it, whatever the input, infinities included.
                    flat.nodes
                        .push(FlatNode::new(f64::NAN, 0, me.wrapping_sub(1), 0));
                    if stride == 1 {
                        flat.values.push(n.value);
                    } else {
                        let at = old as usize * stride;
                        flat.values
                            .extend_from_slice(&self.leaf_vectors[at..at + stride]);
                    }
                } else {
                    // XGBoost compares in single precision: its thresholds are floats.
                    let threshold = if self.library == XG && n.flags & CATEGORICAL == 0 {
                        f64::from(n.value as f32)
                    } else {
                        n.value
                    };
                    flat.nodes
                        .push(FlatNode::new(threshold, n.feature, place[&n.left], n.flags));
                    flat.values.extend(std::iter::repeat_n(0.0, stride));
                }
            }
            let tree_depth = depth.into_iter().max().unwrap_or(0);
            flat.trees.push((start, tree_depth, group));
        }
        self.flat = flat;
    }

    /// Predicts every row of the one input (FP32 or FP64, [N, features]).
    pub fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, Error> {
        let name = self.inputs[0].name.clone();
        let bad = |message: String| Error::Input {
            input: name.clone(),
            message,
        };
        let [input] = inputs else {
            return Err(bad(format!(
                "the model takes one input, {} were given",
                inputs.len()
            )));
        };
        let width = self.features;
        let rows: Vec<f64> = match &input.data {
            TensorData::F32(v) => v.iter().map(|x| f64::from(*x)).collect(),
            TensorData::F64(v) => v.clone(),
            other => {
                return Err(bad(format!(
                    "expected FP32 values, got {}",
                    other.datatype().as_str()
                )));
            }
        };
        if input.shape.len() != 2 || input.shape[1] != width {
            return Err(bad(format!(
                "shape {:?} does not match [N, {width}]",
                input.shape
            )));
        }
        let n = input.shape[0];
        let mut out = vec![0f64; n * self.groups];
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let threads = *CORES
            .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
        // Large batches over a large forest are split over the cores.
        let work = n * self.flat.trees.len();
        // A classifier's label is the class of the highest score before the transform (which
        // may round two scores to one), as onnxruntime picks it.
        let transform = !matches!(
            self.output,
            Output::OnnxClassifier { .. } | Output::OnnxBinary { .. }
        );
        if threads > 1 && n >= 64 && work >= 5_000 {
            let per = n.div_ceil(threads);
            std::thread::scope(|scope| {
                for (rows, out) in rows
                    .chunks(per * width.max(1))
                    .zip(out.chunks_mut(per * self.groups))
                {
                    scope.spawn(move || self.predict_rows(rows, out, transform));
                }
            });
        } else {
            self.predict_rows(&rows, &mut out, transform);
        }
        match &self.output {
            Output::Predict => {
                let shape = if self.groups == 1 {
                    vec![n]
                } else {
                    vec![n, self.groups]
                };
                let data = match self.library {
                    XG => TensorData::F32(out.iter().map(|v| *v as f32).collect()),
                    LG => TensorData::F64(out),
                };
                Ok(vec![Tensor {
                    name: self.outputs[0].name.clone(),
                    shape,
                    data,
                }])
            }
            Output::OnnxClassifier { labels } => {
                let chosen = out
                    .chunks(self.groups)
                    .map(|row| {
                        let mut best = 0;
                        for (g, v) in row.iter().enumerate() {
                            if *v > row[best] {
                                best = g;
                            }
                        }
                        labels[best]
                    })
                    .collect();
                for row in out.chunks_mut(self.groups) {
                    self.transform(row);
                }
                Ok(vec![
                    Tensor {
                        name: self.outputs[0].name.clone(),
                        shape: vec![n],
                        data: TensorData::I64(chosen),
                    },
                    Tensor {
                        name: self.outputs[1].name.clone(),
                        shape: vec![n, self.groups],
                        data: TensorData::F32(out.iter().map(|v| *v as f32).collect()),
                    },
                ])
            }
            Output::OnnxBinary {
                labels,
                positive_weights,
            } => {
                let (mut chosen, mut probabilities) =
                    (Vec::with_capacity(n), Vec::with_capacity(2 * n));
                for &m in &out {
                    let s = m as f32;
                    let (second, p) = if *positive_weights {
                        (s > 0.5, [1.0 - s, s])
                    } else {
                        (s > 0.0, [logistic(-s), logistic(s)])
                    };
                    chosen.push(labels[usize::from(second)]);
                    probabilities.extend(p);
                }
                Ok(vec![
                    Tensor {
                        name: self.outputs[0].name.clone(),
                        shape: vec![n],
                        data: TensorData::I64(chosen),
                    },
                    Tensor {
                        name: self.outputs[1].name.clone(),
                        shape: vec![n, 2],
                        data: TensorData::F32(probabilities),
                    },
                ])
            }
            Output::OnnxRegressor => Ok(vec![Tensor {
                name: self.outputs[0].name.clone(),
                shape: vec![n, self.groups],
                data: TensorData::F32(out.iter().map(|v| *v as f32).collect()),
            }]),
        }
    }

    /// Predictions of `rows` (flat, `features` a row) into `out` (`groups` a row).
    fn predict_rows(&self, rows: &[f64], out: &mut [f64], transform: bool) {
        let width = self.features.max(1);
        let mut xs: Vec<f64> = rows.to_vec();
        if self.library == XG {
            // XGBoost reads its input in single precision.
            xs.iter_mut().for_each(|x| *x = f64::from(*x as f32));
        }
        for (block, out) in xs
            .chunks(width * LANES)
            .zip(out.chunks_mut(self.groups * LANES))
        {
            let lanes = block.len() / width;
            // Several rows walk side by side in blocks of LANES: a short block is padded with
            // copies of its last row (their results are dropped).
            let padded;
            let (block, walked) = if lanes > 1 && lanes < LANES {
                let mut p = block.to_vec();
                let last = block[(lanes - 1) * width..].to_vec();
                for _ in lanes..LANES {
                    p.extend_from_slice(&last);
                }
                padded = p;
                (&padded[..], LANES)
            } else {
                (block, lanes)
            };
            if walked > lanes {
                let mut sink = vec![0f64; self.groups * LANES];
                self.margins_of(block, walked, &mut sink);
                let n = lanes * self.groups;
                out[..n].copy_from_slice(&sink[..n]);
            } else {
                self.margins_of(block, walked, out);
            }
            if transform {
                for row in out.chunks_mut(self.groups).take(lanes) {
                    self.transform(row);
                }
            }
        }
    }

    /// [`Forest::margins_block`] made for this forest's library, and without the categorical
    /// test when it has no categorical split.
    fn margins_of(&self, block: &[f64], lanes: usize, out: &mut [f64]) {
        match (self.library, self.cats.is_empty()) {
            (XG, true) => self.margins_block::<true, false>(block, lanes, out),
            (XG, false) => self.margins_block::<true, true>(block, lanes, out),
            (LG, true) => self.margins_block::<false, false>(block, lanes, out),
            (LG, false) => self.margins_block::<false, true>(block, lanes, out),
        }
    }

    /// The margins of up to [`LANES`] rows, walking each tree for all of them at once.
    fn margins_block<const XGBOOST: bool, const CATS: bool>(
        &self,
        block: &[f64],
        lanes: usize,
        out: &mut [f64],
    ) {
        let width = self.features.max(1);
        let groups = self.groups;
        let nodes = &self.flat.nodes;
        let cats = &self.cats;
        // Margins of every lane and group: on the stack for the usual sizes.
        let mut acc_stack = [0f64; 8 * LANES];
        let mut acc32_stack = [0f32; 8 * LANES];
        let mut acc_heap = Vec::new();
        let mut acc32_heap = Vec::new();
        let (acc, acc32): (&mut [f64], &mut [f32]) = if groups <= 8 {
            (
                &mut acc_stack[..groups * LANES],
                &mut acc32_stack[..groups * LANES],
            )
        } else {
            acc_heap.resize(groups * LANES, 0.0);
            acc32_heap.resize(groups * LANES, 0.0);
            (&mut acc_heap, &mut acc32_heap)
        };
        if XGBOOST {
            for l in 0..lanes {
                for g in 0..groups {
                    acc32[l * groups + g] = self.base[g] as f32;
                }
            }
        }
        let values = &self.flat.values;
        let stride = self.flat.stride;
        if lanes == 1 {
            // One row: eight trees walked side by side instead, for as many steps as the
            // deepest of them (a leaf points at itself).
            for chunk in self.flat.trees.chunks(LANES) {
                let mut at = [0u32; LANES];
                for (a, t) in at.iter_mut().zip(chunk) {
                    *a = t.0;
                }
                let depth = chunk.iter().map(|t| t.1).max().unwrap_or(0);
                for _ in 0..depth {
                    for a in at.iter_mut().take(chunk.len()) {
                        let n = &nodes[*a as usize];
                        let x = block[n.feature()];
                        let left = if XGBOOST {
                            xgboost_goes_left_flat::<CATS>(n, x, cats)
                        } else {
                            lightgbm_goes_left_flat::<CATS>(n, x, cats)
                        };
                        *a = n.left.wrapping_add(u32::from(!left));
                    }
                }
                // In tree order, so that single-precision sums add as XGBoost adds them.
                for (a, t) in at.iter().zip(chunk) {
                    let a = *a as usize;
                    if stride == 1 {
                        let g = t.2 as usize;
                        if XGBOOST {
                            acc32[g] += values[a] as f32;
                        } else {
                            acc[g] += values[a];
                        }
                    } else {
                        let leaf = &values[a * stride..(a + 1) * stride];
                        for (g, v) in leaf.iter().enumerate() {
                            if XGBOOST {
                                acc32[g] += *v as f32;
                            } else {
                                acc[g] += v;
                            }
                        }
                    }
                }
            }
        } else {
            // Always a full block (a short one is padded by the caller): the lanes are a
            // constant, and the compiler unrolls the walk.
            for &(root, depth, group) in &self.flat.trees {
                let mut at = [root; LANES];
                for _ in 0..depth {
                    for l in 0..LANES {
                        let n = &nodes[at[l] as usize];
                        let x = block[l * width + n.feature()];
                        let left = if XGBOOST {
                            xgboost_goes_left_flat::<CATS>(n, x, cats)
                        } else {
                            lightgbm_goes_left_flat::<CATS>(n, x, cats)
                        };
                        at[l] = n.left.wrapping_add(u32::from(!left));
                    }
                }
                for l in 0..lanes {
                    let a = at[l] as usize;
                    if stride == 1 {
                        let g = group as usize;
                        if XGBOOST {
                            acc32[l * groups + g] += values[a] as f32;
                        } else {
                            acc[l * groups + g] += values[a];
                        }
                    } else {
                        let leaf = &values[a * stride..(a + 1) * stride];
                        for (g, v) in leaf.iter().enumerate() {
                            if XGBOOST {
                                acc32[l * groups + g] += *v as f32;
                            } else {
                                acc[l * groups + g] += v;
                            }
                        }
                    }
                }
            }
        }
        for l in 0..lanes {
            let row = &mut out[l * groups..(l + 1) * groups];
            match XGBOOST {
                true => {
                    for g in 0..groups {
                        row[g] = f64::from(acc32[l * groups + g]);
                    }
                }
                false => {
                    for g in 0..groups {
                        let mut m = acc[l * groups + g];
                        if self.average {
                            m /= self.trees_per_group() as f64;
                        }
                        row[g] = m + self.base[g];
                    }
                }
            }
        }
    }

    /// The summed margins of one row, by the plain walk (for the tests).
    #[cfg(test)]
    fn margins(&self, row: &[f64], margins: &mut [f64]) {
        match self.library {
            XG => {
                // XGBoost sums in single precision, from the base margin.
                let mut sums: Vec<f32> = self.base.iter().map(|b| *b as f32).collect();
                for &(root, group) in &self.trees {
                    if self.leaf_vectors.is_empty() {
                        sums[group as usize] += self.leaf(root, row) as f32;
                    } else {
                        let at = self.leaf_index(root, row) * self.groups;
                        for (s, v) in sums.iter_mut().zip(&self.leaf_vectors[at..]) {
                            *s += *v as f32;
                        }
                    }
                }
                for (m, s) in margins.iter_mut().zip(sums) {
                    *m = f64::from(s);
                }
            }
            LG => {
                margins.fill(0.0);
                for &(root, group) in &self.trees {
                    if self.leaf_vectors.is_empty() {
                        margins[group as usize] += self.leaf(root, row);
                    } else {
                        let at = self.leaf_index(root, row) * self.groups;
                        for (m, v) in margins.iter_mut().zip(&self.leaf_vectors[at..]) {
                            *m += v;
                        }
                    }
                }
                if self.average && !self.trees.is_empty() {
                    let per_group = self.trees_per_group() as f64;
                    for m in margins.iter_mut() {
                        *m /= per_group;
                    }
                }
                for (m, b) in margins.iter_mut().zip(&self.base) {
                    *m += b;
                }
            }
        }
    }

    fn transform(&self, margins: &mut [f64]) {
        match (self.link, self.library) {
            (Link::Identity, _) => {}
            (Link::Exp, XG) => margins
                .iter_mut()
                .for_each(|m| *m = f64::from((*m as f32).exp())),
            (Link::Exp, LG) => margins.iter_mut().for_each(|m| *m = m.exp()),
            (Link::Sigmoid(_), XG) => margins.iter_mut().for_each(|m| {
                *m = f64::from(1.0f32 / (1.0f32 + (-(*m as f32)).exp()));
            }),
            (Link::Sigmoid(scale), LG) => margins
                .iter_mut()
                .for_each(|m| *m = 1.0 / (1.0 + (-scale * *m).exp())),
            (Link::Softmax, XG) => {
                let top = margins
                    .iter()
                    .fold(f32::NEG_INFINITY, |a, m| a.max(*m as f32));
                let exps: Vec<f32> = margins.iter().map(|m| (*m as f32 - top).exp()).collect();
                let sum: f32 = exps.iter().sum();
                for (m, e) in margins.iter_mut().zip(exps) {
                    *m = f64::from(e / sum);
                }
            }
            (Link::Softmax, LG) => {
                let top = margins.iter().fold(f64::NEG_INFINITY, |a, m| a.max(*m));
                let mut sum = 0.0;
                for m in margins.iter_mut() {
                    *m = (*m - top).exp();
                    sum += *m;
                }
                margins.iter_mut().for_each(|m| *m /= sum);
            }
        }
    }

    /// The value of the leaf `row` reaches from `root`, walking the nodes as loaded: the
    /// plain reading of the model, which the tests hold the flat layout to.
    #[cfg(test)]
    fn leaf(&self, root: u32, row: &[f64]) -> f64 {
        self.nodes[self.leaf_index(root, row)].value
    }

    /// The leaf a row reaches in the tree at `root`, by the plain walk.
    #[cfg(test)]
    fn leaf_index(&self, root: u32, row: &[f64]) -> usize {
        let mut i = root as usize;
        loop {
            let n = &self.nodes[i];
            if n.left == LEAF {
                return i;
            }
            let x = row[n.feature as usize];
            let left = match self.library {
                XG => xgboost_goes_left(n, x, &self.cats),
                LG => lightgbm_goes_left(n, x, &self.cats),
            };
            i = if left { n.left } else { n.right } as usize;
        }
    }
}

use Library::{LightGBM as LG, XGBoost as XG};

/// XGBoost: a missing value takes the default direction; a numeric split sends `x <
/// threshold` left (in single precision); a categorical split sends the categories in its set
/// right (a value that is not a category: the default direction... as XGBoost, left).
#[cfg(test)]
fn xgboost_goes_left(n: &Node, x: f64, cats: &[Vec<u32>]) -> bool {
    if x.is_nan() {
        return n.flags & DEFAULT_LEFT != 0;
    }
    if n.flags & CATEGORICAL != 0 {
        let x = x as f32;
        if x < 0.0 || x.fract() != 0.0 || x >= 16_777_216.0 {
            return true;
        }
        return !in_bitset(&cats[n.value as usize], x as u32);
    }
    (x as f32) < (n.value as f32)
}

/// LightGBM: as its `NumericalDecision` and `CategoricalDecision`.
#[cfg(test)]
fn lightgbm_goes_left(n: &Node, x: f64, cats: &[Vec<u32>]) -> bool {
    if n.flags & CATEGORICAL != 0 {
        if x.is_nan() || x < 0.0 {
            return false;
        }
        return in_bitset(&cats[n.value as usize], x as u32);
    }
    let mut x = x;
    if n.flags & MISSING_NAN == 0 && x.is_nan() {
        x = 0.0;
    }
    if (n.flags & MISSING_ZERO != 0 && x.abs() <= 1e-35)
        || (n.flags & MISSING_NAN != 0 && x.is_nan())
    {
        return n.flags & DEFAULT_LEFT != 0;
    }
    x <= n.value
}

#[inline(always)]
fn xgboost_goes_left_flat<const CATS: bool>(n: &FlatNode, x: f64, cats: &[Vec<u32>]) -> bool {
    if CATS && n.flags() & CATEGORICAL != 0 {
        if x.is_nan() {
            return n.flags() & DEFAULT_LEFT != 0;
        }
        let x = x as f32;
        if x < 0.0 || x.fract() != 0.0 || x >= 16_777_216.0 {
            return true;
        }
        return !in_bitset(&cats[n.threshold as usize], x as u32);
    }
    // Selected, not branched on: missing values are not predictable.
    let missing_left = n.flags() & DEFAULT_LEFT != 0;
    if x.is_nan() {
        missing_left
    } else {
        x < n.threshold
    }
}

#[inline(always)]
fn lightgbm_goes_left_flat<const CATS: bool>(n: &FlatNode, x: f64, cats: &[Vec<u32>]) -> bool {
    if CATS && n.flags() & CATEGORICAL != 0 {
        if x.is_nan() || x < 0.0 {
            return false;
        }
        return in_bitset(&cats[n.threshold as usize], x as u32);
    }
    let nan = x.is_nan();
    let x = if nan && n.flags() & MISSING_NAN == 0 {
        0.0
    } else {
        x
    };
    let missing = (n.flags() & MISSING_ZERO != 0 && x.abs() <= 1e-35)
        || (n.flags() & MISSING_NAN != 0 && nan);
    if missing {
        n.flags() & DEFAULT_LEFT != 0
    } else {
        x <= n.threshold
    }
}

/// The logistic function in single precision, computed from `|x|` (no overflow for large
/// negative `x`), as onnxruntime computes it.
fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

fn in_bitset(bits: &[u32], i: u32) -> bool {
    bits.get((i / 32) as usize)
        .is_some_and(|w| (w >> (i % 32)) & 1 == 1)
}

fn specs(features: usize, groups: usize, output: DataType) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let inputs = vec![TensorSpec {
        name: "input-0".into(),
        datatype: DataType::F32,
        shape: vec![None, Some(features as i64)],
    }];
    let shape = if groups == 1 {
        vec![None]
    } else {
        vec![None, Some(groups as i64)]
    };
    let outputs = vec![TensorSpec {
        name: "predict".into(),
        datatype: output,
        shape,
    }];
    (inputs, outputs)
}

// === XGBoost ===

fn xgboost(json: &Value) -> Result<Forest, String> {
    let learner = json
        .get("learner")
        .ok_or("no `learner`: not an XGBoost model")?;
    let params = &learner["learner_model_param"];
    let number = |v: &Value, what: &str| -> Result<f64, String> {
        v.as_str()
            .and_then(|s| {
                s.trim_matches(['[', ']'])
                    .split(',')
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            })
            .or_else(|| v.as_f64())
            .ok_or(format!("`{what}` is not a number"))
    };
    let booster = &learner["gradient_booster"];
    let booster_name = booster["name"].as_str().unwrap_or("");
    if booster_name != "gbtree" {
        return Err(format!(
            "booster `{booster_name}` is not supported (gbtree only: dart and gblinear are not)"
        ));
    }
    let model = &booster["model"];
    let num_class = number(&params["num_class"], "num_class")? as usize;
    let features = number(&params["num_feature"], "num_feature")? as usize;
    if features >= MAX_FEATURES {
        return Err(format!(
            "{features} features are more than the {MAX_FEATURES} supported"
        ));
    }
    let groups = num_class.max(1);
    let objective = learner["objective"]["name"].as_str().unwrap_or("");
    let link = match objective {
        "binary:logistic" | "reg:logistic" => Link::Sigmoid(1.0),
        "multi:softprob" => Link::Softmax,
        "count:poisson" | "reg:gamma" | "reg:tweedie" | "survival:cox" => Link::Exp,
        "reg:squarederror"
        | "reg:squaredlogerror"
        | "reg:pseudohubererror"
        | "reg:absoluteerror"
        | "reg:quantileerror"
        | "binary:logitraw"
        | "binary:hinge"
        | "rank:pairwise"
        | "rank:ndcg"
        | "rank:map"
        | "reg:linear" => Link::Identity,
        "multi:softmax" => {
            return Err("objective multi:softmax predicts a class index: save the model with multi:softprob".into());
        }
        other => return Err(format!("objective `{other}` is not supported")),
    };
    // The base score is kept in the prediction's space; the margin starts from its inverse.
    let scores: Vec<f64> = match &params["base_score"] {
        Value::String(s) => s
            .trim_matches(['[', ']'])
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("base_score {s:?} is not a number"))
            })
            .collect::<Result<_, _>>()?,
        v => vec![v.as_f64().ok_or("base_score is not a number")?],
    };
    let to_margin = |p: f64| match objective {
        "binary:logistic" | "reg:logistic" | "binary:logitraw" => {
            let p = p.clamp(1e-16, 1.0 - 1e-16);
            (p / (1.0 - p)).ln()
        }
        "count:poisson" | "reg:gamma" | "reg:tweedie" | "survival:cox" => p.max(1e-16).ln(),
        _ => p,
    };
    let base: Vec<f64> = (0..groups)
        .map(|g| to_margin(*scores.get(g).or(scores.first()).unwrap_or(&0.5)))
        .collect();
    let info = model["tree_info"].as_array().ok_or("no `tree_info`")?;
    let trees = model["trees"].as_array().ok_or("no `trees`")?;
    let mut forest = Forest {
        library: XG,
        nodes: Vec::new(),
        trees: Vec::with_capacity(trees.len()),
        groups,
        features,
        base,
        link,
        average: false,
        cats: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        flat: Flat::default(),
        output: Output::Predict,
        leaf_vectors: Vec::new(),
    };
    for (t, tree) in trees.iter().enumerate() {
        let group = info.get(t).and_then(Value::as_u64).unwrap_or(0) as u32;
        if group as usize >= groups {
            return Err(format!("tree {t} adds to output {group} of {groups}"));
        }
        if tree["tree_param"]["size_leaf_vector"]
            .as_str()
            .is_some_and(|s| s != "1" && s != "0")
        {
            return Err(format!(
                "tree {t} has vector leaves (multi-target trees are not supported)"
            ));
        }
        let ints = |key: &str| -> Result<Vec<i64>, String> {
            tree[key]
                .as_array()
                .ok_or(format!("tree {t}: no `{key}`"))?
                .iter()
                .map(|v| {
                    v.as_i64()
                        .or_else(|| v.as_bool().map(i64::from))
                        .ok_or(format!("tree {t}: `{key}` holds a non-integer"))
                })
                .collect()
        };
        let left = ints("left_children")?;
        let right = ints("right_children")?;
        let feature = ints("split_indices")?;
        let default_left = ints("default_left")?;
        let split_type = ints("split_type").unwrap_or_else(|_| vec![0; left.len()]);
        let conditions: Vec<f64> = tree["split_conditions"]
            .as_array()
            .ok_or(format!("tree {t}: no `split_conditions`"))?
            .iter()
            .map(|v| v.as_f64().unwrap_or(f64::NAN))
            .collect();
        let n = left.len();
        if [
            right.len(),
            feature.len(),
            default_left.len(),
            conditions.len(),
        ]
        .iter()
        .any(|l| *l != n)
        {
            return Err(format!("tree {t}: its node arrays differ in length"));
        }
        // Categorical nodes: their category lists.
        let cat_nodes = ints("categories_nodes").unwrap_or_default();
        let cat_segments = ints("categories_segments").unwrap_or_default();
        let cat_sizes = ints("categories_sizes").unwrap_or_default();
        let categories = ints("categories").unwrap_or_default();
        let offset = forest.nodes.len() as u32;
        for i in 0..n {
            let leaf = left[i] == -1;
            let child = |c: i64| -> Result<u32, String> {
                usize::try_from(c)
                    .ok()
                    .filter(|c| *c < n)
                    .map(|c| offset + c as u32)
                    .ok_or(format!("tree {t}: node {i} has child {c}"))
            };
            let mut node = Node {
                value: conditions[i],
                feature: 0,
                left: LEAF,
                right: LEAF,
                flags: 0,
            };
            if !leaf {
                let f = usize::try_from(feature[i]).ok().filter(|f| *f < features);
                node.feature = f.ok_or(format!(
                    "tree {t}: node {i} splits on feature {}",
                    feature[i]
                ))? as u32;
                node.left = child(left[i])?;
                node.right = child(right[i])?;
                if default_left[i] != 0 {
                    node.flags |= DEFAULT_LEFT;
                }
                if split_type[i] == 1 {
                    let k = cat_nodes
                        .iter()
                        .position(|c| *c == i as i64)
                        .ok_or(format!("tree {t}: categorical node {i} has no categories"))?;
                    let (start, size) = (cat_segments[k] as usize, cat_sizes[k] as usize);
                    let list = categories
                        .get(start..start + size)
                        .ok_or(format!("tree {t}: node {i}'s categories are out of range"))?;
                    node.flags |= CATEGORICAL;
                    node.value = forest.cats.len() as f64;
                    forest.cats.push(bitset(list));
                }
            }
            forest.nodes.push(node);
        }
        if n == 0 {
            return Err(format!("tree {t} has no nodes"));
        }
        forest.trees.push((offset, group));
    }
    check_acyclic(&forest)?;
    (forest.inputs, forest.outputs) = specs(features, groups, DataType::F32);
    forest.compile();
    Ok(forest)
}

fn bitset(list: &[i64]) -> Vec<u32> {
    let top = list.iter().copied().max().unwrap_or(0).max(0) as usize;
    let mut bits = vec![0u32; top / 32 + 1];
    for c in list.iter().filter(|c| **c >= 0) {
        bits[*c as usize / 32] |= 1 << (*c as usize % 32);
    }
    bits
}

/// Every walk ends: a child always has a higher index than its parent within its tree.
fn check_acyclic(forest: &Forest) -> Result<(), String> {
    for (i, n) in forest.nodes.iter().enumerate() {
        if n.left != LEAF && (n.left as usize <= i || n.right as usize <= i) {
            return Err(format!(
                "node {i} points back to an earlier node: the model is malformed"
            ));
        }
    }
    Ok(())
}

// === UBJSON (XGBoost's binary JSON) ===

/// Universal Binary JSON as XGBoost writes it (big-endian numbers, optimized containers with
/// `$` type and `#` count), as a JSON value. Bounded: nesting at most 64 deep, every length
/// checked against the bytes left.
fn ubjson(bytes: &[u8]) -> Result<Value, String> {
    let mut at = 0usize;
    let value = ubj_value(bytes, &mut at, None, 0)?;
    Ok(value)
}

fn ubj_take<'b>(bytes: &'b [u8], at: &mut usize, n: usize) -> Result<&'b [u8], String> {
    let end = at
        .checked_add(n)
        .filter(|e| *e <= bytes.len())
        .ok_or("the data ends early")?;
    let out = &bytes[*at..end];
    *at = end;
    Ok(out)
}

fn ubj_int(bytes: &[u8], at: &mut usize, marker: u8) -> Result<i64, String> {
    Ok(match marker {
        b'i' => i64::from(ubj_take(bytes, at, 1)?[0] as i8),
        b'U' => i64::from(ubj_take(bytes, at, 1)?[0]),
        b'I' => i64::from(i16::from_be_bytes(
            ubj_take(bytes, at, 2)?.try_into().unwrap_or_default(),
        )),
        b'l' => i64::from(i32::from_be_bytes(
            ubj_take(bytes, at, 4)?.try_into().unwrap_or_default(),
        )),
        b'L' => i64::from_be_bytes(ubj_take(bytes, at, 8)?.try_into().unwrap_or_default()),
        other => {
            return Err(format!(
                "expected an integer, found marker {:?}",
                other as char
            ));
        }
    })
}

fn ubj_len(bytes: &[u8], at: &mut usize) -> Result<usize, String> {
    let marker = ubj_take(bytes, at, 1)?[0];
    let n = ubj_int(bytes, at, marker)?;
    let n = usize::try_from(n).map_err(|_| "a negative length")?;
    if n > bytes.len() {
        return Err("a length beyond the data".into());
    }
    Ok(n)
}

fn ubj_value(
    bytes: &[u8],
    at: &mut usize,
    typed: Option<u8>,
    depth: usize,
) -> Result<Value, String> {
    if depth > 64 {
        return Err("nested too deep".into());
    }
    let marker = match typed {
        Some(m) => m,
        None => ubj_take(bytes, at, 1)?[0],
    };
    Ok(match marker {
        b'Z' => Value::Null,
        b'T' => Value::Bool(true),
        b'F' => Value::Bool(false),
        b'i' | b'U' | b'I' | b'l' | b'L' => Value::from(ubj_int(bytes, at, marker)?),
        b'd' => {
            let v = f32::from_be_bytes(ubj_take(bytes, at, 4)?.try_into().unwrap_or_default());
            serde_json::Number::from_f64(f64::from(v)).map_or(Value::Null, Value::Number)
        }
        b'D' => {
            let v = f64::from_be_bytes(ubj_take(bytes, at, 8)?.try_into().unwrap_or_default());
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        b'C' => Value::String((ubj_take(bytes, at, 1)?[0] as char).to_string()),
        b'S' | b'H' => {
            let n = ubj_len(bytes, at)?;
            let text = ubj_take(bytes, at, n)?;
            Value::String(String::from_utf8_lossy(text).into_owned())
        }
        b'[' => {
            let (item_type, count) = ubj_container(bytes, at)?;
            let mut items = Vec::new();
            match count {
                Some(n) => {
                    items.reserve(n.min(bytes.len()));
                    for _ in 0..n {
                        items.push(ubj_value(bytes, at, item_type, depth + 1)?);
                    }
                }
                None => loop {
                    if bytes.get(*at) == Some(&b']') {
                        *at += 1;
                        break;
                    }
                    items.push(ubj_value(bytes, at, None, depth + 1)?);
                },
            }
            Value::Array(items)
        }
        b'{' => {
            let (item_type, count) = ubj_container(bytes, at)?;
            let mut map = serde_json::Map::new();
            let mut entry = |at: &mut usize| -> Result<(), String> {
                let n = ubj_len(bytes, at)?;
                let key = String::from_utf8_lossy(ubj_take(bytes, at, n)?).into_owned();
                let v = ubj_value(bytes, at, item_type, depth + 1)?;
                map.insert(key, v);
                Ok(())
            };
            match count {
                Some(n) => {
                    for _ in 0..n {
                        entry(at)?;
                    }
                }
                None => loop {
                    if bytes.get(*at) == Some(&b'}') {
                        *at += 1;
                        break;
                    }
                    entry(at)?;
                },
            }
            Value::Object(map)
        }
        other => {
            return Err(format!(
                "unknown marker {:?} at byte {}",
                other as char,
                *at - 1
            ));
        }
    })
}

/// An optimized container's `$type` and `#count`, if given.
fn ubj_container(bytes: &[u8], at: &mut usize) -> Result<(Option<u8>, Option<usize>), String> {
    let mut item_type = None;
    if bytes.get(*at) == Some(&b'$') {
        *at += 1;
        item_type = Some(ubj_take(bytes, at, 1)?[0]);
    }
    let mut count = None;
    if bytes.get(*at) == Some(&b'#') {
        *at += 1;
        count = Some(ubj_len(bytes, at)?);
    } else if item_type.is_some() {
        return Err("a typed container without a count".into());
    }
    Ok((item_type, count))
}

// === LightGBM ===

fn lightgbm(text: &str) -> Result<Forest, String> {
    let mut sections = text.split("\nTree=");
    let header = sections.next().unwrap_or("");
    if !header.starts_with("tree") {
        return Err("not a LightGBM text model (it starts with `tree`)".into());
    }
    let field = |block: &str, key: &str| -> Option<String> {
        block
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
    };
    let count = |key: &str| -> Result<usize, String> {
        field(header, key)
            .and_then(|v| v.trim().parse().ok())
            .ok_or(format!("the header has no `{key}`"))
    };
    let groups = count("num_tree_per_iteration")?.max(1);
    let features = count("max_feature_idx")? + 1;
    if features >= MAX_FEATURES {
        return Err(format!(
            "{features} features are more than the {MAX_FEATURES} supported"
        ));
    }
    let objective = field(header, "objective").unwrap_or_default();
    let mut words = objective.split_whitespace();
    let name = words.next().unwrap_or("");
    let param = |key: &str| -> Option<f64> {
        objective
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix(':')?.parse().ok())
    };
    let link = match name {
        "binary" | "cross_entropy" | "xentropy" => Link::Sigmoid(param("sigmoid").unwrap_or(1.0)),
        "multiclassova" | "multiclass_ova" | "ova" | "ovr" => {
            Link::Sigmoid(param("sigmoid").unwrap_or(1.0))
        }
        "multiclass" | "softmax" => Link::Softmax,
        "poisson" | "gamma" | "tweedie" => Link::Exp,
        "regression" | "regression_l2" | "l2" | "mean_squared_error" | "mse" | "regression_l1"
        | "l1" | "huber" | "fair" | "quantile" | "mape" | "lambdarank" | "rank_xendcg" | "" => {
            Link::Identity
        }
        other => return Err(format!("objective `{other}` is not supported")),
    };
    let average = header.lines().any(|l| l.trim() == "average_output");
    let mut forest = Forest {
        library: LG,
        nodes: Vec::new(),
        trees: Vec::new(),
        groups,
        features,
        base: vec![0.0; groups],
        link,
        average,
        cats: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        flat: Flat::default(),
        output: Output::Predict,
        leaf_vectors: Vec::new(),
    };
    for (t, block) in sections.enumerate() {
        // The last tree is followed by `end of trees` and the parameters.
        let block = block.split("\nend of trees").next().unwrap_or(block);
        let list = |key: &str| -> Vec<String> {
            field(block, key)
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let parse = |key: &str| -> Result<Vec<f64>, String> {
            list(key)
                .iter()
                .map(|v| {
                    v.parse::<f64>()
                        .map_err(|_| format!("tree {t}: `{key}` holds {v:?}"))
                })
                .collect()
        };
        let ints = |key: &str| -> Result<Vec<i64>, String> {
            list(key)
                .iter()
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("tree {t}: `{key}` holds {v:?}"))
                })
                .collect()
        };
        if field(block, "is_linear").is_some_and(|v| v.trim() == "1") {
            return Err(format!(
                "tree {t} is a linear tree (linear_tree models are not supported)"
            ));
        }
        let leaves: usize = field(block, "num_leaves")
            .and_then(|v| v.trim().parse().ok())
            .ok_or(format!("tree {t}: no `num_leaves`"))?;
        let leaf_value = parse("leaf_value")?;
        if leaf_value.len() != leaves {
            return Err(format!(
                "tree {t}: {} leaf values for {leaves} leaves",
                leaf_value.len()
            ));
        }
        let offset = forest.nodes.len() as u32;
        let group = (t % groups) as u32;
        if leaves == 1 {
            forest.nodes.push(Node {
                value: leaf_value[0],
                feature: 0,
                left: LEAF,
                right: LEAF,
                flags: 0,
            });
            forest.trees.push((offset, group));
            continue;
        }
        let inner = leaves - 1;
        let feature = ints("split_feature")?;
        let threshold = parse("threshold")?;
        let decision = ints("decision_type")?;
        let left = ints("left_child")?;
        let right = ints("right_child")?;
        if [
            feature.len(),
            threshold.len(),
            decision.len(),
            left.len(),
            right.len(),
        ]
        .iter()
        .any(|l| *l != inner)
        {
            return Err(format!(
                "tree {t}: its node arrays differ from {inner} splits"
            ));
        }
        let boundaries = ints("cat_boundaries").unwrap_or_default();
        let cat_threshold = ints("cat_threshold").unwrap_or_default();
        // Splits first (0..inner), then leaves (inner..inner + leaves); a child below zero is
        // leaf `!child`.
        let child = |c: i64| -> Result<u32, String> {
            let i = if c < 0 { inner as i64 + !c } else { c };
            usize::try_from(i)
                .ok()
                .filter(|i| *i < inner + leaves)
                .map(|i| offset + i as u32)
                .ok_or(format!("tree {t}: child {c} is out of range"))
        };
        for i in 0..inner {
            let d = decision[i];
            let mut flags = 0;
            if d & 2 != 0 {
                flags |= DEFAULT_LEFT;
            }
            match (d >> 2) & 3 {
                1 => flags |= MISSING_ZERO,
                2 => flags |= MISSING_NAN,
                _ => {}
            }
            let mut value = threshold[i];
            if d & 1 != 0 {
                flags |= CATEGORICAL;
                let k = threshold[i] as usize;
                let (a, b) = (
                    boundaries.get(k).copied().unwrap_or(0) as usize,
                    boundaries.get(k + 1).copied().unwrap_or(0) as usize,
                );
                let words = cat_threshold
                    .get(a..b)
                    .ok_or(format!("tree {t}: split {i}'s categories are out of range"))?;
                value = forest.cats.len() as f64;
                forest.cats.push(words.iter().map(|w| *w as u32).collect());
            }
            let f = usize::try_from(feature[i]).ok().filter(|f| *f < features);
            forest.nodes.push(Node {
                value,
                feature: f.ok_or(format!("tree {t}: split {i} is on feature {}", feature[i]))?
                    as u32,
                left: child(left[i])?,
                right: child(right[i])?,
                flags,
            });
        }
        for v in leaf_value {
            forest.nodes.push(Node {
                value: v,
                feature: 0,
                left: LEAF,
                right: LEAF,
                flags: 0,
            });
        }
        forest.trees.push((offset, group));
    }
    if forest.trees.is_empty() {
        return Err("the model has no trees".into());
    }
    check_lightgbm_acyclic(&forest)?;
    (forest.inputs, forest.outputs) = specs(features, groups, DataType::F64);
    forest.compile();
    Ok(forest)
}

/// LightGBM numbers its splits so that a child split comes after its parent; leaves come
/// after every split of the tree.
fn check_lightgbm_acyclic(forest: &Forest) -> Result<(), String> {
    check_acyclic(forest)
}

#[cfg(test)]
mod tests;
