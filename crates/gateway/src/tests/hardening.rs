//! The data plane's server as an attacker meets it: idle and slow connections, held bodies,
//! hostile framing. Each test is the reproduction of a finding, asserting the fixed behaviour;
//! the ones about time run on tokio's paused clock (simulated time, no waiting).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn limits(f: impl FnOnce(&mut Limits)) -> Arc<Gateway> {
    let mut config = Config {
        body_limit: 1 << 20,
        ..Config::default()
    };
    f(&mut config.limits);
    gateway_with(config)
}

/// Whether the server has closed `sock` (reads end) without sending anything more.
async fn closed_silently(sock: &mut tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(sock.read(&mut byte).await, Ok(0) | Err(_))
}

const LIVE: &[u8] = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test]
async fn at_the_connection_limit_the_oldest_idle_connection_makes_room() {
    let served = serve(limits(|l| l.max_connections = 4)).await;
    // Four connections that send nothing: the attack.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect(&served).await);
    }
    // A fifth that sends one: the server closes the oldest idle one and serves it.
    for round in 0..3 {
        let mut client = connect(&served).await;
        write(&mut client, LIVE).await;
        let (got, _) = answers(&mut client, 1, false).await;
        assert_eq!(got[0].status, 200, "round {round}");
        idle.push(client);
    }
    // The three that waited longest were closed, oldest first; the rest are open.
    for (i, sock) in idle.iter_mut().enumerate().take(3) {
        assert!(closed_silently(sock).await, "connection {i} still open");
    }
    // A kept-alive client whose connection is newest still gets answers on it.
    let last = idle.last_mut().unwrap();
    write(last, LIVE).await;
    let (got, _) = answers(last, 1, false).await;
    assert_eq!(got[0].status, 200);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let served = serve(limits(|l| {
        l.idle_timeout = Duration::from_secs(75);
        l.header_timeout = Duration::from_secs(60);
    }))
    .await;
    // Connected, nothing sent: closed at the head deadline, with no answer.
    let mut silent = connect(&served).await;
    let opened = clock::Clock::system().instant();
    assert!(closed_silently(&mut silent).await);
    assert_eq!(clock::Clock::system().since(opened).as_secs(), 60);
    // After an answer, the keep-alive connection may wait 75 s for the next request.
    let mut sock = connect(&served).await;
    write(&mut sock, LIVE).await;
    answers(&mut sock, 1, false).await;
    tokio::time::sleep(Duration::from_secs(70)).await;
    write(&mut sock, LIVE).await;
    let (got, _) = answers(&mut sock, 1, false).await;
    assert_eq!(got[0].status, 200);
    let idle_since = clock::Clock::system().instant();
    assert!(closed_silently(&mut sock).await);
    assert_eq!(clock::Clock::system().since(idle_since).as_secs(), 75);
}

