//! KServe V1 and Open Inference (V2) JSON: requests to tensors, tensors to responses. Every
//! error names the input and says what is wrong, for a 400.

use runtime::{DataType, Tensor, TensorData, TensorSpec};
use serde_json::{Map, Value, json};

/// A client error in a request body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad<T>(message: impl Into<String>) -> Result<T, BadRequest> {
    Err(BadRequest(message.into()))
}

/// A parsed V2 infer request.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<Value>,
    pub inputs: Vec<Tensor>,
    /// `outputs[].name`: only these are returned.
    pub outputs: Option<Vec<String>>,
    /// Outputs to return as binary data (the binary tensor data extension).
    pub binary_outputs: BinaryOutputs,
}

/// Which outputs go back as raw bytes after the JSON header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum BinaryOutputs {
    #[default]
    None,
    /// `parameters.binary_data_output: true` on the request.
    All,
    /// `outputs[].parameters.binary_data: true`.
    Named(Vec<String>),
}

/// Reads a V2 `infer` body. Datatypes and shapes are checked against the model's inputs.
///
/// `json_len` is the `Inference-Header-Content-Length` header of the binary tensor data
/// extension: the JSON is the first `json_len` bytes, and inputs with
/// `parameters.binary_data_size` take their data, in order, from the bytes after it
/// (little-endian, row-major; `BYTES` elements as a 4-byte length and the bytes).
pub fn parse_v2(
    body: &[u8],
    json_len: Option<usize>,
    specs: &[TensorSpec],
) -> Result<InferRequest, BadRequest> {
    let (json_part, mut binary) = match json_len {
        Some(n) if n <= body.len() => (&body[..n], &body[n..]),
        Some(n) => {
            return bad(format!(
                "Inference-Header-Content-Length is {n} but the body has {} bytes",
                body.len()
            ));
        }
        None => (body, &[][..]),
    };
    let v: Value = serde_json::from_slice(json_part)
        .map_err(|e| BadRequest(format!("the body is not valid JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return bad("the body must be a JSON object with `inputs`");
    };
    let Some(inputs) = obj.get("inputs").and_then(Value::as_array) else {
        return bad("`inputs` is missing or not a list");
    };
    let mut tensors = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let Some(input) = input.as_object() else {
            return bad(format!("inputs[{i}] is not an object"));
        };
        let Some(name) = input.get("name").and_then(Value::as_str) else {
            return bad(format!("inputs[{i}] has no `name`"));
        };
        if tensors.iter().any(|t: &Tensor| t.name == name) {
            return bad(format!("input {name}: given twice"));
        }
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            return bad(format!(
                "input {name}: the model has no such input (it has {})",
                specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let shape = match input.get("shape").and_then(Value::as_array) {
            Some(dims) => dims
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| {
                    BadRequest(format!(
                        "input {name}: `shape` must be a list of non-negative integers"
                    ))
                })?,
            None => return bad(format!("input {name}: `shape` is missing")),
        };
        let Some(datatype) = input.get("datatype").and_then(Value::as_str) else {
            return bad(format!("input {name}: `datatype` is missing"));
        };
        let Some(datatype) = DataType::parse(datatype) else {
            return bad(format!("input {name}: unknown datatype {datatype}"));
        };
        if datatype != spec.datatype {
            return bad(format!(
                "input {name}: datatype {} does not match the model's {}",
                datatype.as_str(),
                spec.datatype.as_str()
            ));
        }
        let binary_size = input
            .get("parameters")
            .and_then(|p| p.get("binary_data_size"))
            .and_then(Value::as_u64);
        let data = match (binary_size, input.get("data")) {
            (Some(size), _) => {
                let size = size as usize;
                if size > binary.len() {
                    return bad(format!(
                        "input {name}: binary_data_size is {size} but only {} bytes follow the JSON",
                        binary.len()
                    ));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                decode_binary(name, datatype, mine)?
            }
            (None, Some(data)) => {
                check_nesting(name, data, &shape)?;
                let mut flat = Vec::new();
                flatten(data, &mut flat);
                convert(name, datatype, &flat)?
            }
            (None, None) => return bad(format!("input {name}: `data` is missing")),
        };
        let tensor = Tensor {
            name: name.to_owned(),
            shape,
            data,
        };
        spec.check(&tensor).map_err(|e| BadRequest(e.to_string()))?;
        tensors.push(tensor);
    }
    for spec in specs {
        if !tensors.iter().any(|t| t.name == spec.name) {
            return bad(format!("input {}: missing", spec.name));
        }
    }
    let all_binary = obj
        .get("parameters")
        .and_then(|p| p.get("binary_data_output"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut named_binary = Vec::new();
    let outputs = match obj.get("outputs") {
        // No list, or an empty one: every output (as both reference servers answer).
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) if list.is_empty() => None,
        Some(Value::Array(list)) => {
            let mut names = Vec::new();
            for o in list {
                let Some(name) = o.get("name").and_then(Value::as_str) else {
                    return bad("every `outputs` entry needs a `name`");
                };
                let binary = o
                    .get("parameters")
                    .and_then(|p| p.get("binary_data"))
                    .and_then(Value::as_bool);
                if binary == Some(true) || (binary.is_none() && all_binary) {
                    named_binary.push(name.to_owned());
                }
                names.push(name.to_owned());
            }
            Some(names)
        }
        Some(_) => return bad("`outputs` must be a list"),
    };
    let binary_outputs = match (&outputs, all_binary) {
        (None, true) => BinaryOutputs::All,
        _ if named_binary.is_empty() => BinaryOutputs::None,
        _ => BinaryOutputs::Named(named_binary),
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(id @ Value::String(_)) => Some(id.clone()),
        Some(other) => return bad(format!("`id` must be a string, not {other}")),
    };
    Ok(InferRequest {
        id,
        inputs: tensors,
        outputs,
        binary_outputs,
    })
}

/// A V2 response: the JSON, and the binary tensor data that follows it (empty when none).
pub struct Rendered {
    pub json: Value,
    pub binary: Vec<u8>,
}

/// The V2 response body.
pub fn render_v2(
    model: &str,
    revision: &str,
    id: Option<&Value>,
    outputs: &[Tensor],
    selected: Option<&[String]>,
    binary_outputs: &BinaryOutputs,
) -> Result<Rendered, BadRequest> {
    if let Some(sel) = selected
        && let Some(unknown) = sel.iter().find(|n| !outputs.iter().any(|o| &o.name == *n))
    {
        return bad(format!(
            "output {unknown}: the model has no such output (it has {})",
            outputs
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut binary = Vec::new();
    let rendered: Vec<Value> = outputs
        .iter()
        .filter(|o| selected.is_none_or(|s| s.contains(&o.name)))
        .map(|o| -> Result<Value, BadRequest> {
            let as_binary = match binary_outputs {
                BinaryOutputs::None => false,
                BinaryOutputs::All => true,
                BinaryOutputs::Named(names) => names.contains(&o.name),
            };
            if as_binary {
                let before = binary.len();
                encode_binary(&o.data, &mut binary);
                Ok(json!({
                    "name": o.name,
                    "datatype": o.data.datatype().as_str(),
                    "shape": o.shape,
                    "parameters": {"binary_data_size": binary.len() - before},
                }))
            } else {
                Ok(json!({
                    "name": o.name,
                    "datatype": o.data.datatype().as_str(),
                    "shape": o.shape,
                    "data": data_json(&o.name, &o.data)?,
                }))
            }
        })
        .collect::<Result<_, _>>()?;
    let mut body = Map::new();
    body.insert("model_name".into(), json!(model));
    body.insert("model_version".into(), json!(revision));
    if let Some(id) = id {
        body.insert("id".into(), id.clone());
    }
    body.insert("outputs".into(), Value::Array(rendered));
    Ok(Rendered {
        json: Value::Object(body),
        binary,
    })
}

/// Decodes raw little-endian tensor bytes.
fn decode_binary(name: &str, datatype: DataType, bytes: &[u8]) -> Result<TensorData, BadRequest> {
    macro_rules! le {
        ($t:ty, $variant:ident) => {{
            const N: usize = std::mem::size_of::<$t>();
            if bytes.len() % N != 0 {
                return bad(format!(
                    "input {name}: {} binary bytes are not a whole number of {} values",
                    bytes.len(),
                    datatype.as_str()
                ));
            }
            TensorData::$variant(
                bytes
                    .chunks_exact(N)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("exact chunk")))
                    .collect(),
            )
        }};
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(bytes.iter().map(|b| *b != 0).collect()),
        DataType::U8 => TensorData::U8(bytes.to_vec()),
        DataType::U16 => le!(u16, U16),
        DataType::U32 => le!(u32, U32),
        DataType::U64 => le!(u64, U64),
        DataType::I8 => TensorData::I8(bytes.iter().map(|b| *b as i8).collect()),
        DataType::I16 => le!(i16, I16),
        DataType::I32 => le!(i32, I32),
        DataType::I64 => le!(i64, I64),
        DataType::F16 => le!(half::f16, F16),
        DataType::F32 => le!(f32, F32),
        DataType::F64 => le!(f64, F64),
        DataType::Bytes => {
            let mut out = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return bad(format!("input {name}: a BYTES element is cut short"));
                }
                let n = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                if rest.len() < 4 + n {
                    return bad(format!("input {name}: a BYTES element is cut short"));
                }
                out.push(rest[4..4 + n].to_vec());
                rest = &rest[4 + n..];
            }
            TensorData::Bytes(out)
        }
        DataType::Other => {
            return bad(format!(
                "input {name}: datatype {} is not supported",
                datatype.as_str()
            ));
        }
    })
}

fn encode_binary(data: &TensorData, out: &mut Vec<u8>) {
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|b| u8::from(*b))),
        TensorData::U8(v) => out.extend_from_slice(v),
        TensorData::U16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::U32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::U64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I8(v) => out.extend(v.iter().map(|x| *x as u8)),
        TensorData::I16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::F16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Bytes(v) => v.iter().for_each(|b| {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }),
    }
}

