//! In-process ONNX inference with tract (pure Rust).

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::Error;
use crate::tensor::{DataType, Tensor, TensorData, TensorSpec};

type Plan = Arc<TypedRunnableModel>;

/// A loaded, optimised ONNX model. Cheap to share; `infer` may be called from many threads at
/// once (each call runs with its own state). A clone shares the loaded model.
#[derive(Clone)]
pub struct OnnxModel {
    plan: Plan,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

// === impl OnnxModel ===

impl OnnxModel {
    /// Loads and optimises the model in `path` (a `.onnx` file).
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedOperator`] names the first operator tract lacks (`ZipMap`, say);
    /// [`Error::Load`] covers files that are not ONNX models.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let load = |e: &dyn std::fmt::Display| Error::Load {
            path: path.to_owned(),
            message: one_line(e),
        };
        let mut model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| classify(path, &e))?;
        // Exporters often leave the batch dimension unnamed: make every unknown input
        // dimension a symbol, so that one optimised plan serves any batch size.
        for i in 0..model.inputs.len() {
            let fact = model.input_fact(i).map_err(|e| load(&e))?.clone();
            if fact.shape.is_open() {
                continue;
            }
            let Some(dt) = fact.datum_type.concretize() else {
                continue;
            };
            let dims: TVec<TDim> = fact
                .shape
                .dims()
                .enumerate()
                .map(|(j, d)| {
                    d.concretize()
                        .unwrap_or_else(|| model.symbols.sym(&format!("dim{i}_{j}")).to_dim())
                })
                .collect();
            model
                .set_input_fact(i, InferenceFact::dt_shape(dt, dims))
                .map_err(|e| load(&e))?;
        }
        let typed = model.into_typed().map_err(|e| classify(path, &e))?;
        let inputs = specs(&typed, typed.input_outlets().map_err(|e| load(&e))?, true)
            .map_err(|e| load(&e))?;
        let outputs = specs(&typed, typed.output_outlets().map_err(|e| load(&e))?, false)
            .map_err(|e| load(&e))?;
        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| classify(path, &e))?;
        Ok(Self {
            plan,
            inputs,
            outputs,
        })
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Runs the model. `inputs` must match [`OnnxModel::inputs`] by name (any order),
    /// datatype and shape (symbolic dimensions take any size).
    pub fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, Error> {
        let mut values: TVec<TValue> = TVec::new();
        for spec in &self.inputs {
            let t = inputs
                .iter()
                .find(|t| t.name == spec.name)
                .ok_or_else(|| Error::Input {
                    input: spec.name.clone(),
                    message: "missing".into(),
                })?;
            spec.check(t)?;
            values.push(to_tract(t)?.into());
        }
        if let Some(extra) = inputs
            .iter()
            .find(|t| !self.inputs.iter().any(|s| s.name == t.name))
        {
            return Err(Error::Input {
                input: extra.name.clone(),
                message: format!(
                    "the model has no such input (it has {})",
                    self.inputs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        // tract panics on some invalid inputs (an out-of-range Gather index): a request must
        // not take the server down, so a panic is an inference error like any other.
        let plan = &self.plan;
        let results = quiet_panics(|| plan.run(values))
            .map_err(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown cause");
                Error::Inference(format!("the model failed on this input: {what}"))
            })?
            .map_err(|e| Error::Inference(one_line(&e)))?;
        results
            .iter()
            .zip(&self.outputs)
            .map(|(value, spec)| from_tract(&spec.name, value))
            .collect()
    }

    /// Runs the model once on zeros (one row where the batch is symbolic), so that a revision
    /// is known to work before it takes traffic.
    /// How many handles share this loaded model (clones, and revisions serving it).
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.plan)
    }

    pub fn warm_up(&self) -> Result<(), Error> {
        let inputs: Vec<Tensor> = self.inputs.iter().map(TensorSpec::zeros).collect();
        self.infer(&inputs).map(|_| ())
    }
}

fn specs(model: &TypedModel, outlets: &[OutletId], inputs: bool) -> TractResult<Vec<TensorSpec>> {
    outlets
        .iter()
        .map(|outlet| {
            let fact = model.outlet_fact(*outlet)?;
            let name = if inputs {
                model.node(outlet.node).name.clone()
            } else {
                model
                    .outlet_label(*outlet)
                    .map(str::to_owned)
                    .unwrap_or_else(|| model.node(outlet.node).name.clone())
            };
            let shape = fact
                .shape
                .iter()
                .map(|d| d.to_i64().ok().filter(|v| *v >= 0))
                .collect();
            Ok(TensorSpec {
                name,
                datatype: DataType::from_tract(fact.datum_type),
                shape,
            })
        })
        .collect()
}

fn to_tract(t: &Tensor) -> Result<tract_onnx::prelude::Tensor, Error> {
    let bad = |e: TractError| Error::Input {
        input: t.name.clone(),
        message: one_line(&e),
    };
    let shape = &t.shape;
    let tensor = match &t.data {
        TensorData::Bool(v) => tract_onnx::prelude::Tensor::from_shape(shape, v),
        TensorData::U8(v) => tract_onnx::prelude::Tensor::from_shape(shape, v),
        TensorData::U16(v) => tract_onnx::prelude::Tensor::from_shape(shape, v),
        TensorData::U32(v) => tract_onnx::prelude::Tensor::from_shape(shape, v),
        TensorData::U64(v) => tract_onnx::prelude::Tensor::from_shape(shape, v),
        TensorData::I8(v) => tract_onnx::prelude::Tensor::from_shape(shape, v),
        TensorData::I16(v) => tract_onnx::prelude::Tensor::from_shape(shape, v),
        TensorData::I32(v) => tract_onnx::prelude::Tensor::from_shape(shape, v),
        TensorData::I64(v) => tract_onnx::prelude::Tensor::from_shape(shape, v),
        TensorData::F16(v) => tract_onnx::prelude::Tensor::from_shape(shape, v),
        TensorData::F32(v) => tract_onnx::prelude::Tensor::from_shape(shape, v),
        TensorData::F64(v) => tract_onnx::prelude::Tensor::from_shape(shape, v),
        TensorData::Bytes(v) => {
            // An ONNX string tensor holds text: bytes that are not UTF-8 are refused, never
            // replaced.
            let mut strings = Vec::with_capacity(v.len());
            for (i, b) in v.iter().enumerate() {
                match String::from_utf8(b.clone()) {
                    Ok(s) => strings.push(s),
                    Err(e) => {
                        return Err(Error::Input {
                            input: t.name.clone(),
                            message: format!(
                                "element {i} is not UTF-8 text (byte {}), and the model's string \
                                 input holds text",
                                e.utf8_error().valid_up_to()
                            ),
                        });
                    }
                }
            }
            tract_ndarray::ArrayD::from_shape_vec(shape.as_slice(), strings)
                .map(tract_onnx::prelude::Tensor::from)
                .map_err(|e| TractError::msg(e.to_string()))
        }
    };
    tensor.map_err(bad)
}

fn from_tract(name: &str, value: &TValue) -> Result<Tensor, Error> {
    let shape = value.shape().to_vec();
    let bad = |e: TractError| Error::Inference(format!("output {name}: {}", one_line(&e)));
    // The optimiser may compute integer outputs (an ArgMax's labels) as symbolic dimensions.
    let cast;
    let value = if value.datum_type() == DatumType::TDim {
        cast = value.cast_to::<i64>().map_err(bad)?.into_owned();
        &cast
    } else {
        &**value
    };
    macro_rules! slice {
        ($t:ty, $variant:ident) => {
            TensorData::$variant(
                value
                    .to_plain_array_view::<$t>()
                    .map_err(bad)?
                    .iter()
                    .cloned()
                    .collect(),
            )
        };
    }
    let data = match value.datum_type() {
        DatumType::Bool => slice!(bool, Bool),
        DatumType::U8 => slice!(u8, U8),
        DatumType::U16 => slice!(u16, U16),
        DatumType::U32 => slice!(u32, U32),
        DatumType::U64 => slice!(u64, U64),
        DatumType::I8 => slice!(i8, I8),
        DatumType::I16 => slice!(i16, I16),
        DatumType::I32 => slice!(i32, I32),
        DatumType::I64 => slice!(i64, I64),
        DatumType::F16 => slice!(half::f16, F16),
        DatumType::F32 => slice!(f32, F32),
        DatumType::F64 => slice!(f64, F64),
        DatumType::String => TensorData::Bytes(
            value
                .to_plain_array_view::<String>()
                .map_err(bad)?
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        ),
        other => {
            return Err(Error::Inference(format!(
                "output {name} has datatype {other:?}, which crossfade cannot send"
            )));
        }
    };
    Ok(Tensor {
        name: name.to_owned(),
        shape,
        data,
    })
}

/// Tells a missing operator apart from other load failures.
fn classify(path: &Path, e: &TractError) -> Error {
    let text = format!("{e:?}");
    // tract reports "Unimplemented(ZipMap)" (or "... operator ZipMap ...") somewhere in the chain.
    let op = text
        .split("Unimplemented(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .map(str::to_owned);
    match op {
        Some(op) if !op.is_empty() => Error::UnsupportedOperator {
            path: path.to_owned(),
            operator: op.trim_matches('"').to_owned(),
        },
        _ => Error::Load {
            path: path.to_owned(),
            message: one_line(e),
        },
    }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

std::thread_local! {
    /// Set while this thread runs a model: a panic there is the model's answer to a bad input,
    /// turned into an error, not a crash to report.
    static IN_MODEL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching a panic as `Err` without the process-wide panic message (every other
/// panic is reported as before).
fn quiet_panics<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_MODEL.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    IN_MODEL.with(|m| m.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_MODEL.with(|m| m.set(false));
    result
}
