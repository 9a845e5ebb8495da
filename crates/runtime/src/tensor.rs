//! Tensors as the Open Inference (V2) protocol describes them: a name, a datatype, a shape and
//! row-major data.

use crate::Error;

/// The V2 datatypes (`BOOL`, `UINT8`, ..., `FP32`, `BYTES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    Bytes,
    /// A type the protocol cannot carry.
    Other,
}

/// A tensor's data, one variant per datatype.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F16(Vec<half::f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

/// A named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// What a model takes or returns: `None` dimensions are symbolic (any size, such as the batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<Option<i64>>,
}

// === impl DataType ===

impl DataType {
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::U8,
        DataType::U16,
        DataType::U32,
        DataType::U64,
        DataType::I8,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::F16,
        DataType::F32,
        DataType::F64,
        DataType::Bytes,
    ];

    /// The V2 name.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
            DataType::Other => "OTHER",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }

    pub(crate) fn from_tract(t: tract_onnx::prelude::DatumType) -> Self {
        use tract_onnx::prelude::DatumType as D;
        match t {
            D::Bool => DataType::Bool,
            D::U8 => DataType::U8,
            D::U16 => DataType::U16,
            D::U32 => DataType::U32,
            D::U64 => DataType::U64,
            D::I8 => DataType::I8,
            D::I16 => DataType::I16,
            D::I32 => DataType::I32,
            // Integer results the optimiser tracks as symbolic dimensions (an ArgMax's labels)
            // come out as INT64.
            D::I64 | D::TDim => DataType::I64,
            D::F16 => DataType::F16,
            D::F32 => DataType::F32,
            D::F64 => DataType::F64,
            D::String => DataType::Bytes,
            _ => DataType::Other,
        }
    }
}

// === impl TensorData ===

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::U8(_) => DataType::U8,
            TensorData::U16(_) => DataType::U16,
            TensorData::U32(_) => DataType::U32,
            TensorData::U64(_) => DataType::U64,
            TensorData::I8(_) => DataType::I8,
            TensorData::I16(_) => DataType::I16,
            TensorData::I32(_) => DataType::I32,
            TensorData::I64(_) => DataType::I64,
            TensorData::F16(_) => DataType::F16,
            TensorData::F32(_) => DataType::F32,
            TensorData::F64(_) => DataType::F64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::U16(v) => v.len(),
            TensorData::U32(v) => v.len(),
            TensorData::U64(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::I16(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first element that is NaN or infinite, with its index (floating-point data only).
    pub fn first_non_finite(&self) -> Option<(usize, f64)> {
        let find = |mut it: Box<dyn Iterator<Item = f64> + '_>| {
            it.by_ref().enumerate().find(|(_, x)| !x.is_finite())
        };
        match self {
            TensorData::F16(v) => find(Box::new(v.iter().map(|x| x.to_f64()))),
            TensorData::F32(v) => find(Box::new(v.iter().map(|x| f64::from(*x)))),
            TensorData::F64(v) => find(Box::new(v.iter().copied())),
            _ => None,
        }
    }

    /// The values as f64, for comparing outputs (bytes count as NaN).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            TensorData::Bool(v) => v.iter().map(|b| f64::from(u8::from(*b))).collect(),
            TensorData::U8(v) => v.iter().map(|x| f64::from(*x)).collect(),
            TensorData::U16(v) => v.iter().map(|x| f64::from(*x)).collect(),
            TensorData::U32(v) => v.iter().map(|x| f64::from(*x)).collect(),
            TensorData::U64(v) => v.iter().map(|x| *x as f64).collect(),
            TensorData::I8(v) => v.iter().map(|x| f64::from(*x)).collect(),
            TensorData::I16(v) => v.iter().map(|x| f64::from(*x)).collect(),
            TensorData::I32(v) => v.iter().map(|x| f64::from(*x)).collect(),
            TensorData::I64(v) => v.iter().map(|x| *x as f64).collect(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::F32(v) => v.iter().map(|x| f64::from(*x)).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::Bytes(v) => vec![f64::NAN; v.len()],
        }
    }
}

// === impl TensorSpec ===

impl TensorSpec {
    /// Checks a tensor against this spec: datatype, rank, fixed dimensions, and that the data
    /// length is the product of the shape.
    pub fn check(&self, t: &Tensor) -> Result<(), Error> {
        let bad = |message: String| {
            Err(Error::Input {
                input: t.name.clone(),
                message,
            })
        };
        if t.data.datatype() != self.datatype {
            return bad(format!(
                "datatype {} does not match the model's {}",
                t.data.datatype().as_str(),
                self.datatype.as_str()
            ));
        }
        if t.shape.len() != self.shape.len() {
            return bad(format!(
                "shape {:?} has {} dimensions; the model expects {} ({})",
                t.shape,
                t.shape.len(),
                self.shape.len(),
                self.shape_text()
            ));
        }
        for (i, (got, want)) in t.shape.iter().zip(&self.shape).enumerate() {
            if let Some(w) = want
                && *got as i64 != *w
            {
                return bad(format!(
                    "shape {:?} has {got} in dimension {i}; the model expects {} ({})",
                    t.shape,
                    w,
                    self.shape_text()
                ));
            }
        }
        // The shape comes from the request: its product may not fit.
        let Some(expected) = t.shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d)) else {
            return bad(format!(
                "shape {:?} holds more values than can be addressed",
                t.shape
            ));
        };
        if t.data.len() != expected {
            return bad(format!(
                "shape {:?} holds {expected} values but {} were given",
                t.shape,
                t.data.len()
            ));
        }
        Ok(())
    }

    /// `[-1, 4]`: symbolic dimensions as -1, as V2 metadata writes them.
    pub fn shape_i64(&self) -> Vec<i64> {
        self.shape.iter().map(|d| d.unwrap_or(-1)).collect()
    }

    fn shape_text(&self) -> String {
        format!("{:?}", self.shape_i64())
    }

    /// A tensor of zeros with this spec, one row where a dimension is symbolic.
    pub fn zeros(&self) -> Tensor {
        let shape: Vec<usize> = self
            .shape
            .iter()
            .map(|d| d.map_or(1, |v| v as usize))
            .collect();
        let n: usize = shape.iter().product();
        let data = match self.datatype {
            DataType::Bool => TensorData::Bool(vec![false; n]),
            DataType::U8 => TensorData::U8(vec![0; n]),
            DataType::U16 => TensorData::U16(vec![0; n]),
            DataType::U32 => TensorData::U32(vec![0; n]),
            DataType::U64 => TensorData::U64(vec![0; n]),
            DataType::I8 => TensorData::I8(vec![0; n]),
            DataType::I16 => TensorData::I16(vec![0; n]),
            DataType::I32 => TensorData::I32(vec![0; n]),
            DataType::I64 => TensorData::I64(vec![0; n]),
            DataType::F64 => TensorData::F64(vec![0.0; n]),
            DataType::Bytes => TensorData::Bytes(vec![Vec::new(); n]),
            DataType::F16 => TensorData::F16(vec![half::f16::ZERO; n]),
            DataType::F32 | DataType::Other => TensorData::F32(vec![0.0; n]),
        };
        Tensor {
            name: self.name.clone(),
            shape,
            data,
        }
    }
}