/// Model metadata (`GET /v2/models/<m>`).
pub fn metadata_v2(
    model: &str,
    versions: &[String],
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
) -> Value {
    let spec = |s: &TensorSpec| json!({"name": s.name, "datatype": s.datatype.as_str(), "shape": s.shape_i64()});
    json!({
        "name": model,
        "versions": versions,
        "platform": "onnx",
        "inputs": inputs.iter().map(spec).collect::<Vec<_>>(),
        "outputs": outputs.iter().map(spec).collect::<Vec<_>>(),
    })
}

/// Reads a V1 `predict` body (`{"instances": [...]}`) for a model with one input.
pub fn parse_v1(body: &[u8], specs: &[TensorSpec]) -> Result<Tensor, BadRequest> {
    let [spec] = specs else {
        return bad(format!(
            "the V1 protocol sends one input, but the model takes {}: use the V2 protocol",
            specs.len()
        ));
    };
    let tensor = v1_tensor(body, &spec.name, Some(spec.datatype))?;
    spec.check(&tensor).map_err(|e| BadRequest(e.to_string()))?;
    Ok(tensor)
}

/// A V1 request as a V2 one, for a model server that speaks only V2: one input, the one the
/// server declares when it declares exactly one (its name and datatype), else `input-0` of
/// the instances' shape, FP64 for numbers and BYTES for strings, with MLServer's content type
/// for it (`np`, or `str` for strings).
pub fn v1_as_v2_request(
    body: &[u8],
    declared: Option<&[TensorSpec]>,
) -> Result<Vec<u8>, BadRequest> {
    let tensor = match declared {
        Some(specs @ [_]) => parse_v1(body, specs)?,
        _ => v1_tensor(body, "input-0", None)?,
    };
    let data = data_json(&tensor.name, &tensor.data)?;
    // MLServer decodes by content type: a tensor (NumPy) or strings, which is what V1
    // instances are; without one, a runtime with no signature (MLflow's) gets the request
    // itself.
    let content_type = match tensor.data.datatype() {
        DataType::Bytes => "str",
        _ => "np",
    };
    let request = json!({
        "parameters": {"content_type": content_type},
        "inputs": [{
            "name": tensor.name,
            "shape": tensor.shape,
            "datatype": tensor.data.datatype().as_str(),
            "parameters": {"content_type": content_type},
            "data": data,
        }],
    });
    Ok(request.to_string().into_bytes())
}