#[tokio::test(start_paused = true)]
async fn a_head_sent_slowly_is_cut_at_its_deadline_not_at_a_pause() {
    let served = serve(limits(|l| l.header_timeout = Duration::from_secs(60))).await;
    let mut sock = connect(&served).await;
    let start = clock::Clock::system().instant();
    // A byte every 10 s: no pause is long, but the head is never done.
    let head = b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaa";
    let mut got = None;
    for byte in head {
        if sock.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        if clock::Clock::system().since(start) > Duration::from_secs(61) {
            got = Some(answers(&mut sock, 1, false).await);
            break;
        }
    }
    let (got, closed) = got.expect("the head was still being read after 61 s");
    assert_eq!((got[0].status, closed), (408, true));
    let error = got[0].json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("did not arrive within 60 s"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_body_trickled_a_byte_every_29_s_is_cut_at_its_deadline() {
    let served = serve(limits(|l| {
        l.body_timeout = Duration::from_secs(60);
        l.min_rate = 4096;
    }))
    .await;
    let mut sock = connect(&served).await;
    write(
        &mut sock,
        b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n",
    )
    .await;
    let start = clock::Clock::system().instant();
    // A byte every 29 s, looking each second whether the server has answered.
    for second in 1..=120 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if tokio::time::timeout(Duration::from_millis(1), sock.readable())
            .await
            .is_ok()
        {
            break;
        }
        if second % 29 == 0 {
            write(&mut sock, b"{").await;
        }
    }
    // Cut at 60 s plus the time its two bytes earned (well under a second), not later.
    assert_eq!(
        clock::Clock::system().since(start).as_secs(),
        60,
        "{:?}",
        clock::Clock::system().since(start)
    );
    let (got, closed) = answers(&mut sock, 1, false).await;
    assert_eq!((got[0].status, closed), (408, true));
    // A client that keeps the minimum rate gets as long as its body needs.
    let mut sock = connect(&served).await;
    let body = iris_body().to_string();
    let request = post(
        "/v2/models/iris/versions/iris-predictor-00001/infer",
        "",
        &body,
    );
    let (head, rest) = request.split_at(request.len() - body.len());
    write(&mut sock, head.as_bytes()).await;
    tokio::time::sleep(Duration::from_secs(59)).await;
    write(&mut sock, rest.as_bytes()).await;
    let (got, _) = answers(&mut sock, 1, false).await;
    assert_eq!(got[0].status, 200);
}

#[tokio::test(start_paused = true)]
async fn an_answer_the_client_does_not_read_is_given_up_at_the_send_deadline() {
    let big = vec![b'x'; 64 << 20];
    let router = axum::Router::new().route(
        "/big",
        axum::routing::get(move || {
            let big = big.clone();
            async move { big }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        send_timeout: Duration::from_secs(60),
        min_rate: 1 << 20,
        ..Limits::default()
    };
    let done = tokio::spawn(serve_router(
        listener,
        router,
        limits,
        1 << 20,
        std::future::pending(),
    ));
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Never read: the server's write fills the socket buffers and then waits. On the paused
    // clock its deadline (60 s + 64 s at 1 MiB/s) comes as soon as everything waits.
    let start = clock::Clock::system().instant();
    tokio::time::sleep(Duration::from_secs(125)).await;
    // Now read: the answer broke off, the connection is closed.
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut all)).await;
    assert!(all.len() < 64 << 20, "the whole answer was written");
    assert!(clock::Clock::system().since(start) >= Duration::from_secs(124));
    done.abort();
}

#[tokio::test]
async fn bodies_held_across_connections_are_bounded() {
    let served = serve(limits(|l| l.max_buffered_bytes = 100 << 10)).await;
    // One client holds 80 KiB of an unfinished body.
    let mut holder = connect(&served).await;
    let head = "POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\n\r\n";
    write(&mut holder, head.as_bytes()).await;
    write(&mut holder, &vec![b' '; 80 << 10]).await;
    // Until the server has counted it, a second body of the same size may still fit: wait
    // for the refusal, which must come once the first is held.
    let mut refused = None;
    for _ in 0..50 {
        let mut other = connect(&served).await;
        write(&mut other, head.as_bytes()).await;
        let sent = other.write_all(&vec![b' '; 80 << 10]).await;
        if sent.is_err() {
            continue;
        }
        let (got, closed) = answers(&mut other, 1, false).await;
        if got[0].status == 503 {
            refused = Some((got, closed));
            break;
        }
    }
    let (got, closed) = refused.expect("a second 80 KiB body was never refused");
    assert!(closed);
    let error = got[0].json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("holds as many request bodies"), "{error}");
    // Small requests without a body are not affected.
    let mut sock = connect(&served).await;
    write(&mut sock, LIVE).await;
    assert_eq!(answers(&mut sock, 1, false).await.0[0].status, 200);
}

