use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

/// A backend that records what the API asked of it.
#[derive(Default)]
struct Recorder {
    triggers: Mutex<Vec<String>>,
    secret: Option<Vec<u8>>,
}

impl Backend for Recorder {
    fn status(&self) -> dto::Status {
        dto::Status {
            source: dto::SourceStatus {
                repo: "file:///srv/git/models".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }
    fn history(&self, service: Option<&str>, limit: usize) -> Result<Vec<dto::SyncEntry>, String> {
        Err(format!("history of {service:?} limit {limit}"))
    }
    fn audit(
        &self,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Vec<dto::AuditEntry>, String> {
        Err(format!("audit before {before:?} limit {limit:?}"))
    }
    fn verify_audit(&self) -> Result<dto::AuditVerify, String> {
        Ok(dto::AuditVerify {
            ok: true,
            entries: 0,
            broken_at: None,
            reason: None,
        })
    }
    fn sync_now(&self, trigger: Trigger) -> BoxFuture<Vec<dto::SyncResult>> {
        let why = match trigger {
            Trigger::Manual => "requested through the API".to_owned(),
            Trigger::Refresh => "refresh".to_owned(),
            Trigger::Webhook(w) => w,
            Trigger::Poll => "poll".to_owned(),
        };
        self.triggers.lock().unwrap().push(why.clone());
        Box::pin(async move {
            vec![dto::SyncResult {
                application: "models".into(),
                outcome: dto::SyncOutcome::Applied,
                commit: Some("abc".into()),
                message: Some(why),
            }]
        })
    }
    fn set_traffic(
        &self,
        namespace: &str,
        name: &str,
        splits: &std::collections::BTreeMap<String, u8>,
    ) -> BoxFuture<Result<(), String>> {
        let result = if splits.values().map(|p| u32::from(*p)).sum::<u32>() == 100 {
            self.triggers
                .lock()
                .unwrap()
                .push(format!("traffic {namespace}/{name}"));
            Ok(())
        } else {
            Err("the percents must sum to 100".into())
        };
        Box::pin(async move { result })
    }
    fn rollouts(&self) -> Vec<dto::Rollout> {
        vec![dto::Rollout {
            name: "iris".into(),
            namespace: "models".into(),
            service: "models/iris".into(),
            phase: "Paused".into(),
            ..Default::default()
        }]
    }
    fn rollout_command(
        &self,
        namespace: Option<&str>,
        name: &str,
        action: RolloutCommand,
        body: &dto::RolloutAction,
    ) -> BoxFuture<Result<dto::Rollout, CommandError>> {
        self.triggers.lock().unwrap().push(format!(
            "{action:?} {namespace:?}/{name} full={} reason={:?}",
            body.full, body.reason
        ));
        let result = if action == RolloutCommand::Retry {
            Err(CommandError::Rejected("the rollout is not aborted".into()))
        } else {
            Ok(self.rollouts().remove(0))
        };
        Box::pin(async move { result })
    }
    fn admin_token(&self) -> &str {
        "s3cret-token"
    }
    fn webhook_secret(&self) -> Option<&[u8]> {
        self.secret.as_deref()
    }
}

async fn call(backend: &Arc<Recorder>, req: Request<Body>) -> (StatusCode, String) {
    let router = router(Arc::clone(backend) as Arc<dyn Backend>);
    let resp = router.oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn post(uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut b = Request::post(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn reads_are_open() {
    let b = Arc::new(Recorder::default());
    let (s, body) = call(
        &b,
        Request::get("/api/v1/status").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["source"]["repo"], "file:///srv/git/models");
    assert_eq!(v["source"]["lastSyncAt"], serde_json::Value::Null);
    let (s, body) = call(
        &b,
        Request::get("/api/v1/history?service=default/iris&limit=3")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body.contains(r#"history of Some(\"default/iris\") limit 3"#),
        "{body}"
    );
    let (s, _) = call(&b, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sync_needs_the_token() {
    let b = Arc::new(Recorder::default());
    let (s, body) = call(&b, post("/api/v1/sync", &[], "")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body.contains("Bearer"), "{body}");
    let (s, _) = call(
        &b,
        post("/api/v1/sync", &[("authorization", "Bearer nope")], ""),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(b.triggers.lock().unwrap().is_empty());
    let auth = [("authorization", "Bearer s3cret-token")];
    let (s, body) = call(&b, post("/api/v1/sync", &auth, "")).await;
    assert_eq!(s, StatusCode::OK);
    let results: Vec<dto::SyncResult> = serde_json::from_str(&body).unwrap();
    assert_eq!(results[0].outcome, dto::SyncOutcome::Applied);
    let (s, _) = call(&b, post("/api/v1/sync?wait=false", &auth, "")).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(
        *b.triggers.lock().unwrap(),
        ["requested through the API", "requested through the API"]
    );
}

#[tokio::test]
async fn webhooks_authenticate_by_hmac() {
    let off = Arc::new(Recorder::default());
    let (s, _) = call(&off, post("/api/v1/webhook/git", &[], "{}")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let b = Arc::new(Recorder {
        secret: Some(b"hook-secret".to_vec()),
        ..Default::default()
    });
    let body = r#"{"ref":"refs/heads/main","after":"abc"}"#;
    let good = format!(
        "sha256={}",
        source::webhook::sign(b"hook-secret", body.as_bytes())
    );
    let bad = format!(
        "sha256={}",
        source::webhook::sign(b"other", body.as_bytes())
    );

    let (s, _) = call(&b, post("/api/v1/webhook/git", &[], body)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(
        &b,
        post(
            "/api/v1/webhook/git",
            &[("x-hub-signature-256", &bad)],
            body,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(b.triggers.lock().unwrap().is_empty());

    let (s, resp) = call(
        &b,
        post(
            "/api/v1/webhook/git",
            &[("x-hub-signature-256", &good)],
            body,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(
        *b.triggers.lock().unwrap(),
        ["GitHub webhook for refs/heads/main"]
    );

    let junk = "{not json";
    let signed = format!(
        "sha256={}",
        source::webhook::sign(b"hook-secret", junk.as_bytes())
    );
    let (s, resp) = call(
        &b,
        post(
            "/api/v1/webhook/git",
            &[("x-hub-signature-256", &signed)],
            junk,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(resp.contains("not a JSON object"), "{resp}");
    let (s, _) = call(
        &b,
        post(
            "/api/v1/webhook/git",
            &[("x-gitlab-token", "hook-secret")],
            "{}",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
}

#[test]
fn rfc3339() {
    assert_eq!(dto::rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(
        dto::rfc3339_millis(1_709_164_800_123),
        "2024-02-29T00:00:00.123Z"
    );
    assert_eq!(
        dto::rfc3339_millis(1_795_696_415_000),
        "2026-11-26T12:33:35.000Z"
    );
}

#[tokio::test]
async fn traffic_overrides_need_the_token_and_a_valid_split() {
    let b = Arc::new(Recorder::default());
    let path = "/api/v1/services/default/iris/traffic";
    let body = r#"{"splits": {"iris-predictor-00001": 100}}"#;
    let (s, _) = call(&b, post(path, &[], body)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let auth = [("authorization", "Bearer s3cret-token")];
    let (s, _) = call(&b, post(path, &auth, body)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(*b.triggers.lock().unwrap(), ["traffic default/iris"]);
    let (s, resp) = call(&b, post(path, &auth, r#"{"splits": {"a": 50}}"#)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(resp.contains("sum to 100"), "{resp}");
    let (s, resp) = call(&b, post(path, &auth, r#"{"nope": 1}"#)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(resp.contains("expected"), "{resp}");
}

#[tokio::test]
async fn rollouts_read_openly_and_commands_need_the_token() {
    let b = Arc::new(Recorder::default());
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let (s, body) = call(&b, get("/api/v1/rollouts")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("\"currentStepIndex\""), "{body}");
    let (s, _) = call(&b, get("/api/v1/rollouts/iris?namespace=models")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&b, get("/api/v1/rollouts/nope")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&b, post("/api/v1/rollouts/iris/promote", &[], "")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let auth = [("authorization", "Bearer s3cret-token")];
    let (s, _) = call(
        &b,
        post(
            "/api/v1/rollouts/iris/promote",
            &auth,
            r#"{"full": true, "reason": "looks good"}"#,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = call(&b, post("/api/v1/rollouts/iris/retry", &auth, "")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(body.contains("not aborted"), "{body}");
    let (s, _) = call(
        &b,
        post("/api/v1/rollouts/iris/abort", &auth, r#"{"full": true}"#),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&b, post("/api/v1/rollouts/iris/explode", &auth, "")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        b.triggers.lock().unwrap().clone(),
        vec![
            "Promote None/iris full=true reason=Some(\"looks good\")".to_owned(),
            "Retry None/iris full=false reason=None".to_owned()
        ]
    );
}

#[tokio::test]
async fn the_audit_log_is_read_a_page_at_a_time() {
    let b = Arc::new(Recorder::default());
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let (_, body) = call(&b, get("/api/v1/audit?limit=50&before=120")).await;
    assert!(
        body.contains("audit before Some(120) limit Some(50)"),
        "{body}"
    );
    let (_, body) = call(&b, get("/api/v1/audit")).await;
    assert!(body.contains("audit before None limit None"), "{body}");
}

#[tokio::test]
async fn other_hosts_are_refused_and_the_dashboard_cannot_be_framed() {
    let b = Arc::new(Recorder::default());
    let with_host = |host: &str| {
        Request::get("/api/v1/status")
            .header("host", host)
            .body(Body::empty())
            .unwrap()
    };
    // A page on a name that resolves to this machine (DNS rebinding) is refused.
    let (s, body) = call(&b, with_host("attacker.example:8081")).await;
    assert_eq!(s, StatusCode::MISDIRECTED_REQUEST);
    assert!(body.contains("--admin-host attacker.example"), "{body}");
    for ok in [
        "127.0.0.1:8081",
        "localhost:8081",
        "[::1]:8081",
        "10.0.0.7",
        "app.localhost",
    ] {
        assert_eq!(call(&b, with_host(ok)).await.0, StatusCode::OK, "{ok}");
    }
    assert!(!host_allowed(Some("[::1"), &[]));
    assert!(host_allowed(
        Some("crossfade.internal:8081"),
        &["crossfade.internal".into()]
    ));
    // The dashboard: a CSP naming its one script by hash, no framing, no sniffing.
    let router = router(Arc::clone(&b) as Arc<dyn Backend>);
    let resp = router
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let h = resp.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    // The hash is that of the page's script (checked against an independent base64).
    use sha2::Digest;
    let page = include_str!("dashboard.html");
    let script = page
        .split_once("<script>")
        .unwrap()
        .1
        .split_once("</script>")
        .unwrap()
        .0;
    let digest = sha2::Sha256::digest(script.as_bytes());
    assert_eq!(base64(&digest).len(), 44);
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(b"fooba"), "Zm9vYmE=");
    assert_eq!(base64(b"foob"), "Zm9vYg==");
}

#[tokio::test]
async fn background_reads_answer_and_a_panic_is_none() {
    assert_eq!(crate::in_background(|| 6 * 7).await, Some(42));
    let panicked: Option<u8> = crate::in_background(|| panic!("a read that fails")).await;
    assert_eq!(panicked, None);
    // More at once than may run: they take turns, and all answer.
    let many: Vec<_> = (0..3 * crate::BACKGROUND)
        .map(|i| tokio::spawn(crate::in_background(move || i)))
        .collect();
    let mut answers = Vec::new();
    for m in many {
        answers.push(m.await.unwrap().unwrap());
    }
    assert_eq!(answers, (0..3 * crate::BACKGROUND).collect::<Vec<_>>());
}
