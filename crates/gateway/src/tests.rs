use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;

fn model(name: &str) -> runtime::OnnxModel {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../fixtures/models/{name}.onnx"));
    runtime::OnnxModel::load(&path).unwrap()
}

fn revision(name: &str, file: &str) -> Arc<Revision> {
    Arc::new(Revision::onnx(name, model(file)))
}

/// iris served by two revisions, 90/10, with tag routing and one header route.
fn gateway(limit: usize) -> Arc<Gateway> {
    gateway_with(Config {
        body_limit: limit,
        ..Config::default()
    })
}

/// [`gateway`] with the given settings.
fn gateway_with(config: Config) -> Arc<Gateway> {
    let gw = Gateway::new(config);
    let mut route = Route::new(
        "default/iris",
        vec![
            revision("iris-predictor-00001", "iris-logreg-v1"),
            revision("iris-predictor-00002", "iris-mlp-v1"),
        ],
        vec![(0, 90), (1, 10)],
    );
    route.tag_routing = true;
    route.latest = Some(1);
    route.prev = Some(0);
    route.header_routes = vec![HeaderRoute {
        matches: vec![("x-team".into(), Match::Exact("ml".into()))],
        revision: 1,
    }];
    let mut table = RouteTable::default();
    table.insert("iris".into(), route);
    gw.publish(table);
    gw
}

/// Sends `req` the way the data plane's server does: inference straight to its handler, the
/// rest through the router.
async fn send(gw: &Arc<Gateway>, req: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let target = parts.uri.path_and_query().unwrap().as_str();
    let resp = server::dispatch(
        gw,
        &gw.router(),
        parts.method.clone(),
        target,
        parts.headers,
        body,
    )
    .await;
    let status = resp.status();
    let rev = resp
        .headers()
        .get(REVISION_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, rev, json)
}

fn infer(path: &str, body: &Value, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::post(path).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.to_string())).unwrap()
}

fn iris_body() -> Value {
    json!({
        "id": "req-42",
        "inputs": [{"name": "X", "shape": [3, 4], "datatype": "FP32",
                    "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.1, 4.4, 1.4], [6.3, 3.3, 6.0, 2.5]]}]
    })
}

#[tokio::test]
async fn v2_infer_with_metadata_and_output_selection() {
    let gw = gateway(1 << 20);
    let (s, rev, v) = send(
        &gw,
        infer(
            "/v2/models/iris/versions/iris-predictor-00001/infer",
            &iris_body(),
            &[],
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(rev.as_deref(), Some("iris-predictor-00001"));
    assert_eq!(v["id"], "req-42");
    assert_eq!(v["model_name"], "iris");
    assert_eq!(v["model_version"], "iris-predictor-00001");
    assert_eq!(v["outputs"][0]["name"], "label");
    assert_eq!(v["outputs"][0]["datatype"], "INT64");
    assert_eq!(v["outputs"][0]["data"], json!([0, 1, 2]));
    assert_eq!(v["outputs"][1]["shape"], json!([3, 3]));

    let mut only_probs = iris_body();
    only_probs["outputs"] = json!([{"name": "probabilities"}]);
    let (s, _, v) = send(&gw, infer("/v2/models/iris/infer", &only_probs, &[])).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(v["outputs"][0]["name"], "probabilities");

    let (s, _, v) = send(
        &gw,
        Request::get("/v2/models/iris").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["inputs"][0],
        json!({"name": "X", "datatype": "FP32", "shape": [-1, 4]})
    );
    assert_eq!(
        v["versions"],
        json!(["iris-predictor-00001", "iris-predictor-00002"])
    );
    let (s, _, _) = send(
        &gw,
        Request::get("/v2/models/iris/ready")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = send(
        &gw,
        Request::get("/v2/health/ready")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, v) = send(&gw, Request::get("/v2").body(Body::empty()).unwrap()).await;
    assert_eq!((s, &v["name"]), (StatusCode::OK, &json!("crossfade")));
}

#[tokio::test]
async fn v1_predict() {
    let gw = gateway(1 << 20);
    let body = json!({"instances": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]});
    let (s, rev, v) = send(
        &gw,
        infer(
            "/v1/models/iris:predict",
            &body,
            &[("x-crossfade-tag", "prev")],
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(rev.as_deref(), Some("iris-predictor-00001"));
    assert_eq!(v, json!({"predictions": [0, 2]}));
    let (s, _, v) = send(
        &gw,
        Request::get("/v1/models/iris").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, json!({"name": "iris", "ready": true}))
    );
    let (s, _, v) = send(
        &gw,
        infer(
            "/v1/models/iris:predict",
            &json!({"instances": [[1, 2], [1, 2, 3]]}),
            &[],
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("instance 1"), "{v}");
}

#[tokio::test]
async fn client_errors_name_the_input() {
    let gw = gateway(2048);
    let cases = [
        (
            json!({"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}),
            "dimension 1",
        ),
        (
            json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]}),
            "datatype INT64 does not match the model's FP32",
        ),
        (
            json!({"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
            "holds 8 values but 4 were given",
        ),
        (
            json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, "a", 3, 4]}]}),
            "data element 1",
        ),
        (
            json!({"inputs": [{"name": "Y", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
            "input Y: the model has no such input",
        ),
        (json!({"inputs": []}), "input X: missing"),
        (json!({"nope": 1}), "`inputs` is missing"),
    ];
    for (body, expected) in cases {
        let (s, _, v) = send(&gw, infer("/v2/models/iris/infer", &body, &[])).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(expected), "{msg} should contain {expected}");
    }
    let req = Request::post("/v2/models/iris/infer")
        .body(Body::from("{oops"))
        .unwrap();
    let (s, _, v) = send(&gw, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("not valid JSON"));
    let (s, _, _) = send(&gw, infer("/v2/models/nope/infer", &iris_body(), &[])).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = send(
        &gw,
        infer(
            "/v2/models/iris/versions/iris-predictor-00009/infer",
            &iris_body(),
            &[],
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_model_failing_on_an_input_is_a_500_not_a_crash() {
    let gw = Gateway::new(Config::default());
    let mut table = RouteTable::default();
    table.insert(
        "fails".into(),
        Route::new(
            "default/fails",
            vec![revision("fails-predictor-00001", "iris-fails")],
            vec![(0, 100)],
        ),
    );
    gw.publish(table);
    let body = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.0, 3.0, 1.0, 0.2]}]});
    let (s, rev, v) = send(&gw, infer("/v2/models/fails/infer", &body, &[])).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert_eq!(rev.as_deref(), Some("fails-predictor-00001"));
    let ok = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 3.0, 1.0, 0.2]}]});
    let (s, _, v) = send(&gw, infer("/v2/models/fails/infer", &ok, &[])).await;
    assert_eq!(
        (s, &v["outputs"][0]["data"]),
        (StatusCode::OK, &json!([0.5]))
    );
}