/// The instances of a V1 request as the tensor `name`, of `datatype` (or, when `None`, FP64
/// for numbers and BYTES for strings).
fn v1_tensor(body: &[u8], name: &str, datatype: Option<DataType>) -> Result<Tensor, BadRequest> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| BadRequest(format!("the body is not valid JSON: {e}")))?;
    // `instances`, or `inputs` as KServe's V1 also takes it: a list, or (TensorFlow Serving's
    // columnar form) an object naming the one input.
    let instances = match (v.get("instances"), v.get("inputs")) {
        (Some(Value::Array(list)), None) | (None, Some(Value::Array(list))) => list,
        (None, Some(Value::Object(named))) => match named.get(name) {
            Some(Value::Array(list)) if named.len() == 1 => list,
            _ => {
                return bad(format!(
                    "`inputs` as an object must hold exactly the model's input {name}, as a list"
                ));
            }
        },
        (Some(_), Some(_)) => return bad("give `instances` or `inputs`, not both"),
        _ => return bad("`instances` (or `inputs`) is missing or not a list"),
    };
    let Some(first) = instances.first() else {
        return bad("`instances` is empty");
    };
    let inner = shape_of(first);
    let mut flat = Vec::new();
    for (i, instance) in instances.iter().enumerate() {
        if shape_of(instance) != inner {
            return bad(format!(
                "input {name}: instance {i} has shape {:?}, instance 0 has {inner:?}",
                shape_of(instance)
            ));
        }
        flatten(instance, &mut flat);
    }
    let mut shape = vec![instances.len()];
    shape.extend(inner);
    let datatype = datatype.unwrap_or(match flat.first() {
        Some(Value::String(_)) => DataType::Bytes,
        _ => DataType::F64,
    });
    Ok(Tensor {
        name: name.to_owned(),
        shape,
        data: convert(name, datatype, &flat)?,
    })
}

