//! The route publisher: views in, one route table out, rebuilt from the shards that changed.

use std::sync::Arc;

use engine::ServiceId;
use tokio::sync::watch;

use super::super::Publisher;
use super::super::view::AppView;

fn route(gw: &gateway::Gateway, service: &str, revision: &str) -> Arc<gateway::Route> {
    let revision = Arc::new(gateway::Revision::proxy(
        revision,
        gateway::Upstream::new("127.0.0.1:9"),
    ));
    gw.prepare(gateway::Route::new(service, vec![revision], vec![(0, 100)]))
}

/// The revision each model of the gateway's table routes to.
fn table(gw: &gateway::Gateway) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = gw
        .table()
        .models
        .iter()
        .map(|(m, r)| (m.to_string(), r.revisions[0].name.clone()))
        .collect();
    out.sort();
    out
}

#[test]
fn the_table_follows_the_views_as_routes_change_and_go() {
    let gw = gateway::Gateway::new(gateway::Config::default());
    let (view_a, rx_a) = watch::channel(Arc::new(AppView::default()));
    let (view_b, rx_b) = watch::channel(Arc::new(AppView::default()));
    let (_changed, changed) = watch::channel(0u64);
    let (published, acks) = watch::channel(vec![0u64, 0]);
    let mut publisher = Publisher {
        views: vec![rx_a, rx_b],
        gateway: Arc::clone(&gw),
        changed,
        published,
        models: std::collections::HashMap::new(),
        seen: Vec::new(),
    };
    let (iris, wine, beer) = (
        ServiceId::new("models", "iris"),
        ServiceId::new("models", "wine"),
        ServiceId::new("drinks", "beer"),
    );
    let mut a = AppView {
        generation: 1,
        ..AppView::default()
    };
    a.routes
        .insert(iris.clone(), route(&gw, "models/iris", "iris-1"));
    a.routes
        .insert(wine.clone(), route(&gw, "models/wine", "wine-1"));
    let mut b = AppView {
        generation: 1,
        ..AppView::default()
    };
    b.routes
        .insert(beer.clone(), route(&gw, "drinks/beer", "beer-1"));
    view_a.send_replace(Arc::new(a.clone()));
    view_b.send_replace(Arc::new(b.clone()));
    publisher.publish();
    assert_eq!(
        table(&gw),
        [
            ("beer".to_owned(), "beer-1".to_owned()),
            ("iris".to_owned(), "iris-1".to_owned()),
            ("wine".to_owned(), "wine-1".to_owned()),
        ]
    );
    assert_eq!(*acks.borrow(), [1, 1]);

    // One Application changes a route and drops another; the other one is untouched.
    a.routes
        .insert(iris.clone(), route(&gw, "models/iris", "iris-2"));
    a.routes.remove(&wine);
    a.generation = 2;
    view_a.send_replace(Arc::new(a.clone()));
    publisher.publish();
    assert_eq!(
        table(&gw),
        [
            ("beer".to_owned(), "beer-1".to_owned()),
            ("iris".to_owned(), "iris-2".to_owned()),
        ]
    );
    assert_eq!(*acks.borrow(), [2, 1]);

    // Nothing changed: the same table again.
    publisher.publish();
    assert_eq!(table(&gw).len(), 2);
}