#[tokio::test]
async fn routing_split_sticky_tags_headers() {
    let gw = gateway(1 << 20);
    // Tags by host and header, header routes, pinned versions.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (
            "/v2/models/iris/infer",
            &[("host", "latest-iris.models.example.com")],
            "iris-predictor-00002",
        ),
        (
            "/v2/models/iris/infer",
            &[("host", "prev-iris.models.example.com:8080")],
            "iris-predictor-00001",
        ),
        (
            "/v2/models/iris/infer",
            &[("x-crossfade-tag", "latest")],
            "iris-predictor-00002",
        ),
        (
            "/v2/models/iris/infer",
            &[("x-team", "ml")],
            "iris-predictor-00002",
        ),
        (
            "/v2/models/iris/versions/iris-predictor-00001/infer",
            &[("x-team", "ml")],
            "iris-predictor-00001",
        ),
    ];
    for (path, headers, want) in cases {
        let (s, rev, _) = send(&gw, infer(path, &iris_body(), headers)).await;
        assert_eq!(
            (s, rev.as_deref()),
            (StatusCode::OK, Some(want)),
            "{headers:?}"
        );
    }
    // Two Host (or tag) headers are rejected, not resolved by header order.
    for dup in [
        [
            ("host", "prev-iris.example.com"),
            ("host", "latest-iris.example.com"),
        ],
        [("x-crossfade-tag", "prev"), ("x-crossfade-tag", "latest")],
    ] {
        let (s, rev, v) = send(&gw, infer("/v2/models/iris/infer", &iris_body(), &dup)).await;
        assert_eq!((s, rev), (StatusCode::BAD_REQUEST, None), "{dup:?}");
        assert!(
            v["error"].as_str().unwrap().contains("more than one"),
            "{v}"
        );
    }
    // The same key always lands on the same revision.
    for key in ["alice", "bob", "carol"] {
        let (_, first, _) = send(
            &gw,
            infer(
                "/v2/models/iris/infer",
                &iris_body(),
                &[("x-crossfade-key", key)],
            ),
        )
        .await;
        for _ in 0..20 {
            let (_, again, _) = send(
                &gw,
                infer(
                    "/v2/models/iris/infer",
                    &iris_body(),
                    &[("x-crossfade-key", key)],
                ),
            )
            .await;
            assert_eq!(again, first, "key {key}");
        }
    }
}