/// The V1 response: one prediction per instance, from the first output.
pub fn render_v1(outputs: &[Tensor]) -> Result<Value, BadRequest> {
    let Some(first) = outputs.first() else {
        return Ok(json!({"predictions": []}));
    };
    let rows = first.shape.first().copied().unwrap_or(1).max(1);
    let per_row = first.data.len() / rows;
    let values = data_json(&first.name, &first.data)?;
    let Value::Array(values) = values else {
        return Ok(json!({"predictions": []}));
    };
    let predictions: Vec<Value> = if first.shape.len() <= 1 {
        values
    } else {
        values
            .chunks(per_row.max(1))
            .map(|c| Value::Array(c.to_vec()))
            .collect()
    };
    Ok(json!({ "predictions": predictions }))
}

/// A model server's answer as tensors, to compare it with another revision's: V2 `outputs`
/// (JSON data; an answer with binary data is not read), or V1 `predictions` as one tensor of
/// that name (INT64 when every value is an integer, else FP64). `None` when it is neither.
pub fn answer_tensors(body: &[u8], v1: bool) -> Option<Vec<Tensor>> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    if v1 {
        let predictions = answer.get("predictions")?;
        let mut values = Vec::new();
        flatten(predictions, &mut values);
        let datatype = if values.iter().all(|v| v.is_i64() || v.is_u64()) {
            DataType::I64
        } else {
            DataType::F64
        };
        return Some(vec![Tensor {
            name: "predictions".into(),
            shape: shape_of(predictions),
            data: convert("predictions", datatype, &values).ok()?,
        }]);
    }
    answer
        .get("outputs")?
        .as_array()?
        .iter()
        .map(|o| {
            let name = o.get("name")?.as_str()?;
            let datatype = DataType::parse(o.get("datatype")?.as_str()?)?;
            let shape = o
                .get("shape")?
                .as_array()?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()?;
            let mut values = Vec::new();
            flatten(o.get("data")?, &mut values);
            Some(Tensor {
                name: name.to_owned(),
                shape,
                data: convert(name, datatype, &values).ok()?,
            })
        })
        .collect()
}

