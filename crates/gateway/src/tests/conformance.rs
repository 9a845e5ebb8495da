//! Where the Open Inference and KServe V1 answers deviated from the spec and from both
//! reference servers (KServe's own and MLServer), each as the request that showed it.

use super::*;

/// A gateway serving `name` from fixture `file` alone.
fn serving(name: &str, file: &str) -> Arc<Gateway> {
    let gw = Gateway::new(Config::default());
    let route = Route::new(
        format!("default/{name}"),
        vec![revision(&format!("{name}-predictor-00001"), file)],
        vec![(0, 100)],
    );
    let mut table = RouteTable::default();
    table.insert(name.into(), route);
    gw.publish(table);
    gw
}

/// Sends a request as the server does; returns the status, headers and raw body.
async fn raw(gw: &Arc<Gateway>, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let target = parts.uri.path_and_query().unwrap().as_str();
    let resp = server::dispatch(gw, &gw.router(), parts.method, target, parts.headers, body).await;
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_owned()
}

fn expected(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../fixtures/models/{name}.expected.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_model_with_fp16_inputs_and_outputs_warms_up_and_serves_json_and_binary() {
    let half = model("half");
    half.warm_up().expect("an FP16 model warms up");
    let gw = serving("half", "half");
    let reference = expected("half");
    let x = &reference["inputs"]["X"]["data"];
    let body = json!({"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP16", "data": x}]});
    let (s, _, v) = send(&gw, infer("/v2/models/half/infer", &body, &[])).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["outputs"][0]["datatype"], "FP16");
    assert_eq!(v["outputs"][0]["data"], reference["outputs"]["Y"]["data"]);
    // The binary extension: FP16 as two little-endian bytes each, both ways.
    let header = json!({
        "inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP16", "parameters": {"binary_data_size": 16}}],
        "parameters": {"binary_data_output": true},
    })
    .to_string();
    let mut bytes = header.clone().into_bytes();
    for value in x.as_array().unwrap() {
        bytes.extend_from_slice(&half::f16::from_f64(value.as_f64().unwrap()).to_le_bytes());
    }
    let req = Request::post("/v2/models/half/infer")
        .header("inference-header-content-length", header.len())
        .body(Body::from(bytes))
        .unwrap();
    let (s, headers, body) = raw(&gw, req).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let json_len: usize = headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let out: Vec<f64> = body[json_len..]
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
        .collect();
    let want: Vec<f64> = reference["outputs"]["Y"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(out, want);
    // An FP16 element beyond its range (65504) is a client error naming the element.
    let body = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP16", "data": [1, 2, 70000, 4]}]});
    let (s, _, v) = send(&gw, infer("/v2/models/half/infer", &body, &[])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&v).contains("input X: data element 2 (70000) is outside the FP16 range"),
        "{v}"
    );
}

#[tokio::test]
async fn an_fp32_number_beyond_the_fp32_range_is_a_400_naming_input_and_index() {
    let gw = gateway(1 << 20);
    let body = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 1e39, 1.4, 0.2]}]});
    let (s, _, v) = send(&gw, infer("/v2/models/iris/infer", &body, &[])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).contains("input X: data element 1"), "{v}");
    assert!(error_of(&v).contains("FP32 range"), "{v}");
}

#[tokio::test]
async fn a_nan_or_infinite_output_is_a_failure_of_the_model_counted_as_a_server_error() {
    let gw = serving("sqrt", "sqrt");
    // sqrt(-1) is NaN at element 5; `label` still looks right.
    let body = json!({"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32",
        "data": [4.0, 9.0, 1.0, 0.25, 1.0, -1.0, 4.0, 0.0]}]});
    let (s, rev, v) = send(&gw, infer("/v2/models/sqrt/infer", &body, &[])).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert_eq!(rev.as_deref(), Some("sqrt-predictor-00001"));
    assert!(error_of(&v).contains("output Y element 5 is NaN"), "{v}");
    // The same as binary output, and through V1.
    let mut binary = body.clone();
    binary["parameters"] = json!({"binary_data_output": true});
    let (s, _, v) = send(&gw, infer("/v2/models/sqrt/infer", &binary, &[])).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    let v1 = json!({"instances": [[1.0, -1.0, 4.0, 0.0]]});
    let (s, _, v) = send(&gw, infer("/v1/models/sqrt:predict", &v1, &[])).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert!(error_of(&v).contains("output Y element 1 is NaN"), "{v}");
    // A finite answer is served.
    let fine = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [4.0, 9.0, 1.0, 0.25]}]});
    let (s, _, v) = send(&gw, infer("/v2/models/sqrt/infer", &fine, &[])).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["outputs"][0]["data"], json!([2.0, 3.0, 1.0, 0.5]));
    // Counted where the analysis reads: three server errors and one success.
    let summary = gw
        .summary("default/sqrt", "sqrt-predictor-00001", 60)
        .unwrap();
    assert_eq!((summary.server_errors, summary.ok), (3, 1));
}

