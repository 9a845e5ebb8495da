//! ONNX-ML tree ensembles (`ai.onnx.ml` `TreeEnsembleClassifier` and `TreeEnsembleRegressor`, as
//! skl2onnx and onnxmltools write them) read into a [`Forest`], so that they are evaluated
//! natively, as onnxruntime evaluates them: single-precision thresholds and inputs, `true`
//! branches taken as the node's mode says, NaN to the `true` branch where
//! `nodes_missing_value_tracks_true` says so (else to the `false` one, as a comparison with NaN
//! fails), every weight of a leaf added to its class or target, the base values, the
//! post-transform.
//!
//! What is read: a graph of exactly one such node from its input to its outputs (a classifier's
//! `label` and `probabilities`, as skl2onnx writes them with `zipmap` off; a regressor's one
//! output), float thresholds, integer class labels; a binary classifier as the converters write
//! it (weights for one class: positive ones with no transform, scikit-learn's forests; mixed
//! ones with `LOGISTIC`, boosters), with onnxruntime's rules for its two probabilities. Anything
//! else (a ZipMap, string labels, other binary forms, `BRANCH_EQ`, `SOFTMAX_ZERO`, `PROBIT`,
//! `MIN` and `MAX`, a model that mixes `<` and `<=`) is `None`: tract serves such a model as
//! before.

use std::collections::HashMap;
use std::path::Path;

use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use super::{
    DEFAULT_LEFT, Flat, Forest, LEAF, LG, Library, Link, MISSING_NAN, Node, Output, XG, load_error,
};
use crate::{DataType, Error, TensorSpec};

/// The attributes of a node, by name.
struct Attributes<'a>(HashMap<&'a str, &'a pb::AttributeProto>);

impl<'a> Attributes<'a> {
    fn of(node: &'a pb::NodeProto) -> Self {
        Self(
            node.attribute
                .iter()
                .map(|a| (a.name.as_str(), a))
                .collect(),
        )
    }

    fn ints(&self, name: &str) -> &'a [i64] {
        self.0.get(name).map_or(&[], |a| a.ints.as_slice())
    }

    fn floats(&self, name: &str) -> &'a [f32] {
        self.0.get(name).map_or(&[], |a| a.floats.as_slice())
    }

    fn strings(&self, name: &str) -> Vec<&'a str> {
        self.0.get(name).map_or(Vec::new(), |a| {
            a.strings
                .iter()
                .map(|s| std::str::from_utf8(s).unwrap_or(""))
                .collect()
        })
    }

    fn string(&self, name: &str) -> Option<&'a str> {
        self.0
            .get(name)
            .and_then(|a| std::str::from_utf8(&a.s).ok())
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// The value `name` is made from when only nodes that change nothing lie between: `Identity`,
/// `Cast` (to INT64 or FLOAT, what the ensemble gives already) and `Mul` by a constant 1 (the
/// converters' way of naming outputs). `None` when another node is in the way.
fn passed_on(graph: &pb::GraphProto, name: &str) -> Option<String> {
    let mut name = name.to_owned();
    for _ in 0..graph.node.len() + 1 {
        let Some(n) = graph.node.iter().find(|n| n.output.contains(&name)) else {
            return Some(name);
        };
        if n.domain == "ai.onnx.ml" && n.op_type.starts_with("TreeEnsemble") {
            return Some(name);
        }
        let unchanged = match n.op_type.as_str() {
            "Identity" => n.input.first().cloned(),
            "Cast" => {
                let to = n.attribute.iter().find(|a| a.name == "to").map(|a| a.i);
                // INT64 (7) for a label, FLOAT (1) for scores: what they are.
                matches!(to, Some(7) | Some(1)).then(|| n.input[0].clone())
            }
            "Mul" => {
                let one = |i: &String| {
                    graph.initializer.iter().any(|t| {
                        &t.name == i
                            && t.dims.iter().product::<i64>() == 1
                            && (t.float_data.first() == Some(&1.0)
                                || t.raw_data.as_slice() == 1f32.to_le_bytes())
                    })
                };
                match n.input.as_slice() {
                    [a, b] if one(b) => Some(a.clone()),
                    [a, b] if one(a) => Some(b.clone()),
                    _ => None,
                }
            }
            _ => None,
        }?;
        name = unchanged;
    }
    None
}