/// Sends `request` on a new connection and returns the answer and whether it was closed.
async fn one(served: &Served, request: &[u8]) -> (u16, String, bool) {
    let mut sock = connect(served).await;
    let _ = sock.write_all(request).await;
    let (got, closed) = answers(&mut sock, 1, false).await;
    let error = got[0]
        .json()
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or_default()
        .to_owned();
    (got[0].status, error, closed)
}

#[tokio::test]
async fn chunk_size_lines_are_exactly_rfc_9112() {
    let served = serve(gateway(1 << 20)).await;
    let start =
        "POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    let cases: [(&str, &str); 9] = [
        // A size near u64::MAX after a first chunk: the sum overflows unless checked.
        ("1\r\n{\r\nffffffffffffffff\r\n", "larger than the limit"),
        ("1\r\n{\r\n10000000000000000\r\n", "too large"),
        ("+5\r\nhello\r\n0\r\n\r\n", "hexadecimal"),
        (" 5\r\nhello\r\n0\r\n\r\n", "hexadecimal"),
        ("5\x0b\r\nhello\r\n0\r\n\r\n", "extension"),
        ("5;a\nb\r\nhello\r\n0\r\n\r\n", "CRLF"),
        ("5\nhello\r\n0\r\n\r\n", "CRLF"),
        ("5;=x\r\nhello\r\n0\r\n\r\n", "extension"),
        ("5;a=\"unterminated\r\nhello\r\n0\r\n\r\n", "extension"),
    ];
    for (body, message) in cases {
        let (status, error, closed) = one(&served, format!("{start}{body}").as_bytes()).await;
        assert!(
            matches!(status, 400 | 413) && closed && error.contains(message),
            "{body:?}: {status} {error}"
        );
    }
    // What RFC 9112 allows is served: extensions with tokens and quoted strings, spaces around
    // them, trailers.
    let json = iris_body().to_string();
    let body = format!(
        "{:x} ; name = value ;q=\"a \\\" b\"\r\n{json}\r\n0\r\nx-t: 1\r\n\r\n",
        json.len()
    );
    let (status, error, _) = one(
        &served,
        format!(
            "{}{body}",
            start.replace("/iris/", "/iris/versions/iris-predictor-00001/")
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{error}");
}

#[tokio::test]
async fn heads_are_checked_as_rfc_9112_says() {
    let served = serve(gateway(1 << 20)).await;
    // HTTP/1.1 without Host.
    let (status, error, closed) = one(&served, b"GET /v2 HTTP/1.1\r\n\r\n").await;
    assert_eq!((status, closed), (400, true));
    assert!(error.contains("host"), "{error}");
    // HTTP/1.0 with a transfer coding.
    let (status, error, _) = one(
        &served,
        b"POST /v2/models/iris/infer HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert!(error.contains("HTTP/1.0"), "{error}");
    // A 70 KB target: 414, even though it is also over the head limit.
    let long = format!("GET /v2/{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let (status, _, closed) = one(&served, long.as_bytes()).await;
    assert_eq!((status, closed), (414, true));
    // A 9 KB target too, sent in small pieces.
    let mut sock = connect(&served).await;
    let long = format!("GET /v2/{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(9_000));
    for piece in long.as_bytes().chunks(100) {
        if sock.write_all(piece).await.is_err() {
            break;
        }
    }
    let (got, _) = answers(&mut sock, 1, false).await;
    assert_eq!(got[0].status, 414);
    // A head over 64 KiB is refused however it arrives, even whole in one write.
    let mut big = String::from("GET /v2 HTTP/1.1\r\nhost: x\r\n");
    for i in 0..90 {
        big.push_str(&format!("x-h{i}: {}\r\n", "v".repeat(800)));
    }
    big.push_str("\r\n");
    let (status, _, closed) = one(&served, big.as_bytes()).await;
    assert_eq!((status, closed), (431, true));
    // Empty lines before a request are ignored, a few of them; a stream of them is refused.
    let (status, _, _) = one(&served, b"\r\n\r\nGET /v2 HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    let (status, error, _) = one(&served, "\r\n".repeat(5000).as_bytes()).await;
    assert_eq!(status, 400);
    assert!(error.contains("empty lines"), "{error}");
    // Two Host headers.
    let (status, _, _) = one(&served, b"GET /v2 HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n").await;
    assert_eq!(status, 400);
    // HTTP/1.0 without Host is fine; a bare-LF head is accepted as RFC 9112 lets recipients.
    let (status, _, _) = one(&served, b"GET /v2 HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200);
    let (status, _, _) = one(&served, b"GET /v2 HTTP/1.1\nhost: x\n\n").await;
    assert_eq!(status, 200);
}

mod never_panics {
    //! The parsers of bytes from the wire, fed random and hostile input in random pieces: they
    //! never panic, never take more than their limits, and a piecewise feed ends where a whole
    //! one does.
    use proptest::prelude::*;

    use super::super::*;

    /// Bytes that look like HTTP often enough to get past the first checks.
    fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"POST /v2/models/iris/infer HTTP/1.1\r\n".to_vec()),
            Just(b"host: x\r\n".to_vec()),
            Just(b"transfer-encoding: chunked\r\n".to_vec()),
            Just(b"content-length: 18446744073709551615\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"ffffffffffffffff\r\n".to_vec()),
            Just(b"5;a=\"b\"\r\nhello\r\n".to_vec()),
            Just(b"0\r\n\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ];
        proptest::collection::vec(piece, 0..30).prop_map(|p| p.concat())
    }

    fn iris_inputs() -> &'static [runtime::TensorSpec] {
        static SPECS: std::sync::OnceLock<Vec<runtime::TensorSpec>> = std::sync::OnceLock::new();
        SPECS.get_or_init(|| model("iris-logreg-v1").inputs().to_vec())
    }

    #[test]
    fn a_shape_whose_element_count_overflows_is_a_400() {
        let body = br#"{"inputs": [{"name": "X", "shape": [4611686018427387904, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#;
        let err = protocol::parse_v2(body, None, iris_inputs()).err().unwrap();
        assert!(
            err.0.contains("more values than can be addressed"),
            "{}",
            err.0
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_head_scanner_never_panics_and_is_bounded(bytes in wire_bytes(), step in any::<u8>()) {
            crate::fuzzing::head(&[&[step][..], &bytes].concat());
        }

        #[test]
        fn the_chunked_decoder_never_panics_and_keeps_its_limit(
            bytes in wire_bytes(),
            step in any::<u8>(),
        ) {
            crate::fuzzing::chunked(&[&[step][..], &bytes].concat());
        }

        #[test]
        fn the_v2_decoders_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            json_len in proptest::option::of(0usize..400),
        ) {
            let specs = iris_inputs();
            let _ = protocol::parse_v2(&body, json_len, specs);
            let _ = protocol::parse_v1(&body, specs);
            crate::fuzzing::v2(&body);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_model_server_that_hangs_is_a_504_at_the_routes_timeout_counted_as_a_server_error() {
    // A model server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = silent.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let gw = Gateway::new(Config::default());
    let mut route = Route::new(
        "default/slow",
        vec![Arc::new(Revision::proxy(
            "slow-predictor-00001",
            Upstream::new(at),
        ))],
        vec![(0, 100)],
    );
    // KServe's `spec.predictor.timeout: 2`.
    route.answer_timeout = Some(Duration::from_secs(2));
    let mut table = RouteTable::default();
    table.insert("slow".into(), route);
    gw.publish(table);
    let start = clock::Clock::system().instant();
    let (s, rev, v) = send(&gw, infer("/v2/models/slow/infer", &iris_body(), &[])).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(rev.as_deref(), Some("slow-predictor-00001"));
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("did not answer within 2 s"),
        "{v}"
    );
    assert_eq!(clock::Clock::system().since(start).as_secs(), 2);
    let summary = gw
        .summary("default/slow", "slow-predictor-00001", 60)
        .unwrap();
    assert_eq!(summary.server_errors, 1);
}
