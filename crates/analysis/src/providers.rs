//! Providers that take readings over the network: a Prometheus server's HTTP API and any web
//! endpoint answering JSON. Every failure is a [`Reading::Error`] that says what went wrong;
//! nothing here panics or blocks the caller past the timeout.

use std::time::Duration;

use manifest::HttpMethod;
use serde_json::Value;

use crate::Reading;

/// Argo's default for both providers.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An instant query (`GET <address>/api/v1/query`). `result` is what Argo gives conditions:
/// the sample values of a vector (an empty vector gives `[]`), or the number of a scalar.
pub async fn prometheus(
    client: &reqwest::Client,
    address: &str,
    query: &str,
    timeout: Option<Duration>,
) -> Reading {
    let url = format!("{}/api/v1/query", address.trim_end_matches('/'));
    let answer = client
        .get(&url)
        .query(&[("query", query)])
        .timeout(timeout.unwrap_or(DEFAULT_TIMEOUT))
        .send()
        .await;
    let body = match answer {
        Ok(resp) => {
            let status = resp.status();
            match resp.bytes().await {
                Ok(b)
                    if status.is_success() || status.as_u16() == 400 || status.as_u16() == 422 =>
                {
                    b
                }
                Ok(_) => {
                    return Reading::Error(format!("Prometheus at {address} answered {status}"));
                }
                Err(e) => return Reading::Error(format!("Prometheus at {address}: {e}")),
            }
        }
        Err(e) => return Reading::Error(format!("Prometheus at {address} did not answer: {e}")),
    };
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return Reading::Error(format!("Prometheus at {address} did not answer JSON"));
    };
    prometheus_result(&json)
}

/// The reading of a Prometheus query API answer.
pub fn prometheus_result(json: &Value) -> Reading {
    if json["status"] != "success" {
        return Reading::Error(format!(
            "Prometheus: {} ({})",
            json["error"].as_str().unwrap_or("the query failed"),
            json["errorType"].as_str().unwrap_or("error")
        ));
    }
    let data = &json["data"];
    let sample = |v: &Value| -> Option<f64> { v.get(1)?.as_str()?.parse::<f64>().ok() };
    match data["resultType"].as_str() {
        Some("vector") => {
            let values: Vec<f64> = data["result"]
                .as_array()
                .map(|r| r.iter().filter_map(|s| sample(&s["value"])).collect())
                .unwrap_or_default();
            if !values.is_empty() && values.iter().all(|v| v.is_nan()) {
                // 0/0: a ratio over no traffic.
                return Reading::NoData("the query gives NaN (no traffic to divide by)".into());
            }
            Reading::Value(Value::Array(values.into_iter().map(number).collect()))
        }
        Some("scalar") => match sample(&data["result"]) {
            Some(v) if v.is_nan() => {
                Reading::NoData("the query gives NaN (no traffic to divide by)".into())
            }
            Some(v) => Reading::Value(number(v)),
            None => Reading::Error("Prometheus: a scalar without a value".into()),
        },
        other => Reading::Error(format!(
            "Prometheus: a {} result cannot be judged; use an instant query giving a vector or a scalar",
            other.unwrap_or("missing")
        )),
    }
}

/// JSON has no NaN or infinity: those become null.
fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// A web request; `result` is the JSON answer, or the part `json_path` selects.
#[allow(clippy::too_many_arguments)]
pub async fn web(
    client: &reqwest::Client,
    insecure_client: &reqwest::Client,
    url: &str,
    method: HttpMethod,
    headers: &[(String, String)],
    body: Option<&str>,
    json_path: Option<&str>,
    timeout: Option<Duration>,
    insecure: bool,
) -> Reading {
    let client = if insecure { insecure_client } else { client };
    // The URL may carry a token in its query: messages name it without.
    let shown = manifest::redact_uri(url);
    let url_text = shown.as_str();
    let mut req = match method {
        HttpMethod::Get => client.get(url),
        HttpMethod::Post => client.post(url),
        HttpMethod::Put => client.put(url),
    };
    for (k, v) in headers {
        req = req.header(k, v);
    }
    if let Some(b) = body {
        req = req.body(b.to_owned());
    }
    let url = url_text;
    let mut resp = match req.timeout(timeout.unwrap_or(DEFAULT_TIMEOUT)).send().await {
        Ok(r) => r,
        Err(e) => return Reading::Error(bounded(format!("{url} did not answer: {e}"))),
    };
    let status = resp.status();
    if !status.is_success() {
        return Reading::Error(format!("{url} answered {status}"));
    }
    // The answer is read up to a limit: a measurement never holds a large document.
    let mut bytes = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() > MAX_ANSWER => {
                return Reading::Error(format!(
                    "{url} answered more than {} KiB",
                    MAX_ANSWER >> 10
                ));
            }
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => return Reading::Error(bounded(format!("{url}: {e}"))),
        }
    }
    let json: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return Reading::Error(bounded(format!("{url} did not answer JSON: {e}"))),
    };
    let selected = match json_path {
        None => json,
        Some(path) => match select(&json, path) {
            Ok(Some(v)) => v.clone(),
            Ok(None) => {
                return Reading::NoData(bounded(format!(
                    "{path} selects nothing in the answer of {url}"
                )));
            }
            Err(e) => return Reading::Error(bounded(e)),
        },
    };
    match conditionable(&selected) {
        Ok(()) => Reading::Value(selected),
        Err(why) => Reading::Error(format!(
            "{url}: the {} {why}: a condition needs a number, a boolean, a short string, or a \
             small list or object of them; select the field it uses with jsonPath",
            if json_path.is_some() {
                "selected value"
            } else {
                "whole answer"
            }
        )),
    }
}