/// The shape of a graph input or output, `None` for a dimension left open.
fn shape_of(v: &pb::ValueInfoProto) -> Vec<Option<i64>> {
    let Some(pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Vec::new();
    };
    t.shape.as_ref().map_or(Vec::new(), |s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if n > 0 => Some(n),
                _ => None,
            })
            .collect()
    })
}

impl Forest {
    /// The tree ensemble of an ONNX model made of one `TreeEnsembleClassifier` or
    /// `TreeEnsembleRegressor` node, or `None` when the model is something else (see the
    /// module's documentation); an error when it is such a model and is malformed.
    pub fn load_onnx_ml(path: &Path) -> Result<Option<Self>, Error> {
        let proto = tract_onnx::onnx()
            .proto_model_for_path(path)
            .map_err(|e| load_error(path, format!("{e}")))?;
        let Some(graph) = proto.graph.as_ref() else {
            return Ok(None);
        };
        // One tree ensemble node; the others may only pass its outputs on unchanged.
        let ensembles: Vec<&pb::NodeProto> = graph
            .node
            .iter()
            .filter(|n| n.domain == "ai.onnx.ml" && n.op_type.starts_with("TreeEnsemble"))
            .collect();
        let [node] = ensembles.as_slice() else {
            return Ok(None);
        };
        let classifier = match node.op_type.as_str() {
            "TreeEnsembleClassifier" => true,
            "TreeEnsembleRegressor" => false,
            _ => return Ok(None),
        };
        // Initializers are not inputs a client gives.
        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !graph.initializer.iter().any(|t| t.name == i.name))
            .collect();
        let [input] = inputs.as_slice() else {
            return Ok(None);
        };
        if node.input.first() != Some(&input.name) {
            return Ok(None);
        }
        // Each graph output, followed back to the ensemble's output it is.
        for (k, out) in graph.output.iter().enumerate() {
            if passed_on(graph, &out.name).as_ref() != node.output.get(k) {
                return Ok(None);
            }
        }
        if node.output.len() != graph.output.len() {
            return Ok(None);
        }
        let attrs = Attributes::of(node);
        read(path, &attrs, classifier, input, &graph.output)
    }
}

