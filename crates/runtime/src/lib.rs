//! Model loading and inference: ONNX in-process with tract, and model servers started as local
//! processes from a ServingRuntime.

mod contract;
mod onnx;
mod process;
mod tensor;
mod trees;

use std::path::PathBuf;

pub use contract::breaks as contract_breaks;
pub use onnx::OnnxModel;
pub use process::{INHERITED_ENV, JobOutcome, JobSpec, ProcessRuntime, ProcessSpec, run_job};
pub use tensor::{DataType, Tensor, TensorData, TensorSpec};
pub use trees::Forest;

/// A model run in-process: ONNX through tract, or a tree ensemble evaluated natively. Cheap to
/// clone (the model itself is shared).
#[derive(Clone)]
pub enum Model {
    Onnx(OnnxModel),
    Trees(std::sync::Arc<Forest>),
}

impl Model {
    pub fn inputs(&self) -> &[TensorSpec] {
        match self {
            Model::Onnx(m) => m.inputs(),
            Model::Trees(f) => f.inputs(),
        }
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        match self {
            Model::Onnx(m) => m.outputs(),
            Model::Trees(f) => f.outputs(),
        }
    }

    /// Runs the model; callable from many threads at once.
    pub fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, Error> {
        match self {
            Model::Onnx(m) => m.infer(inputs),
            Model::Trees(f) => f.infer(inputs),
        }
    }

    /// One inference on zeros of the declared shapes (batch 1), as a check that it runs.
    pub fn warm_up(&self) -> Result<(), Error> {
        match self {
            Model::Onnx(m) => m.warm_up(),
            Model::Trees(f) => {
                let spec = &f.inputs()[0];
                let width = spec.shape.get(1).copied().flatten().unwrap_or(1).max(1) as usize;
                let zeros = Tensor {
                    name: spec.name.clone(),
                    shape: vec![1, width],
                    data: TensorData::F32(vec![0.0; width]),
                };
                f.infer(&[zeros]).map(|_| ())
            }
        }
    }
}

impl From<OnnxModel> for Model {
    fn from(m: OnnxModel) -> Self {
        Model::Onnx(m)
    }
}

/// Errors of the runtime crate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{} uses the operator {operator}, which the ONNX engine (tract) does not implement", path.display())]
    UnsupportedOperator { path: PathBuf, operator: String },
    #[error("cannot load {}: {message}", path.display())]
    Load { path: PathBuf, message: String },
    /// A request's input does not fit the model (a client error).
    #[error("input {input}: {message}")]
    Input { input: String, message: String },
    /// The model failed while running (a server error).
    #[error("inference failed: {0}")]
    Inference(String),
    /// A model server process could not be started or did not become ready.
    #[error("{0}")]
    Process(String),
}
