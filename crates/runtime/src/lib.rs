//! Model loading and inference: ONNX in-process with tract, and model servers started as local
//! processes from a ServingRuntime.

mod contract;
mod onnx;
mod process;
mod tensor;

use std::path::PathBuf;

pub use contract::breaks as contract_breaks;
pub use onnx::OnnxModel;
pub use process::{INHERITED_ENV, ProcessRuntime, ProcessSpec};
pub use tensor::{DataType, Tensor, TensorData, TensorSpec};

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