fn shape_of(v: &Value) -> Vec<usize> {
    match v {
        Value::Array(items) => {
            let mut s = vec![items.len()];
            if let Some(first) = items.first() {
                s.extend(shape_of(first));
            }
            s
        }
        _ => Vec::new(),
    }
}

fn flatten<'v>(v: &'v Value, out: &mut Vec<&'v Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn convert(name: &str, datatype: DataType, values: &[&Value]) -> Result<TensorData, BadRequest> {
    let wrong = |i: usize, what: &str| {
        BadRequest(format!(
            "input {name}: data element {i} ({}) is not {what}",
            values[i]
        ))
    };
    let out_of_range = |i: usize, what: &str| {
        BadRequest(format!(
            "input {name}: data element {i} ({}) is outside the {what} range",
            values[i]
        ))
    };
    macro_rules! ints {
        ($t:ty, $variant:ident) => {{
            let mut out = Vec::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                let n = v
                    .as_i64()
                    .and_then(|n| <$t>::try_from(n).ok())
                    .or_else(|| v.as_u64().and_then(|n| <$t>::try_from(n).ok()))
                    .ok_or_else(|| wrong(i, concat!("a ", stringify!($t))))?;
                out.push(n);
            }
            TensorData::$variant(out)
        }};
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_bool().ok_or_else(|| wrong(i, "a boolean")))
                .collect::<Result<_, _>>()?,
        ),
        DataType::U8 => ints!(u8, U8),
        DataType::U16 => ints!(u16, U16),
        DataType::U32 => ints!(u32, U32),
        DataType::U64 => ints!(u64, U64),
        DataType::I8 => ints!(i8, I8),
        DataType::I16 => ints!(i16, I16),
        DataType::I32 => ints!(i32, I32),
        DataType::I64 => ints!(i64, I64),
        DataType::F16 => TensorData::F16(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let f = v.as_f64().ok_or_else(|| wrong(i, "a number"))?;
                    let h = half::f16::from_f64(f);
                    if h.is_infinite() {
                        return Err(out_of_range(i, "FP16"));
                    }
                    Ok(h)
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::F32 => TensorData::F32(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let f = v.as_f64().ok_or_else(|| wrong(i, "a number"))?;
                    // JSON numbers are finite; one beyond FP32's range would become infinity.
                    if (f as f32).is_infinite() {
                        return Err(out_of_range(i, "FP32"));
                    }
                    Ok(f as f32)
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::F64 => TensorData::F64(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_f64().ok_or_else(|| wrong(i, "a number")))
                .collect::<Result<_, _>>()?,
        ),
        DataType::Bytes => TensorData::Bytes(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(|s| s.as_bytes().to_vec())
                        .ok_or_else(|| wrong(i, "a string"))
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::Other => {
            return bad(format!(
                "input {name}: datatype {} is not supported",
                datatype.as_str()
            ));
        }
    })
}

/// An output's data as JSON; `BYTES` must be UTF-8 text to be a JSON string (else it has to be
/// asked for as binary data: nothing is replaced).
fn data_json(name: &str, data: &TensorData) -> Result<Value, BadRequest> {
    Ok(match data {
        TensorData::Bool(v) => json!(v),
        TensorData::U8(v) => json!(v),
        TensorData::U16(v) => json!(v),
        TensorData::U32(v) => json!(v),
        TensorData::U64(v) => json!(v),
        TensorData::I8(v) => json!(v),
        TensorData::I16(v) => json!(v),
        TensorData::I32(v) => json!(v),
        TensorData::I64(v) => json!(v),
        TensorData::F16(v) => json!(v.iter().map(|x| x.to_f32()).collect::<Vec<_>>()),
        TensorData::F32(v) => json!(v),
        TensorData::F64(v) => json!(v),
        TensorData::Bytes(v) => {
            let mut texts = Vec::with_capacity(v.len());
            for (i, b) in v.iter().enumerate() {
                let Ok(text) = std::str::from_utf8(b) else {
                    return bad(format!(
                        "output {name}: element {i} is not UTF-8 text, so it cannot be a JSON \
                         string: ask for it as binary data (parameters.binary_data)"
                    ));
                };
                texts.push(Value::String(text.to_owned()));
            }
            Value::Array(texts)
        }
    })
}