fn read(
    path: &Path,
    attrs: &Attributes<'_>,
    classifier: bool,
    input: &pb::ValueInfoProto,
    outputs: &[pb::ValueInfoProto],
) -> Result<Option<Forest>, Error> {
    let bad = |m: String| load_error(path, m);
    // Double-precision thresholds, string labels: served by tract.
    if attrs.has("nodes_values_as_tensor")
        || attrs.has("classlabels_strings")
        || attrs.has("base_values_as_tensor")
    {
        return Ok(None);
    }
    let post = attrs.string("post_transform").unwrap_or("NONE");
    let mut link = match post {
        "NONE" => Link::Identity,
        "LOGISTIC" => Link::Sigmoid(1.0),
        "SOFTMAX" => Link::Softmax,
        _ => return Ok(None),
    };
    let mut binary = None;
    let (prefix, groups, labels) = if classifier {
        let labels = attrs.ints("classlabels_int64s").to_vec();
        match labels.len() {
            0 | 1 => return Ok(None),
            2 => {
                // Two classes, weights for one: onnxruntime's binary case, as every converter
                // writes it (scikit-learn's forests with positive weights and no transform;
                // boosters with mixed weights and LOGISTIC). One score; see `Output`.
                let ids = attrs.ints("class_ids");
                if ids.iter().any(|&c| c != 0) || attrs.floats("base_values").len() > 1 {
                    return Ok(None);
                }
                let positive = attrs.floats("class_weights").iter().all(|w| *w >= 0.0);
                match (positive, post) {
                    (true, "NONE") | (false, "LOGISTIC") => {}
                    _ => return Ok(None),
                }
                binary = Some((positive, [labels[0], labels[1]]));
                link = Link::Identity;
                ("class", 1, labels)
            }
            _ => ("class", labels.len(), labels),
        }
    } else {
        let n = attrs.0.get("n_targets").map_or(1, |a| a.i);
        let n = usize::try_from(n).map_err(|_| bad(format!("n_targets {n}")))?;
        ("target", n.max(1), Vec::new())
    };
    let average = match attrs.string("aggregate_function").unwrap_or("SUM") {
        "SUM" => false,
        "AVERAGE" => true,
        _ => return Ok(None),
    };
    let tree_ids = attrs.ints("nodes_treeids");
    let node_ids = attrs.ints("nodes_nodeids");
    let features = attrs.ints("nodes_featureids");
    let values = attrs.floats("nodes_values");
    let modes = attrs.strings("nodes_modes");
    let trues = attrs.ints("nodes_truenodeids");
    let falses = attrs.ints("nodes_falsenodeids");
    let tracks = attrs.ints("nodes_missing_value_tracks_true");
    let n = tree_ids.len();
    if [
        node_ids.len(),
        features.len(),
        modes.len(),
        trues.len(),
        falses.len(),
    ]
    .iter()
    .any(|&l| l != n)
        || (values.len() != n && !values.is_empty())
        || (!tracks.is_empty() && tracks.len() != n)
    {
        return Err(bad(
            "the nodes_* attributes are not all of one length".into()
        ));
    }
    // Which comparison the splits make, and whether `true` is "left".
    let mut lt = false;
    let mut leq = false;
    let mut true_is_left = Vec::with_capacity(n);
    for m in &modes {
        let left = match *m {
            "LEAF" => true,
            "BRANCH_LT" => {
                lt = true;
                true
            }
            "BRANCH_GTE" => {
                lt = true;
                false
            }
            "BRANCH_LEQ" => {
                leq = true;
                true
            }
            "BRANCH_GT" => {
                leq = true;
                false
            }
            _ => return Ok(None),
        };
        true_is_left.push(left);
    }
    if lt && leq {
        return Ok(None);
    }
    let library: Library = if lt { XG } else { LG };
    if library == XG && average {
        return Ok(None);
    }
    let w_tree = attrs.ints(&format!("{prefix}_treeids"));
    let w_node = attrs.ints(&format!("{prefix}_nodeids"));
    let w_id = attrs.ints(&format!("{prefix}_ids"));
    let w_value = attrs.floats(&format!("{prefix}_weights"));
    if [w_node.len(), w_id.len(), w_value.len()]
        .iter()
        .any(|&l| l != w_tree.len())
    {
        return Err(bad(format!(
            "the {prefix}_* attributes are not all of one length"
        )));
    }
    // (tree, node) -> index; the trees in the order of their ids.
    let mut index: HashMap<(i64, i64), usize> = HashMap::with_capacity(n);
    let mut tree_order: Vec<i64> = Vec::new();
    for i in 0..n {
        if index.insert((tree_ids[i], node_ids[i]), i).is_some() {
            return Err(bad(format!(
                "node {} of tree {} is given twice",
                node_ids[i], tree_ids[i]
            )));
        }
        if !tree_order.contains(&tree_ids[i]) {
            tree_order.push(tree_ids[i]);
        }
    }
    tree_order.sort_unstable();
    // Each leaf's weight for each group.
    let mut weights: HashMap<(usize, usize), f64> = HashMap::new();
    for k in 0..w_tree.len() {
        let at = *index.get(&(w_tree[k], w_node[k])).ok_or_else(|| {
            bad(format!(
                "a weight names node {} of tree {}, which does not exist",
                w_node[k], w_tree[k]
            ))
        })?;
        let g = usize::try_from(w_id[k])
            .ok()
            .filter(|g| *g < groups)
            .ok_or_else(|| bad(format!("a weight names {prefix} {}, of {groups}", w_id[k])))?;
        *weights.entry((at, g)).or_insert(0.0) += f64::from(w_value[k]);
    }
    let width = match shape_of(input).as_slice() {
        [_, Some(f)] => *f as usize,
        _ => features.iter().copied().max().map_or(0, |m| m as usize + 1),
    };
    if features
        .iter()
        .any(|&f| f < 0 || f as usize >= width.max(1))
    {
        return Err(bad(format!(
            "a split reads a feature the input ([N, {width}]) does not have"
        )));
    }
    // Each tree once; with several groups, its leaves add a value to each (vector leaves).
    let vector = groups > 1;
    let mut nodes: Vec<Node> = Vec::new();
    let mut leaf_vectors: Vec<f64> = Vec::new();
    let mut trees = Vec::new();
    {
        for &t in &tree_order {
            let root = *index
                .get(&(t, 0))
                .ok_or_else(|| bad(format!("tree {t} has no node 0")))?;
            let start = nodes.len() as u32;
            // Depth first, each node placed once; a node reached twice is a cycle or a DAG.
            let mut placed: HashMap<usize, u32> = HashMap::new();
            let mut stack = vec![root];
            let mut order = Vec::new();
            while let Some(i) = stack.pop() {
                if placed.contains_key(&i) {
                    return Err(bad(format!("tree {t} reaches node {} twice", node_ids[i])));
                }
                placed.insert(i, start + order.len() as u32);
                order.push(i);
                if modes[i] != "LEAF" {
                    for child in [falses[i], trues[i]] {
                        let c = *index.get(&(t, child)).ok_or_else(|| {
                            bad(format!(
                                "node {} of tree {t} points at a node that does not exist",
                                node_ids[i]
                            ))
                        })?;
                        stack.push(c);
                    }
                }
            }
            for &i in &order {
                if vector {
                    leaf_vectors
                        .extend((0..groups).map(|g| weights.get(&(i, g)).copied().unwrap_or(0.0)));
                }
                if modes[i] == "LEAF" {
                    nodes.push(Node {
                        value: weights.get(&(i, 0)).copied().unwrap_or(0.0),
                        feature: 0,
                        left: LEAF,
                        right: LEAF,
                        flags: 0,
                    });
                    continue;
                }
                let t_at = placed[&index[&(t, trues[i])]];
                let f_at = placed[&index[&(t, falses[i])]];
                let (left, right) = if true_is_left[i] {
                    (t_at, f_at)
                } else {
                    (f_at, t_at)
                };
                // NaN goes to `true` where it is tracked, else where a failed comparison goes.
                let nan_true = tracks.get(i).is_some_and(|&v| v != 0);
                let nan_left = if true_is_left[i] { nan_true } else { !nan_true };
                nodes.push(Node {
                    value: f64::from(values.get(i).copied().unwrap_or(0.0)),
                    feature: features[i] as u32,
                    left,
                    right,
                    flags: MISSING_NAN | if nan_left { DEFAULT_LEFT } else { 0 },
                });
            }
            trees.push((start, 0));
        }
    }
    let mut base: Vec<f64> = attrs
        .floats("base_values")
        .iter()
        .map(|v| f64::from(*v))
        .collect();
    if base.is_empty() {
        base = vec![0.0; groups];
    } else if base.len() != groups {
        return Err(bad(format!(
            "{} base values for {groups} {prefix}es",
            base.len()
        )));
    }
    let name = |i: usize| outputs.get(i).map_or(String::new(), |o| o.name.clone());
    let (output, output_specs) = if classifier {
        if outputs.len() != 2 {
            return Ok(None);
        }
        let (output, classes) = match binary {
            Some((positive_weights, labels)) => (
                Output::OnnxBinary {
                    labels,
                    positive_weights,
                },
                2,
            ),
            None => (Output::OnnxClassifier { labels }, groups),
        };
        (
            output,
            vec![
                TensorSpec {
                    name: name(0),
                    datatype: DataType::I64,
                    shape: vec![None],
                },
                TensorSpec {
                    name: name(1),
                    datatype: DataType::F32,
                    shape: vec![None, Some(classes as i64)],
                },
            ],
        )
    } else {
        if outputs.len() != 1 {
            return Ok(None);
        }
        (
            Output::OnnxRegressor,
            vec![TensorSpec {
                name: name(0),
                datatype: DataType::F32,
                shape: vec![None, Some(groups as i64)],
            }],
        )
    };
    let mut forest = Forest {
        library,
        nodes,
        trees,
        groups,
        features: width,
        base,
        link,
        average,
        cats: Vec::new(),
        inputs: vec![TensorSpec {
            name: input.name.clone(),
            datatype: DataType::F32,
            shape: vec![None, Some(width as i64)],
        }],
        outputs: output_specs,
        flat: Flat::default(),
        output,
        leaf_vectors,
    };
    forest.compile();
    Ok(Some(forest))
}