/// Largest answer a web measurement reads.
const MAX_ANSWER: usize = 1 << 20;
/// Largest value it keeps (as JSON text), and how deep.
const MAX_VALUE: usize = 4096;
const MAX_DEPTH: usize = 2;
/// Longest error message it keeps.
const MAX_MESSAGE: usize = 300;

/// Whether a value is what a condition uses rather than a document to store and show.
fn conditionable(v: &Value) -> Result<(), String> {
    fn depth(v: &Value) -> usize {
        match v {
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let size = v.to_string().len();
    if size > MAX_VALUE {
        return Err(format!(
            "is {size} bytes of JSON (at most {MAX_VALUE} are kept)"
        ));
    }
    if depth(v) > MAX_DEPTH {
        return Err(format!(
            "is nested {} levels deep (at most {MAX_DEPTH})",
            depth(v)
        ));
    }
    Ok(())
}

/// A message cut to a bounded length, on a character boundary.
fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// The subset of JSONPath Argo's templates use: `{$.data.items[0].ok}` (braces and `$`
/// optional), fields by name (`.name` or `['name']`) and array elements by index.
pub fn select<'a>(json: &'a Value, path: &str) -> Result<Option<&'a Value>, String> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(p)
        .trim();
    let mut rest = p.strip_prefix('$').unwrap_or(p);
    let mut at = json;
    let bad = || format!("the jsonPath {path:?} is not of the form {{$.field[0].field}}");
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            if name.is_empty() {
                return Err(bad());
            }
            match at.get(name) {
                Some(v) => at = v,
                None => return Ok(None),
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(bad)?;
            let inner = r[..end].trim();
            let next = if let Some(quoted) = inner
                .strip_prefix('\'')
                .and_then(|q| q.strip_suffix('\''))
                .or_else(|| inner.strip_prefix('"').and_then(|q| q.strip_suffix('"')))
            {
                at.get(quoted)
            } else {
                let i: usize = inner.parse().map_err(|_| bad())?;
                at.get(i)
            };
            match next {
                Some(v) => at = v,
                None => return Ok(None),
            }
            rest = &r[end + 1..];
        } else {
            return Err(bad());
        }
    }
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prometheus_answers_as_argo_sees_them() {
        let vector = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"revision": "a"}, "value": [1700000000.0, "0.97"]},
            {"metric": {"revision": "b"}, "value": [1700000000.0, "1"]}
        ]}});
        assert_eq!(
            prometheus_result(&vector),
            Reading::Value(json!([0.97, 1.0]))
        );
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(prometheus_result(&empty), Reading::Value(json!([])));
        let scalar = json!({"status": "success", "data": {"resultType": "scalar", "result": [1700000000.0, "2.5"]}});
        assert_eq!(prometheus_result(&scalar), Reading::Value(json!(2.5)));
        let nan = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [1700000000.0, "NaN"]}]}});
        assert!(matches!(prometheus_result(&nan), Reading::NoData(_)));
        let error =
            json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 4"});
        assert_eq!(
            prometheus_result(&error),
            Reading::Error("Prometheus: parse error at char 4 (bad_data)".into())
        );
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(matches!(prometheus_result(&matrix), Reading::Error(_)));
    }

    /// A web endpoint on port 0 that answers each request with `answer(request text)`.
    async fn endpoint(answer: fn(&str) -> String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                let body = answer(&request);
                if body.is_empty() {
                    // Never answers: hold the connection.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    continue;
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn web_provider_against_a_real_endpoint() {
        // One TLS provider for the process, as the binary installs it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let url = endpoint(|req| {
            // The method, headers and body arrive as written in the template.
            let ok = req.starts_with("POST /score ")
                && req.to_ascii_lowercase().contains("x-team: ml")
                && req.ends_with(r#"{"model":"iris"}"#);
            format!(r#"{{"data": {{"ok": {ok}, "score": "0.97"}}}}"#)
        })
        .await;
        let reading = web(
            &client,
            &client,
            &format!("{url}/score"),
            HttpMethod::Post,
            &[("X-Team".into(), "ml".into())],
            Some(r#"{"model":"iris"}"#),
            Some("{$.data}"),
            None,
            false,
        )
        .await;
        assert_eq!(
            reading,
            Reading::Value(json!({"ok": true, "score": "0.97"}))
        );
        let cond = crate::Condition::compile("result.ok && asFloat(result.score) >= 0.95").unwrap();
        let Reading::Value(v) = reading else {
            unreachable!()
        };
        assert_eq!(cond.holds(&v), Ok(true));

        // A path that selects nothing is no data; a silent endpoint is an error, in time.
        let missing = web(
            &client,
            &client,
            &format!("{url}/score"),
            HttpMethod::Get,
            &[],
            None,
            Some("$.data.nothing"),
            None,
            false,
        )
        .await;
        assert!(matches!(missing, Reading::NoData(_)), "{missing:?}");
        let silent = endpoint(|_| String::new()).await;
        let timed_out = web(
            &client,
            &client,
            &silent,
            HttpMethod::Get,
            &[],
            None,
            None,
            Some(Duration::from_millis(300)),
            false,
        )
        .await;
        assert!(
            matches!(&timed_out, Reading::Error(e) if e.contains("did not answer")),
            "{timed_out:?}"
        );
        let refused = prometheus(&client, "http://127.0.0.1:1", "up", None).await;
        assert!(
            matches!(&refused, Reading::Error(e) if e.contains("did not answer")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn the_web_provider_keeps_only_what_a_condition_can_use() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let ask = |url: String, path: Option<&'static str>| {
            let client = client.clone();
            async move {
                web(
                    &client,
                    &client,
                    &url,
                    HttpMethod::Get,
                    &[],
                    None,
                    path,
                    None,
                    false,
                )
                .await
            }
        };
        // A whole document (`{$}`), of any size: refused, not stored and shown.
        let big = endpoint(|_| {
            let items: Vec<String> = (0..2000)
                .map(|i| format!(r#"{{"user": "u{i}", "secret": "s{i}"}}"#))
                .collect();
            format!(r#"{{"items": [{}], "ok": true}}"#, items.join(","))
        })
        .await;
        let whole = ask(format!("{big}/?token=hunter2"), Some("{$}")).await;
        let Reading::Error(e) = &whole else {
            panic!("{whole:?}")
        };
        assert!(e.contains("select the field it uses"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("u1999"), "{e}");
        // The field a condition uses is kept.
        assert_eq!(
            ask(big.clone(), Some("$.ok")).await,
            Reading::Value(json!(true))
        );
        // An answer over 1 MiB is not read whole.
        let huge = endpoint(|_| format!(r#"{{"pad": "{}"}}"#, "x".repeat(2 << 20))).await;
        let read = ask(huge, Some("$.pad")).await;
        assert!(
            matches!(&read, Reading::Error(e) if e.contains("more than 1024 KiB")),
            "{read:?}"
        );
        // Error messages are bounded, whatever the answer held.
        let not_json = endpoint(|_| "x".repeat(5000)).await;
        let read = ask(not_json, None).await;
        assert!(
            matches!(&read, Reading::Error(e) if e.chars().count() <= 301),
            "{read:?}"
        );
    }

    #[test]
    fn json_paths() {
        let v = json!({"data": {"items": [{"ok": true}, {"ok": false}], "a.b": 3}});
        assert_eq!(select(&v, "{$.data.items[1].ok}"), Ok(Some(&json!(false))));
        assert_eq!(
            select(&v, "$.data.items[0]"),
            Ok(Some(&json!({"ok": true})))
        );
        assert_eq!(select(&v, "{$.data['a.b']}"), Ok(Some(&json!(3))));
        assert_eq!(select(&v, "{$}"), Ok(Some(&v)));
        assert_eq!(select(&v, "$.data.missing"), Ok(None));
        assert!(select(&v, "$.data.items[x]").is_err());
        assert!(select(&v, "data").is_err());
    }
}