/// Why an answer cannot be sent: an output holds NaN or an infinity (a failure of the model on
/// this request, never a `null` in a 200).
pub fn non_finite(outputs: &[Tensor]) -> Option<String> {
    outputs.iter().find_map(|o| {
        o.data.first_non_finite().map(|(i, x)| {
            let what = if x.is_nan() {
                "NaN"
            } else if x > 0.0 {
                "+Inf"
            } else {
                "-Inf"
            };
            format!(
                "the model failed on this request: output {} element {i} is {what}",
                o.name
            )
        })
    })
}

/// Checks that nested `data` is rectangular and has the declared shape (a flat list is taken
/// as it is): `[[1, 2, 3], [4]]` for a shape `[2, 2]` is refused, though it holds four values.
fn check_nesting(name: &str, data: &Value, shape: &[usize]) -> Result<(), BadRequest> {
    let Value::Array(items) = data else {
        return Ok(());
    };
    if !items.iter().any(Value::is_array) {
        return Ok(());
    }
    fn walk(v: &Value, shape: &[usize], at: &mut Vec<usize>) -> Result<(), String> {
        match (v, shape.split_first()) {
            (Value::Array(items), Some((n, rest))) => {
                if items.len() != *n {
                    return Err(format!(
                        "data{} has {} elements where the shape says {n}",
                        index(at),
                        items.len()
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    at.push(i);
                    walk(item, rest, at)?;
                    at.pop();
                }
                Ok(())
            }
            (Value::Array(_), None) => {
                Err(format!("data{} is nested deeper than the shape", index(at)))
            }
            (_, Some(_)) => Err(format!(
                "data{} is a value where the shape needs a list",
                index(at)
            )),
            (_, None) => Ok(()),
        }
    }
    fn index(at: &[usize]) -> String {
        at.iter().map(|i| format!("[{i}]")).collect()
    }
    walk(data, shape, &mut Vec::new()).map_err(|why| BadRequest(format!("input {name}: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_instances_become_one_v2_input_with_mlservers_content_type() {
        let v2: Value = serde_json::from_slice(
            &v1_as_v2_request(br#"{"instances": [[1, 2.5], [3, 4]]}"#, None).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v2,
            json!({
                "parameters": {"content_type": "np"},
                "inputs": [{"name": "input-0", "shape": [2, 2], "datatype": "FP64",
                    "parameters": {"content_type": "np"}, "data": [1.0, 2.5, 3.0, 4.0]}],
            })
        );
        // Strings are BYTES, decoded as strings.
        let v2: Value = serde_json::from_slice(
            &v1_as_v2_request(br#"{"instances": ["a review", "another"]}"#, None).unwrap(),
        )
        .unwrap();
        assert_eq!(v2["inputs"][0]["datatype"], "BYTES");
        assert_eq!(v2["parameters"]["content_type"], "str");
        // The input the server declares, when it declares one.
        let declared = [TensorSpec {
            name: "X".into(),
            datatype: DataType::F32,
            shape: vec![None, Some(2)],
        }];
        let v2: Value = serde_json::from_slice(
            &v1_as_v2_request(br#"{"instances": [[1, 2]]}"#, Some(&declared)).unwrap(),
        )
        .unwrap();
        assert_eq!(v2["inputs"][0]["name"], "X");
        assert_eq!(v2["inputs"][0]["datatype"], "FP32");
        // Ragged instances are the client's error.
        let err = v1_as_v2_request(br#"{"instances": [[1, 2], [3]]}"#, None).unwrap_err();
        assert!(err.0.contains("instance 1"), "{}", err.0);
    }
}
