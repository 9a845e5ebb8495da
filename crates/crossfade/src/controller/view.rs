//! What the rest of the process reads of an Application: an immutable [`AppView`] its task
//! publishes after every event (status, rollouts, routes), rebuilt only for the services the
//! event touched.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::dto;
use engine::{LiveService, RevisionState, ServiceId};

use super::state::AppState;

/// One Application as readers see it.
#[derive(Clone, Default)]
pub struct AppView {
    pub name: String,
    pub source: dto::SourceStatus,
    pub prune: bool,
    pub self_heal: bool,
    /// Every service the Application declares or still serves.
    pub services: Sharded<Arc<dto::ServiceStatus>>,
    pub rollouts: Arc<Vec<(engine::rollout::RolloutSpec, engine::rollout::RolloutStatus)>>,
    /// The gateway's route of every service that has one, prepared (metric handles resolved).
    pub routes: Sharded<Arc<gateway::Route>>,
    /// Bumped with every view published.
    pub generation: u64,
    /// Why the last change is not written yet (the store refuses it; retried).
    pub store_error: Option<String>,
}

impl AppView {
    /// Rebuilds what the event touched: `services` that changed, the source when `source`.
    pub fn update(
        &self,
        state: &AppState,
        services: &std::collections::BTreeSet<ServiceId>,
        source: bool,
        gateway: &gateway::Gateway,
    ) -> AppView {
        let mut next = self.clone();
        next.generation += 1;
        if source || next.name.is_empty() {
            let rules = state.rules();
            next.name = rules.app.name.clone();
            next.prune = rules.app.policy.prune;
            next.self_heal = rules.app.policy.self_heal;
            next.source = dto::SourceStatus {
                repo: rules.repo.clone(),
                revision: rules.app.revision.clone(),
                path: rules.app.path.clone(),
                commit: state.commit.clone(),
                verified: state.verified,
                signer: state.signer.clone(),
                last_sync_at: state
                    .last_sync_at
                    .map(|t| dto::rfc3339_millis(t.as_millis())),
                error: state.error.clone(),
            };
        }
        for id in services {
            let exists = state.desired.contains_key(id) || state.live.services.contains_key(id);
            if exists {
                next.services
                    .insert(id.clone(), Arc::new(service_status(state, id)));
            } else {
                next.services.remove(id);
            }
            match route(state, id) {
                Some(r) => next.routes.insert(id.clone(), gateway.prepare(r)),
                None => next.routes.remove(id),
            }
        }
        next.rollouts = Arc::new(state.rollout_list());
        next
    }
}

/// Shards of a map by service: a view shares every shard with the view before but the ones an
/// event touched, so publishing a view after an event that touched one service of 10,000
/// copies 1/64 of the map, not all of it. Iteration is by shard, then by service id.
#[derive(Clone)]
pub struct Sharded<V> {
    shards: Arc<Vec<Arc<BTreeMap<ServiceId, V>>>>,
}

const SHARDS: usize = 64;

impl<V: Clone> Default for Sharded<V> {
    fn default() -> Self {
        Self {
            shards: Arc::new((0..SHARDS).map(|_| Arc::new(BTreeMap::new())).collect()),
        }
    }
}

impl<V: Clone> Sharded<V> {
    fn shard(id: &ServiceId) -> usize {
        // FNV-1a: the same shard in every process, whatever the hasher's seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.namespace.bytes().chain([b'/']).chain(id.name.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % SHARDS as u64) as usize
    }

    pub fn insert(&mut self, id: ServiceId, value: V) {
        let i = Self::shard(&id);
        Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[i]).insert(id, value);
    }

    pub fn remove(&mut self, id: &ServiceId) {
        let i = Self::shard(id);
        if self.shards[i].contains_key(id) {
            Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[i]).remove(id);
        }
    }

    pub fn get(&self, id: &ServiceId) -> Option<&V> {
        self.shards[Self::shard(id)].get(id)
    }

    pub fn contains_key(&self, id: &ServiceId) -> bool {
        self.get(id).is_some()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ServiceId, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// The shards that differ between `self` and `newer`, as (this one's, newer's).
    pub fn changed_shards<'a>(
        &'a self,
        newer: &'a Sharded<V>,
    ) -> impl Iterator<Item = (&'a BTreeMap<ServiceId, V>, &'a BTreeMap<ServiceId, V>)> {
        self.shards
            .iter()
            .zip(newer.shards.iter())
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .map(|(a, b)| (a.as_ref(), b.as_ref()))
    }
}