#[test]
fn split_counts() {
    let table = {
        let gw = gateway(1 << 20);
        gw.table()
    };
    let route = &table.models["iris"];
    let no_headers = |_: &str| None;
    // Sticky keys spread by the hash: exactly the buckets below 90 go to the stable revision.
    let mut stable = 0;
    for i in 0..10_000 {
        let key = format!("user-{i}");
        let facts = RequestFacts {
            key: Some(&key),
            ..Default::default()
        };
        let (idx, how) = route.choose("iris", facts, no_headers).unwrap();
        assert_eq!(how, Chosen::Sticky);
        if idx == 0 {
            stable += 1;
        }
        assert_eq!(idx == 0, bucket(&key) < 90);
    }
    assert!((8_800..=9_200).contains(&stable), "{stable}");
    // Random choice: 10,000 draws, 10% ± 1.5% (5 standard deviations).
    let canary = (0..10_000)
        .filter(|_| {
            route
                .choose("iris", RequestFacts::default(), no_headers)
                .unwrap()
                .0
                == 1
        })
        .count();
    assert!((850..=1_150).contains(&canary), "{canary}");
}

#[tokio::test]
async fn binary_tensor_data_extension() {
    // What tritonclient sends by default: JSON header, then raw little-endian tensors.
    let gw = gateway(1 << 20);
    let header = json!({
        "inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32",
                    "parameters": {"binary_data_size": 32}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": true}}, {"name": "probabilities"}]
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    for x in [5.1f32, 3.5, 1.4, 0.2, 6.3, 3.3, 6.0, 2.5] {
        body.extend_from_slice(&x.to_le_bytes());
    }
    let req = Request::post("/v2/models/iris/versions/iris-predictor-00001/infer")
        .header("inference-header-content-length", header.len())
        .body(Body::from(body))
        .unwrap();
    let resp = gw.router().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let json_len: usize = resp.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 16);
    assert!(v["outputs"][0].get("data").is_none());
    assert_eq!(v["outputs"][1]["shape"], json!([2, 3]));
    let labels: Vec<i64> = bytes[json_len..]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(labels, [0, 2]);

    // Too few bytes for the declared size: a 400 naming the input.
    let req = Request::post("/v2/models/iris/infer")
        .header("inference-header-content-length", header.len())
        .body(Body::from(header.clone().into_bytes()))
        .unwrap();
    let (s, _, v) = send(&gw, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("input X: binary_data_size is 32"),
        "{v}"
    );
}

#[tokio::test]
async fn metrics_statistics_and_mirroring() {
    let gw = Gateway::new(Config::default());
    let mut route = Route::new(
        "models/iris",
        vec![
            revision("iris-predictor-00001", "iris-logreg-v1"),
            revision("iris-predictor-00002", "iris-mlp-v1"),
            revision("iris-predictor-00003", "iris-forest-v2"),
        ],
        vec![(0, 100)],
    );
    // Every split request is mirrored to revision 2.
    route.mirrors = vec![Mirror {
        revision: 1,
        percent: 100,
        matches: Vec::new(),
    }];
    let mut table = RouteTable::default();
    table.insert("iris".into(), route);
    gw.publish(table);

    for _ in 0..20 {
        let (s, rev, _) = send(&gw, infer("/v2/models/iris/infer", &iris_body(), &[])).await;
        assert_eq!(
            (s, rev.as_deref()),
            (StatusCode::OK, Some("iris-predictor-00001"))
        );
    }
    let bad =
        json!({"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    let (s, _, _) = send(&gw, infer("/v2/models/iris/infer", &bad, &[])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A pinned request is never mirrored.
    send(
        &gw,
        infer(
            "/v2/models/iris/versions/iris-predictor-00003/infer",
            &iris_body(),
            &[],
        ),
    )
    .await;
    gw.mirrors_idle().await;

    let primary = gw
        .summary("models/iris", "iris-predictor-00001", 60)
        .unwrap();
    assert_eq!(
        (primary.ok, primary.client_errors, primary.server_errors),
        (20, 1, 0)
    );
    assert_eq!(primary.success_rate(), Some(1.0));
    assert!(primary.p99.unwrap() > 0.0);
    let canary = gw
        .summary("models/iris", "iris-predictor-00002", 60)
        .unwrap();
    // Mirrored answers are not requests of the canary; they are comparisons.
    assert_eq!(canary.requests, 0);
    assert_eq!(canary.mirrored, 20);
    // The MLP and the logistic regression agree on these three flowers.
    assert_eq!(canary.mirror_agreement(), Some(1.0));
    assert!(canary.mean_distance.unwrap() > 0.0);
    // Both revisions' predictions on the same requests, for the drift gate: one class and one
    // top score each per row (three flowers a request), and the same classes (they agree).
    let d = &canary.drift;
    assert_eq!(d.classes.iter().sum::<u64>(), 60);
    assert_eq!(d.stable_scores.iter().sum::<u64>(), 60);
    assert_eq!(d.scores.iter().sum::<u64>(), 60);
    assert_eq!(d.classes, d.stable_classes);

    let text = gw.metrics_text();
    for line in [
        r#"crossfade_requests_total{service="models/iris",revision="iris-predictor-00001",outcome="ok"} 20"#,
        r#"crossfade_requests_total{service="models/iris",revision="iris-predictor-00001",outcome="client_error"} 1"#,
        r#"crossfade_traffic_weight_percent{service="models/iris",revision="iris-predictor-00001"} 100"#,
        r#"crossfade_traffic_weight_percent{service="models/iris",revision="iris-predictor-00002"} 0"#,
        r#"crossfade_mirrored_requests_total{service="models/iris",primary="iris-predictor-00001",mirror="iris-predictor-00002",outcome="agree"} 20"#,
        r#"crossfade_in_flight_requests{service="models/iris",revision="iris-predictor-00001"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(
        text.contains("crossfade_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[test]
fn comparing_answers() {
    let t = |name: &str, shape: Vec<usize>, data: runtime::TensorData| runtime::Tensor {
        name: name.into(),
        shape,
        data,
    };
    let a = [
        t("label", vec![2], runtime::TensorData::I64(vec![0, 2])),
        t(
            "probabilities",
            vec![2, 2],
            runtime::TensorData::F32(vec![0.9, 0.1, 0.2, 0.8]),
        ),
    ];
    let same_class = [
        t("label", vec![2], runtime::TensorData::I64(vec![0, 2])),
        t(
            "probabilities",
            vec![2, 2],
            runtime::TensorData::F32(vec![0.6, 0.4, 0.3, 0.7]),
        ),
    ];
    let (agreed, distance) = compare(&a, &same_class);
    assert!(agreed);
    assert!((distance - 0.3).abs() < 1e-6, "{distance}");
    let other_class = [
        t("label", vec![2], runtime::TensorData::I64(vec![1, 2])),
        t(
            "probabilities",
            vec![2, 2],
            runtime::TensorData::F32(vec![0.4, 0.6, 0.2, 0.8]),
        ),
    ];
    assert!(!compare(&a, &other_class).0);
    // Without a label, the arg-max of the scores decides.
    let scores = |v: Vec<f32>| [t("probabilities", vec![2, 2], runtime::TensorData::F32(v))];
    assert!(
        compare(
            &scores(vec![0.9, 0.1, 0.2, 0.8]),
            &scores(vec![0.7, 0.3, 0.4, 0.6])
        )
        .0
    );
    assert!(
        !compare(
            &scores(vec![0.9, 0.1, 0.2, 0.8]),
            &scores(vec![0.3, 0.7, 0.4, 0.6])
        )
        .0
    );
    // Different shapes never agree.
    assert_eq!(
        compare(
            &a[..1],
            &[t("label", vec![1], runtime::TensorData::I64(vec![0]))]
        ),
        (false, f64::INFINITY)
    );
}

/// A model server stand-in on port 0 that answers every request with `name`.
async fn upstream_server(name: &'static str) -> String {
    let app = axum::Router::new()
        .route(
            "/v1/models/{model}",
            axum::routing::post(
                move |axum::extract::Path(m): axum::extract::Path<String>| async move {
                    axum::Json(json!({"predictions": [name], "path": m}))
                },
            ),
        )
        .route(
            "/v2/models/{model}/infer",
            axum::routing::post(move || async move { (StatusCode::INTERNAL_SERVER_ERROR, name) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_to_model_server_processes() {
    let stable = upstream_server("stable").await;
    let canary = upstream_server("canary").await;
    let gw = Gateway::new(Config::default());
    let route = Route::new(
        "models/iris",
        vec![
            Arc::new(Revision::proxy(
                "iris-predictor-00001",
                Upstream::new(stable),
            )),
            Arc::new(Revision::proxy(
                "iris-predictor-00002",
                Upstream::new(canary),
            )),
        ],
        vec![(0, 90), (1, 10)],
    );
    let mut table = RouteTable::default();
    table.insert("iris".into(), route);
    gw.publish(table);

    let body = json!({"instances": [[5.1, 3.5, 1.4, 0.2]]});
    let mut canary_answers = 0;
    for _ in 0..2000 {
        let (s, rev, v) = send(&gw, infer("/v1/models/iris:predict", &body, &[])).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let answer = v["predictions"][0].as_str().unwrap();
        assert_eq!(v["path"], "iris:predict");
        // The header names the revision whose server answered.
        match (rev.as_deref(), answer) {
            (Some("iris-predictor-00001"), "stable") => {}
            (Some("iris-predictor-00002"), "canary") => canary_answers += 1,
            other => panic!("{other:?}"),
        }
    }
    // 10% of 2000, within five standard deviations (sd = 13.4).
    assert!((133..=267).contains(&canary_answers), "{canary_answers}");
    // The upstream's status comes through, and counts as the revision's error.
    let (s, _, _) = send(
        &gw,
        infer(
            "/v2/models/iris/versions/iris-predictor-00002/infer",
            &iris_body(),
            &[],
        ),
    )
    .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    // Pinned by the client, so not judged: the window counts it apart; the metrics count it.
    let summary = gw
        .summary("models/iris", "iris-predictor-00002", 60)
        .unwrap();
    assert_eq!((summary.server_errors, summary.pinned), (0, 1));
    assert!(gw.metrics_text().contains(
        r#"crossfade_requests_total{service="models/iris",revision="iris-predictor-00002",outcome="server_error"} 1"#
    ));
    // A server that is gone is a 502 naming it.
    let gone = Gateway::new(Config::default());
    let mut table = RouteTable::default();
    table.insert(
        "iris".into(),
        Route::new(
            "models/iris",
            vec![Arc::new(Revision::proxy(
                "r1",
                Upstream::new("127.0.0.1:1"),
            ))],
            vec![(0, 100)],
        ),
    );
    gone.publish(table);
    let (s, _, v) = send(&gone, infer("/v1/models/iris:predict", &body, &[])).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(v["error"].as_str().unwrap().contains("127.0.0.1:1"), "{v}");
}

// === The server, over TCP ===

/// A running data plane on port 0 and the handle that stops it.
struct Served {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn serve(gw: Arc<Gateway>) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        gw.serve(listener, async move {
            let _ = stopped.await;
        })
        .await
    });
    Served { addr, stop, done }
}

/// One answer read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Reads `n` answers (each with a content-length, or none for HEAD when `head`), then
/// whether the server closed the connection after them.
async fn answers(sock: &mut tokio::net::TcpStream, n: usize, head: bool) -> (Vec<Answer>, bool) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut eof = false;
    while out.len() < n {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = resp.parse(&buf) {
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let status = resp.code.unwrap();
            let cl: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let cl = if head || status == 100 { 0 } else { cl };
            if buf.len() >= len + cl {
                let body = buf[len..len + cl].to_vec();
                buf.drain(..len + cl);
                if status != 100 {
                    out.push(Answer {
                        status,
                        headers,
                        body,
                    });
                }
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        let got = sock.read(&mut chunk).await.unwrap_or(0);
        assert!(got > 0, "closed after {} answers: {out:?}", out.len());
        buf.extend_from_slice(&chunk[..got]);
    }
    assert!(
        buf.is_empty(),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&buf)
    );
    let mut chunk = [0u8; 1];
    // Closed connections read 0 at once; open ones would wait, so ask only when expected.
    if out.last().and_then(|a| a.header("connection")) == Some("close") {
        eof = sock.read(&mut chunk).await.unwrap_or(0) == 0;
    }
    (out, eof)
}

async fn connect(served: &Served) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(served.addr).await.unwrap()
}

async fn write(sock: &mut tokio::net::TcpStream, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    sock.write_all(bytes).await.unwrap();
}

fn post(path: &str, extra: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let served = serve(gateway(1 << 20)).await;
    let mut sock = connect(&served).await;
    let body = iris_body().to_string();
    let pinned = "/v2/models/iris/versions/iris-predictor-00002/infer";
    // Three requests in one write: inference (straight to its handler), health and metadata
    // (through the router), then a V1 predict.
    let mut bytes = post(pinned, "", &body);
    bytes.push_str("GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n");
    bytes.push_str("GET /v2/models/iris HTTP/1.1\r\nhost: x\r\n\r\n");
    bytes.push_str(&post(
        "/v1/models/iris:predict",
        "x-crossfade-tag: prev\r\n",
        r#"{"instances": [[6.3, 3.3, 6.0, 2.5]]}"#,
    ));
    write(&mut sock, bytes.as_bytes()).await;
    let (got, _) = answers(&mut sock, 4, false).await;
    assert_eq!(
        got.iter().map(|a| a.status).collect::<Vec<_>>(),
        [200, 200, 200, 200]
    );
    assert_eq!(got[0].header(REVISION_HEADER), Some("iris-predictor-00002"));
    assert_eq!(got[0].json()["id"], "req-42");
    assert_eq!(got[2].json()["name"], "iris");
    assert_eq!(got[3].header(REVISION_HEADER), Some("iris-predictor-00001"));
    assert_eq!(got[3].json()["predictions"], json!([2]));
    assert!(
        got.iter()
            .all(|a| a.header("date").is_some_and(|d| d.ends_with(" GMT")))
    );
    // The same connection serves on.
    write(&mut sock, post(pinned, "", &body).as_bytes()).await;
    let (got, _) = answers(&mut sock, 1, false).await;
    assert_eq!(got[0].status, 200);
}

#[tokio::test]
async fn chunked_bodies_and_expect_continue() {
    let served = serve(gateway(1 << 20)).await;
    let mut sock = connect(&served).await;
    let body = iris_body().to_string();
    let (a, b) = body.split_at(17);
    let chunked = format!(
        "POST /v2/models/iris/versions/iris-predictor-00001/infer HTTP/1.1\r\nhost: x\r\n\
         transfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n\
         {:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\ntrailer: t\r\n\r\n",
        a.len(),
        b.len()
    );
    write(&mut sock, chunked.as_bytes()).await;
    let (got, _) = answers(&mut sock, 1, false).await;
    assert_eq!(
        got[0].status,
        200,
        "{:?}",
        String::from_utf8_lossy(&got[0].body)
    );
    let by_length = send(
        &gateway(1 << 20),
        infer(
            "/v2/models/iris/versions/iris-predictor-00001/infer",
            &iris_body(),
            &[],
        ),
    )
    .await;
    assert_eq!(got[0].json(), by_length.2);
}

#[tokio::test]
async fn bad_framing_and_oversized_bodies_are_refused_and_the_connection_closed() {
    let served = serve(gateway(1000)).await;
    let cases: [(&str, u16, &str); 6] = [
        // Over the limit, by length: refused before the body is read.
        (
            "POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n",
            413,
            "larger than the limit",
        ),
        // Over the limit, chunked.
        (
            "POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n7d0\r\n",
            413,
            "larger than the limit",
        ),
        (
            "POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
            400,
            "both content-length and transfer-encoding",
        ),
        (
            "POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
            400,
            "two different content-length",
        ),
        (
            "POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            400,
            "hexadecimal",
        ),
        ("NOT HTTP\r\n\r\n", 400, "not an HTTP/1.1 request"),
    ];
    for (request, status, message) in cases {
        let mut sock = connect(&served).await;
        let filler = "a".repeat(2000);
        write(&mut sock, request.as_bytes()).await;
        if status == 413 {
            // The body that follows is never read.
            let _ = tokio::io::AsyncWriteExt::write_all(&mut sock, filler.as_bytes()).await;
        }
        let (got, closed) = answers(&mut sock, 1, false).await;
        assert_eq!(got[0].status, status, "{request}");
        let error = got[0].json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(message), "{request}: {error}");
        assert!(closed, "{request}");
    }
    // Too many headers.
    let mut sock = connect(&served).await;
    let mut many = String::from("GET /v2 HTTP/1.1\r\nhost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    write(&mut sock, many.as_bytes()).await;
    let (got, closed) = answers(&mut sock, 1, false).await;
    assert_eq!((got[0].status, closed), (431, true));
}

#[tokio::test]
async fn http_1_0_head_requests_and_connection_close() {
    let served = serve(gateway(1 << 20)).await;
    // HTTP/1.0 without keep-alive: one answer, then closed.
    let mut sock = connect(&served).await;
    write(&mut sock, b"GET /v2/health/live HTTP/1.0\r\n\r\n").await;
    let (got, closed) = answers(&mut sock, 1, false).await;
    assert_eq!((got[0].status, closed), (200, true));
    // HTTP/1.0 with keep-alive: kept, and said so.
    let mut sock = connect(&served).await;
    write(
        &mut sock,
        b"GET /v2 HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
    )
    .await;
    let (got, _) = answers(&mut sock, 1, false).await;
    assert_eq!(got[0].header("connection"), Some("keep-alive"));
    // HEAD: the length of the body, not the body.
    write(
        &mut sock,
        b"HEAD /v2 HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
    )
    .await;
    let (got, _) = answers(&mut sock, 1, true).await;
    assert!(got[0].body.is_empty());
    assert!(
        got[0]
            .header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
    // `connection: close` from the client.
    let mut sock = connect(&served).await;
    write(
        &mut sock,
        b"GET /v2 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let (got, closed) = answers(&mut sock, 1, false).await;
    assert_eq!((got[0].status, closed), (200, true));
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes_started_requests() {
    use tokio::io::AsyncReadExt;
    let served = serve(gateway(1 << 20)).await;
    let mut idle = connect(&served).await;
    let mut busy = connect(&served).await;
    // A request whose body has not arrived when the shutdown starts: the server has read
    // its head once it says `100 Continue`.
    let body = iris_body().to_string();
    let request = post("/v2/models/iris/infer", "expect: 100-continue\r\n", &body);
    let (head, rest) = request.split_at(request.len() - body.len());
    write(&mut busy, head.as_bytes()).await;
    let mut interim = [0u8; 25];
    busy.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    // The idle connection is known to the server once it has answered on it.
    write(
        &mut idle,
        b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    answers(&mut idle, 1, false).await;
    served.stop.send(()).unwrap();
    // The idle connection is closed by the server.
    let mut byte = [0u8; 1];
    assert_eq!(idle.read(&mut byte).await.unwrap(), 0);
    // The started request completes, answered with `connection: close`.
    write(&mut busy, rest.as_bytes()).await;
    let (got, closed) = answers(&mut busy, 1, false).await;
    assert_eq!((got[0].status, closed), (200, true));
    served.done.await.unwrap().unwrap();
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(served.addr).await.is_err());
}

mod conformance;
mod hardening;

/// Only the requests the split sends are judged: a client that pins the canary by name or by
/// tag cannot sway its numbers. Those requests still count in the metrics, and in the window
/// apart.
#[tokio::test]
async fn requests_a_client_pins_are_counted_apart_from_the_split() {
    let gw = Gateway::new(Config::default());
    let mut route = Route::new(
        "models/iris",
        vec![
            revision("iris-predictor-00001", "iris-logreg-v1"),
            revision("iris-predictor-00002", "iris-mlp-v1"),
        ],
        vec![(0, 100)],
    );
    route.tag_routing = true;
    route.latest = Some(1);
    let mut table = RouteTable::default();
    table.insert("iris".into(), route);
    gw.publish(table);
    for _ in 0..10 {
        send(&gw, infer("/v2/models/iris/infer", &iris_body(), &[])).await;
    }
    for _ in 0..3 {
        let (s, rev, _) = send(
            &gw,
            infer(
                "/v2/models/iris/versions/iris-predictor-00002/infer",
                &iris_body(),
                &[],
            ),
        )
        .await;
        assert_eq!(
            (s, rev.as_deref()),
            (StatusCode::OK, Some("iris-predictor-00002"))
        );
    }
    let (s, rev, _) = send(
        &gw,
        infer(
            "/v2/models/iris/infer",
            &iris_body(),
            &[("x-crossfade-tag", "latest")],
        ),
    )
    .await;
    assert_eq!(
        (s, rev.as_deref()),
        (StatusCode::OK, Some("iris-predictor-00002"))
    );
    let split = gw
        .summary("models/iris", "iris-predictor-00001", 60)
        .unwrap();
    assert_eq!((split.requests, split.pinned), (10, 0));
    let pinned = gw
        .summary("models/iris", "iris-predictor-00002", 60)
        .unwrap();
    assert_eq!((pinned.requests, pinned.pinned), (0, 4));
    assert!(gw.metrics_text().contains(
        r#"crossfade_requests_total{service="models/iris",revision="iris-predictor-00002",outcome="ok"} 4"#
    ));
}

/// A canary that refuses what its stable revision takes (it expects five features where
/// clients send four): the split's requests get the stable revision's answer, and each is
/// the canary's failure in the window the judge reads; a request both refuse is the client's.
#[tokio::test]
async fn what_a_canary_refuses_and_its_stable_takes_is_the_canary_s_failure() {
    let gw = Gateway::new(Config::default());
    let mut route = Route::new(
        "models/iris",
        vec![
            revision("iris-predictor-00001", "iris-logreg-v1"),
            revision("iris-predictor-00002", "iris-five-features"),
        ],
        vec![(1, 100)],
    );
    route.stable = Some(0);
    let mut table = RouteTable::default();
    table.insert("iris".into(), route);
    gw.publish(table);
    for _ in 0..5 {
        let (s, rev, v) = send(&gw, infer("/v2/models/iris/infer", &iris_body(), &[])).await;
        assert_eq!(
            (s, rev.as_deref()),
            (StatusCode::OK, Some("iris-predictor-00001")),
            "{v}"
        );
    }
    let v1 = json!({"instances": [[5.1, 3.5, 1.4, 0.2]]});
    let (s, rev, _) = send(&gw, infer("/v1/models/iris:predict", &v1, &[])).await;
    assert_eq!(
        (s, rev.as_deref()),
        (StatusCode::OK, Some("iris-predictor-00001"))
    );
    // Wrong for both: the client's error, answered by the canary.
    let bad =
        json!({"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    let (s, rev, _) = send(&gw, infer("/v2/models/iris/infer", &bad, &[])).await;
    assert_eq!(
        (s, rev.as_deref()),
        (StatusCode::BAD_REQUEST, Some("iris-predictor-00002"))
    );
    // Pinned to the canary by the client: its own answer, not judged.
    let (s, _, _) = send(
        &gw,
        infer(
            "/v2/models/iris/versions/iris-predictor-00002/infer",
            &iris_body(),
            &[],
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let canary = gw
        .summary("models/iris", "iris-predictor-00002", 60)
        .unwrap();
    assert_eq!(
        (canary.server_errors, canary.client_errors, canary.pinned),
        (6, 1, 1)
    );
}

/// Requests captured from the split replayed to a canary at 0%: compared with stable's answers
/// like mirrored ones, counted in both windows as replayed, never a client's.
#[tokio::test]
async fn captured_requests_are_replayed_against_the_canary_and_stable() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::new(Config::default());
    assert_eq!(
        gw.replay("default/iris", "iris-predictor-00002", 10, 1)
            .await,
        Replay::Nothing("request capture is off (crossfade up --capture-requests)".into())
    );
    gw.capture(CaptureConfig {
        dir: dir.path().join("capture"),
        max_bytes: 1 << 20,
        retention: std::time::Duration::from_secs(3600),
    })
    .unwrap();
    let mut route = Route::new(
        "default/iris",
        vec![
            revision("iris-predictor-00001", "iris-logreg-v1"),
            revision("iris-predictor-00002", "iris-fails-some"),
        ],
        vec![(0, 100)],
    );
    route.stable = Some(0);
    let mut table = RouteTable::default();
    table.insert("iris".into(), route);
    gw.publish(table);

    // Small sepals the canary takes, large ones it fails on (its table has three entries).
    let small = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                                   "data": [2.0, 3.5, 1.4, 0.2]}]});
    let large = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                                   "data": [6.7, 3.1, 4.4, 1.4]}]});
    for body in std::iter::repeat_n(&small, 6).chain(std::iter::repeat_n(&large, 4)) {
        let (s, _, _) = send(&gw, infer("/v2/models/iris/infer", body, &[])).await;
        assert_eq!(s, StatusCode::OK);
    }
    for _ in 0..2 {
        let (s, _, _) = send(
            &gw,
            infer(
                "/v1/models/iris:predict",
                &json!({"instances": [[2.0, 3.0, 1.0, 0.5]]}),
                &[],
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    // Neither a refused request nor one the client pinned is captured.
    let bad =
        json!({"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    assert_eq!(
        send(&gw, infer("/v2/models/iris/infer", &bad, &[])).await.0,
        StatusCode::BAD_REQUEST
    );
    let pinned = "/v2/models/iris/versions/iris-predictor-00001/infer";
    assert_eq!(
        send(&gw, infer(pinned, &small, &[])).await.0,
        StatusCode::OK
    );
    gw.capture_sync();

    assert_eq!(
        gw.replay("default/iris", "iris-predictor-00001", 100, 1)
            .await,
        Replay::Nothing("no stable revision to compare the canary with".into())
    );
    assert_eq!(
        gw.replay("default/iris", "iris-predictor-00002", 100, 1)
            .await,
        Replay::Started(12)
    );
    gw.mirrors_idle().await;
    let canary = gw
        .summary("default/iris", "iris-predictor-00002", 60)
        .unwrap();
    assert_eq!(
        (
            canary.replayed,
            canary.ok,
            canary.server_errors,
            canary.client_errors
        ),
        (12, 8, 4, 0),
        "{canary:?}"
    );
    assert_eq!((canary.mirrored, canary.agreed), (12, 8));
    assert_eq!(canary.drift.classes.iter().sum::<u64>(), 8);
    let stable = gw
        .summary("default/iris", "iris-predictor-00001", 60)
        .unwrap();
    // Its 12 live requests, the refused one and the 12 replayed; the pinned one apart.
    assert_eq!(
        (
            stable.replayed,
            stable.ok,
            stable.client_errors,
            stable.pinned
        ),
        (12, 24, 1, 1)
    );
    let text = gw.metrics_text();
    for line in [
        r#"crossfade_replayed_requests_total{service="default/iris",revision="iris-predictor-00002",outcome="server_error"} 4"#,
        r#"crossfade_replayed_requests_total{service="default/iris",revision="iris-predictor-00001",outcome="ok"} 12"#,
        r#"crossfade_requests_total{service="default/iris",revision="iris-predictor-00002",outcome="ok"} 0"#,
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    // Each captured request once per run.
    assert_eq!(
        gw.replay("default/iris", "iris-predictor-00002", 100, 1)
            .await,
        Replay::Nothing("no captured request left to replay within the retention".into())
    );
    // Another run: newest first and bounded by the count asked for.
    assert_eq!(
        gw.replay("default/iris", "iris-predictor-00002", 2, 2)
            .await,
        Replay::Started(2)
    );
    gw.mirrors_idle().await;
    let canary = gw
        .summary("default/iris", "iris-predictor-00002", 60)
        .unwrap();
    // The two newest were the V1 requests, which the canary answers.
    assert_eq!((canary.replayed, canary.ok), (14, 10));
}
