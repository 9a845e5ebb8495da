//! The gateway alone, for benchmarks: a 90/10 proxy split in front of two upstreams, or one ONNX
//! model served in-process. `cargo xtask bench` drives it against nginx; see BENCHMARKS.md.
//!
//! ```text
//! gateway-bench proxy LISTEN STABLE_ADDR CANARY_ADDR
//! gateway-bench onnx  LISTEN MODEL.onnx
//! ```

use std::sync::Arc;

use gateway::{Config, Gateway, HeaderRoute, Match, Revision, Route, RouteTable, Upstream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!(
            "usage: gateway-bench proxy LISTEN STABLE CANARY | gateway-bench onnx LISTEN MODEL"
        );
        std::process::exit(2)
    };
    if args.len() < 4 {
        usage();
    }
    let route = match args[1].as_str() {
        "proxy" if args.len() == 5 => {
            let mut route = Route::new(
                "bench/iris",
                vec![
                    Arc::new(Revision::proxy("stable", Upstream::new(args[3].clone()))),
                    Arc::new(Revision::proxy("canary", Upstream::new(args[4].clone()))),
                ],
                vec![(0, 90), (1, 10)],
            );
            // The same header pin as the nginx peer: `x-model-revision: canary`.
            route.header_routes = vec![HeaderRoute {
                matches: vec![("x-model-revision".into(), Match::Exact("canary".into()))],
                revision: 1,
            }];
            route
        }
        "onnx" => {
            let model =
                runtime::OnnxModel::load(std::path::Path::new(&args[3])).unwrap_or_else(|e| {
                    eprintln!("{e}");
                    std::process::exit(1)
                });
            Route::new(
                "bench/iris",
                vec![Arc::new(Revision::onnx("iris", model))],
                vec![(0, 100)],
            )
        }
        _ => usage(),
    };
    // One thread, as the peers run one nginx worker on one core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let gw = Gateway::new(Config::default());
        let mut table = RouteTable::default();
        table.insert("iris".into(), route);
        gw.publish(table);
        let listener = tokio::net::TcpListener::bind(&args[2]).await.expect("bind");
        eprintln!(
            "gateway-bench listening on {}",
            listener.local_addr().unwrap()
        );
        gw.serve(listener, std::future::pending())
            .await
            .expect("serve");
    });
}