/// A service's status as the API shows it.
fn service_status(state: &AppState, id: &ServiceId) -> dto::ServiceStatus {
    let empty = LiveService::default();
    let live = state.live.services.get(id).unwrap_or(&empty);
    let tags = &live.tags;
    let desired = state.desired.get(id);
    let latest = desired.and_then(|d| live.revisions.iter().find(|r| r.spec_hash == d.spec_hash));
    let records = state.records.get(id).map_or(&[][..], Vec::as_slice);
    let revisions: Vec<dto::RevisionStatus> = records
        .iter()
        .map(|r| {
            let live_rev = live.revisions.iter().find(|l| l.name == r.name);
            let (state_name, reason) = match live_rev.map(|l| &l.state) {
                Some(RevisionState::Ready) => (dto::RevisionState::Ready, None),
                Some(RevisionState::Pending) => (
                    dto::RevisionState::Pending,
                    Some("waiting for the data plane to load it".to_owned()),
                ),
                Some(RevisionState::Failed { reason }) => {
                    (dto::RevisionState::Failed, Some(reason.clone()))
                }
                None => (dto::RevisionState::Retired, None),
            };
            let tag = if tags.latest.as_deref() == Some(r.name.as_str()) {
                Some("latest".to_owned())
            } else if tags.prev.as_deref() == Some(r.name.as_str()) {
                Some("prev".to_owned())
            } else {
                None
            };
            dto::RevisionStatus {
                name: r.name.clone(),
                storage_uri: manifest::redact_uri(&r.storage_uri),
                digest: r.digest.clone(),
                state: state_name,
                traffic_percent: live
                    .traffic
                    .iter()
                    .find(|s| s.revision == r.name)
                    .map_or(0, |s| s.percent.get()),
                tag,
                reason: reason.or_else(|| r.reason.clone()),
            }
        })
        .collect();
    let out_of_sync = state.out_of_sync.get(id);
    let health = match latest.map(|l| &l.state) {
        Some(RevisionState::Failed { .. }) => dto::Health::Degraded,
        _ if desired.is_none() && live.traffic.is_empty() => dto::Health::Missing,
        Some(RevisionState::Pending) | None => dto::Health::Progressing,
        Some(RevisionState::Ready) if live.traffic.is_empty() => dto::Health::Missing,
        Some(RevisionState::Ready) => dto::Health::Healthy,
    };
    let message = out_of_sync.cloned().or_else(|| {
        latest
            .filter(|l| l.state == RevisionState::Pending)
            .map(|l| format!("revision {} is loading", l.name))
    });
    dto::ServiceStatus {
        name: id.name.clone(),
        namespace: id.namespace.clone(),
        application: state.rules().app.name.clone(),
        sync_status: if out_of_sync.is_some() {
            dto::SyncStatus::OutOfSync
        } else {
            dto::SyncStatus::Synced
        },
        health,
        message,
        revisions,
    }
}

/// The gateway's route of a service: its loaded revisions, split, tags, and the header and
/// mirror routes of its rollout. `None` when the service is gone.
fn route(state: &AppState, id: &ServiceId) -> Option<gateway::Route> {
    let live = state.live.services.get(id)?;
    let revisions: Vec<Arc<gateway::Revision>> = live
        .revisions
        .iter()
        .filter_map(|r| state.loaded.get(&(id.clone(), r.name.clone())).cloned())
        .collect();
    let index = |name: &str| revisions.iter().position(|r| r.name == name);
    let split = live
        .traffic
        .iter()
        .filter_map(|s| index(&s.revision).map(|i| (i, s.percent.get())))
        .collect();
    let latest = live.tags.latest.as_deref().and_then(index);
    let prev = live.tags.prev.as_deref().and_then(index);
    let stable = live.rolled_out.as_deref().and_then(index);
    let rollout = state.rollouts.get(id);
    let canary_index = rollout
        .filter(|r| r.aborted.is_none())
        .and_then(|r| r.canary.as_deref())
        .and_then(index);
    let mut route = gateway::Route::new(id.to_string(), revisions, split);
    let desired = state.desired.get(id);
    route.tag_routing = desired.is_some_and(|d| d.tag_routing);
    route.answer_timeout = desired.and_then(|d| d.request_timeout);
    route.latest = latest;
    route.prev = prev;
    route.stable = stable;
    // A rollout's header and mirror routes go to its canary while it is served.
    if let Some(r) = rollout
        && let Some(canary) = canary_index
    {
        // A match that cannot be built (a regex that does not compile) drops its whole
        // route: a route with fewer conditions would take more requests.
        route.header_routes = r
            .header_routes
            .iter()
            .filter_map(|h| {
                Some(gateway::HeaderRoute {
                    matches: super::header_matches(id, &h.name, &h.matches)?,
                    revision: canary,
                })
            })
            .collect();
        route.mirrors = r
            .mirrors
            .iter()
            .filter_map(|m| {
                Some(gateway::Mirror {
                    revision: canary,
                    percent: m.percent,
                    matches: super::header_matches(id, &m.name, &m.matches)?,
                })
            })
            .collect();
    }
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sharded_map_shares_every_shard_an_update_did_not_touch() {
        let mut a: Sharded<u32> = Sharded::default();
        for i in 0..1000 {
            a.insert(ServiceId::new("models", format!("m{i}")), i);
        }
        let mut b = a.clone();
        let id = ServiceId::new("models", "m7");
        b.insert(id.clone(), 70);
        b.remove(&ServiceId::new("models", "m8"));
        b.remove(&ServiceId::new("models", "absent"));
        assert_eq!((a.get(&id), b.get(&id)), (Some(&7), Some(&70)));
        assert_eq!((a.len(), b.len()), (1000, 999));
        let shared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        // m7 and m8 live in one or two shards; every other shard is the same allocation.
        assert!(shared >= SHARDS - 2, "{shared}");
        assert_eq!(b.iter().count(), 999);
    }
}