#[tokio::test]
async fn health_answers_have_bodies_and_v1_lists_models() {
    let gw = gateway(1 << 20);
    let (s, _, v) = send(&gw, get("/v2/health/live")).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"live": true})));
    let (s, _, v) = send(&gw, get("/v2/health/ready")).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"ready": true})));
    let (s, _, v) = send(&gw, get("/v1/models")).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"models": ["iris"]})));
    let (s, _, v) = send(&gw, get("/v2/models/iris/ready")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ready"], true);
    // An unknown version is unknown (404), not unavailable.
    let (s, _, v) = send(&gw, get("/v2/models/iris/versions/nope/ready")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test]
async fn v1_takes_inputs_as_kserve_does() {
    let gw = gateway(1 << 20);
    let rows = json!([[6.3, 3.3, 6.0, 2.5], [5.1, 3.5, 1.4, 0.2]]);
    let pinned = [("x-crossfade-tag", "prev")];
    let (s, _, by_instances) = send(
        &gw,
        infer(
            "/v1/models/iris:predict",
            &json!({"instances": rows}),
            &pinned,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, by_inputs) = send(
        &gw,
        infer("/v1/models/iris:predict", &json!({"inputs": rows}), &pinned),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{by_inputs}");
    assert_eq!(by_inputs, by_instances);
    let (s, _, by_name) = send(
        &gw,
        infer(
            "/v1/models/iris:predict",
            &json!({"inputs": {"X": rows}}),
            &pinned,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{by_name}");
    assert_eq!(by_name, by_instances);
    let (s, _, v) = send(
        &gw,
        infer(
            "/v1/models/iris:predict",
            &json!({"instances": rows, "inputs": rows}),
            &[],
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // :explain is not served, and the hint says what is.
    let (s, _, v) = send(
        &gw,
        infer("/v1/models/iris:explain", &json!({"instances": rows}), &[]),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(error_of(&v).contains("POST /v1/models/iris:predict"), "{v}");
    assert!(!error_of(&v).contains("explain:predict"), "{v}");
}

#[tokio::test]
async fn v2_requests_are_checked_as_the_spec_says() {
    let gw = gateway(1 << 20);
    let path = "/v2/models/iris/versions/iris-predictor-00001/infer";
    let x = json!({"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]});
    // `id` is a string: echoed as it is; any other type is refused.
    let (s, _, v) = send(&gw, infer(path, &json!({"id": "7", "inputs": [x]}), &[])).await;
    assert_eq!((s, &v["id"]), (StatusCode::OK, &json!("7")));
    let (s, _, v) = send(&gw, infer(path, &json!({"id": 7, "inputs": [x]}), &[])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).contains("`id` must be a string"), "{v}");
    // The same input twice.
    let (s, _, v) = send(&gw, infer(path, &json!({"inputs": [x, x]}), &[])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).contains("input X: given twice"), "{v}");
    // Ragged nested data whose count happens to match the shape.
    let ragged = json!({"name": "X", "shape": [2, 4], "datatype": "FP32",
        "data": [[5.1, 3.5, 1.4, 0.2, 6.3, 3.3], [6.0, 2.5]]});
    let (s, _, v) = send(&gw, infer(path, &json!({"inputs": [ragged]}), &[])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        error_of(&v).contains("data[0] has 6 elements where the shape says 4"),
        "{v}"
    );
    // Nested data of the right shape, and flat data, are fine.
    let nested = json!({"name": "X", "shape": [2, 4], "datatype": "FP32",
        "data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]});
    let (s, _, _) = send(&gw, infer(path, &json!({"inputs": [nested]}), &[])).await;
    assert_eq!(s, StatusCode::OK);
    // `outputs: []` asks for every output, as both reference servers answer.
    let (s, _, v) = send(
        &gw,
        infer(path, &json!({"inputs": [x], "outputs": []}), &[]),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["outputs"].as_array().unwrap().len(), 2, "{v}");
}

#[tokio::test]
async fn bytes_are_never_replaced() {
    use runtime::{Tensor, TensorData};
    // BYTES through the binary extension round-trip exactly, including bytes that are not
    // UTF-8; as JSON, text that is not UTF-8 is refused rather than turned into U+FFFD.
    let raw_bytes = vec![vec![0xff, 0xfe, 0x00, 0x41], b"plain".to_vec()];
    let out = [Tensor {
        name: "B".into(),
        shape: vec![2],
        data: TensorData::Bytes(raw_bytes.clone()),
    }];
    let rendered =
        protocol::render_v2("m", "r", None, &out, None, &protocol::BinaryOutputs::All).unwrap();
    let mut expected_bytes = Vec::new();
    for b in &raw_bytes {
        expected_bytes.extend_from_slice(&(b.len() as u32).to_le_bytes());
        expected_bytes.extend_from_slice(b);
    }
    assert_eq!(rendered.binary, expected_bytes);
    let err = protocol::render_v2("m", "r", None, &out, None, &protocol::BinaryOutputs::None)
        .err()
        .unwrap();
    assert!(
        err.0.contains("output B: element 0 is not UTF-8"),
        "{}",
        err.0
    );
}

#[tokio::test]
async fn a_large_batch_is_answered_off_the_async_workers_with_the_same_answer() {
    let gw = gateway(64 << 20);
    // 50,000 flowers: a 1.5 MB body, over the offload threshold.
    let rows: Vec<Value> = (0..50_000)
        .map(|i| json!([5.1 + (i % 7) as f64 * 0.1, 3.5, 1.4, 0.2]))
        .collect();
    let body =
        json!({"inputs": [{"name": "X", "shape": [50_000, 4], "datatype": "FP32", "data": rows}]});
    assert!(body.to_string().len() > OFFLOAD_BYTES);
    let path = "/v2/models/iris/versions/iris-predictor-00001/infer";
    let (s, _, v) = send(&gw, infer(path, &body, &[])).await;
    assert_eq!(s, StatusCode::OK, "{}", error_of(&v));
    assert_eq!(v["outputs"][0]["shape"], json!([50_000]));
    // The same rows one at a time, inline, give the same labels.
    let labels = v["outputs"][0]["data"].as_array().unwrap().clone();
    for i in [0usize, 1, 6, 49_999] {
        let one = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [rows[i]]}]});
        let (_, _, w) = send(&gw, infer(path, &one, &[])).await;
        assert_eq!(w["outputs"][0]["data"][0], labels[i]);
    }
}

#[tokio::test]
async fn a_mirror_route_with_a_header_match_mirrors_only_matching_requests() {
    let gw = Gateway::new(Config::default());
    let mut route = Route::new(
        "models/iris",
        vec![
            revision("iris-predictor-00001", "iris-logreg-v1"),
            revision("iris-predictor-00002", "iris-mlp-v1"),
        ],
        vec![(0, 100)],
    );
    // Argo's `setMirrorRoute: {percentage: 100, match: [{headers: {x-team: {exact: ml}}}]}`.
    route.mirrors = vec![Mirror {
        revision: 1,
        percent: 100,
        matches: vec![("x-team".into(), Match::Exact("ml".into()))],
    }];
    let mut table = RouteTable::default();
    table.insert("iris".into(), route);
    gw.publish(table);
    for team in ["ml", "web", "ml", "ops"] {
        let (s, _, _) = send(
            &gw,
            infer("/v2/models/iris/infer", &iris_body(), &[("x-team", team)]),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    // And requests without the header at all.
    for _ in 0..3 {
        send(&gw, infer("/v2/models/iris/infer", &iris_body(), &[])).await;
    }
    gw.mirrors_idle().await;
    let canary = gw
        .summary("models/iris", "iris-predictor-00002", 60)
        .unwrap();
    assert_eq!(
        canary.mirrored, 2,
        "only the two x-team: ml requests are mirrored"
    );
}
