//! The embedded, crash-safe database under the data directory: sync history, revisions, service
//! routing, rollout status, and an append-only audit log in which every entry holds the hash of the one before.
//!
//! # Guarantees
//!
//! - Every write is one redb transaction: after a crash the database holds each write entirely
//!   or not at all.
//! - One process at a time: a second [`Store::open`] of the same directory fails with
//!   [`Error::Locked`].
//! - The schema is versioned ([`SCHEMA_VERSION`]); a database written by a newer crossfade is
//!   refused rather than misread.
//! - Time is an argument of every write; the store never reads a clock.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the on-disk layout. Bumped on any incompatible change, with a migration.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SYNCS: TableDefinition<u64, &[u8]> = TableDefinition::new("syncs");
const REVISIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revisions");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
/// Rollout status by `namespace/service`, as the engine encodes it (JSON).
const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollouts");

const FILE_NAME: &str = "crossfade.redb";
/// `prev` of the first audit entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the data directory {} is in use by another crossfade process", path.display())]
    Locked { path: PathBuf },
    #[error("{} was written by a newer crossfade (schema {found}; this one reads {SCHEMA_VERSION})", path.display())]
    Schema { path: PathBuf, found: u64 },
    #[error("cannot create the data directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Database(String),
    #[error("a stored record does not decode: {0}")]
    Corrupt(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Database(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One attempt to sync the desired state from Git. Stored records decode whatever build wrote
/// them: fields are only added, and every field defaults when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncRecord {
    /// Assigned by [`Store::record_sync`]: 1, 2, 3, ...
    #[serde(default)]
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time: i64,
    pub repo: String,
    pub revision: String,
    pub commit: Option<String>,
    pub author: Option<String>,
    /// Author time of the commit, seconds since the epoch.
    pub commit_time: Option<i64>,
    /// Who signed it (principal or user id) and the key fingerprint, when verified.
    pub signer: Option<String>,
    pub signer_key: Option<String>,
    pub outcome: SyncOutcome,
    /// Why it was not applied, for any outcome other than `Applied`.
    pub message: Option<String>,
    /// Rendered manifest diagnostics (`file:line:col: code: message`).
    pub diagnostics: Vec<String>,
    /// The services (`namespace/name`) the commit declares, when it was read.
    #[serde(default)]
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncOutcome {
    /// The commit's manifests are the desired state now.
    #[default]
    Applied,
    /// The commit's signature is missing, invalid or from an untrusted key.
    Untrusted,
    /// The commit's manifests have errors: nothing of it was applied.
    Invalid,
    /// Fetching failed or timed out.
    FetchFailed,
}

/// A revision of a service's predictor (fields default when absent, as in [`SyncRecord`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RevisionRecord {
    pub namespace: String,
    pub service: String,
    /// `<service>-predictor-00001`, numbered as KServe does.
    pub name: String,
    pub number: u32,
    /// Hash of the predictor spec: the same spec is the same revision.
    pub spec_hash: String,
    pub storage_uri: String,
    /// `modelFormat.name` (`onnx`, `sklearn`, ...).
    #[serde(default = "onnx")]
    pub model_format: String,
    /// The artifact digest, once known.
    pub digest: Option<String>,
    pub state: RevisionState,
    pub reason: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

fn onnx() -> String {
    "onnx".into()
}

/// How a service routes traffic, kept so that a restart resumes where it stood (fields
/// default when absent, as in [`SyncRecord`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceRecord {
    pub namespace: String,
    pub name: String,
    /// The Application that declares it.
    pub application: String,
    /// The last rolled-out revision.
    pub rolled_out: Option<String>,
    /// The split: revision name and percent.
    pub traffic: Vec<(String, u8)>,
    /// The split was last set through the API.
    pub overridden: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevisionState {
    /// Known, not yet loaded.
    #[default]
    Pending,
    /// Loaded and warmed up: may take traffic.
    Ready,
    /// Failed to fetch, verify or load: never takes traffic.
    Failed,
    /// No longer part of the desired state.
    Retired,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time: i64,
    /// Who acted: `git:<commit>`, `api:<token id>`, `controller`.
    pub actor: String,
    /// What happened: `sync`, `create-revision`, `set-traffic`, `promote`, ...
    pub action: String,
    /// What it happened to: a service, a revision.
    pub subject: String,
    pub detail: serde_json::Value,
    /// Hash of the previous entry ([`GENESIS`] for the first).
    pub prev: String,
    /// sha256 over `prev` and this entry's other fields.
    pub hash: String,
}

/// Where the audit chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq} is broken: {reason}")]
pub struct BrokenChain {
    pub seq: u64,
    pub reason: String,
}

/// One write of a [`Store::commit`] batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Append to the sync history (the record's `seq` is assigned).
    Sync(SyncRecord),
    /// Insert or replace a revision (its number is the caller's: the next after the service's
    /// highest, for a new one).
    Revision(RevisionRecord),
    /// Insert or replace a service's routing.
    Service(ServiceRecord),
    RemoveService {
        namespace: String,
        name: String,
    },
    /// Insert or replace the rollout status of a service (the engine's encoding).
    Rollout {
        namespace: String,
        service: String,
        status: Vec<u8>,
    },
    RemoveRollout {
        namespace: String,
        service: String,
    },
    /// Append to the audit log, chained to the entry before.
    Audit {
        time: i64,
        actor: String,
        action: String,
        subject: String,
        detail: serde_json::Value,
    },
}

/// The database.
pub struct Store {
    db: Database,
    path: PathBuf,
}

// === impl Store ===

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let create_dir = |source| Error::CreateDir {
            path: dir.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(create_dir)?;
        // The directory holds the admin token, the Git mirrors and the models; the database,
        // the history and the audit log: the owner's only, also when it existed before.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(create_dir)?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::Locked {
                path: dir.to_owned(),
            },
            other => Error::Database(other.to_string()),
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(create_dir)?;
        let store = Self { db, path };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
                Some(v) if v == SCHEMA_VERSION => {}
                Some(found) => {
                    return Err(Error::Schema {
                        path: self.path.clone(),
                        found,
                    });
                }
            }
            // Create every table, so that reads never meet a missing one.
            txn.open_table(SYNCS)?;
            txn.open_table(REVISIONS)?;
            txn.open_table(AUDIT)?;
            txn.open_table(SERVICES)?;
            txn.open_table(ROLLOUTS)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    // --- batches ---

    /// Carries out every write in one transaction: after a crash the database holds all of
    /// them or none. An empty batch writes nothing.
    pub fn commit(&self, writes: &[Write]) -> Result<(), Error> {
        if writes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut syncs = txn.open_table(SYNCS)?;
            let mut revisions = txn.open_table(REVISIONS)?;
            let mut services = txn.open_table(SERVICES)?;
            let mut rollouts = txn.open_table(ROLLOUTS)?;
            let mut audit = txn.open_table(AUDIT)?;
            let mut next_sync = syncs.last()?.map_or(0, |(k, _)| k.value()) + 1;
            let mut last_audit = match audit.last()? {
                Some((k, v)) => {
                    let last: AuditEntry = decode(v.value())?;
                    (k.value(), last.hash)
                }
                None => (0, GENESIS.to_owned()),
            };
            for write in writes {
                match write {
                    Write::Sync(record) => {
                        let mut record = record.clone();
                        record.seq = next_sync;
                        next_sync += 1;
                        syncs.insert(record.seq, encode(&record).as_slice())?;
                    }
                    Write::Revision(r) => {
                        revisions.insert(revision_key(r).as_str(), encode(r).as_slice())?;
                    }
                    Write::Service(r) => {
                        let key = format!("{}/{}", r.namespace, r.name);
                        services.insert(key.as_str(), encode(r).as_slice())?;
                    }
                    Write::RemoveService { namespace, name } => {
                        services.remove(format!("{namespace}/{name}").as_str())?;
                    }
                    Write::Rollout {
                        namespace,
                        service,
                        status,
                    } => {
                        rollouts
                            .insert(format!("{namespace}/{service}").as_str(), status.as_slice())?;
                    }
                    Write::RemoveRollout { namespace, service } => {
                        rollouts.remove(format!("{namespace}/{service}").as_str())?;
                    }
                    Write::Audit {
                        time,
                        actor,
                        action,
                        subject,
                        detail,
                    } => {
                        let mut entry = AuditEntry {
                            seq: last_audit.0 + 1,
                            time: *time,
                            actor: actor.clone(),
                            action: action.clone(),
                            subject: subject.clone(),
                            detail: detail.clone(),
                            prev: last_audit.1.clone(),
                            hash: String::new(),
                        };
                        entry.hash = entry_hash(&entry);
                        audit.insert(entry.seq, encode(&entry).as_slice())?;
                        last_audit = (entry.seq, entry.hash);
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every stored revision of every service, oldest first per service.
    pub fn all_revisions(&self) -> Result<Vec<RevisionRecord>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REVISIONS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    // --- sync history ---

    /// Appends a sync record; returns it with its sequence number.
    pub fn record_sync(&self, mut record: SyncRecord) -> Result<SyncRecord, Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SYNCS)?;
            record.seq = table.last()?.map_or(0, |(k, _)| k.value()) + 1;
            table.insert(record.seq, encode(&record).as_slice())?;
        }
        txn.commit()?;
        Ok(record)
    }

    /// The most recent `limit` sync records, newest first.
    pub fn syncs(&self, limit: usize) -> Result<Vec<SyncRecord>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SYNCS)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev().take(limit) {
            let (_, v) = row?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    // --- revisions ---

    /// The revision of `service` with this spec hash, created (as `Pending`, with the next
    /// number) if the service never had that spec.
    pub fn revision_for(
        &self,
        namespace: &str,
        service: &str,
        spec_hash: &str,
        (model_format, storage_uri): (&str, &str),
        now: i64,
    ) -> Result<RevisionRecord, Error> {
        let txn = self.db.begin_write()?;
        let record = {
            let mut table = txn.open_table(REVISIONS)?;
            let prefix = service_prefix(namespace, service);
            let mut last = 0;
            let mut existing = None;
            for row in table.range(prefix.as_str()..)? {
                let (k, v) = row?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                let r: RevisionRecord = decode(v.value())?;
                last = last.max(r.number);
                if r.spec_hash == spec_hash {
                    existing = Some(r);
                }
            }
            match existing {
                Some(r) => r,
                None => {
                    let number = last + 1;
                    let r = RevisionRecord {
                        namespace: namespace.to_owned(),
                        service: service.to_owned(),
                        name: format!("{service}-predictor-{number:05}"),
                        number,
                        spec_hash: spec_hash.to_owned(),
                        storage_uri: storage_uri.to_owned(),
                        model_format: model_format.to_owned(),
                        digest: None,
                        state: RevisionState::Pending,
                        reason: None,
                        created_at: now,
                    };
                    table.insert(revision_key(&r).as_str(), encode(&r).as_slice())?;
                    r
                }
            }
        };
        txn.commit()?;
        Ok(record)
    }

    /// Replaces a stored revision (state, digest, reason).
    pub fn update_revision(&self, record: &RevisionRecord) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(REVISIONS)?;
            table.insert(revision_key(record).as_str(), encode(record).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Every revision of a service, oldest first.
    pub fn revisions(&self, namespace: &str, service: &str) -> Result<Vec<RevisionRecord>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REVISIONS)?;
        let prefix = service_prefix(namespace, service);
        let mut out = Vec::new();
        for row in table.range(prefix.as_str()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    // --- services ---

    /// Replaces the stored routing of a service.
    pub fn put_service(&self, record: &ServiceRecord) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SERVICES)?;
            let key = format!("{}/{}", record.namespace, record.name);
            table.insert(key.as_str(), encode(record).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn remove_service(&self, namespace: &str, name: &str) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SERVICES)?;
            table.remove(format!("{namespace}/{name}").as_str())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Every stored service.
    pub fn services(&self) -> Result<Vec<ServiceRecord>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SERVICES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    // --- rollouts ---

    /// Replaces the stored status of the rollout driving a service. The status is the
    /// engine's, encoded by the caller: the store keeps it whole, written in one transaction.
    pub fn put_rollout(&self, namespace: &str, service: &str, status: &[u8]) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ROLLOUTS)?;
            table.insert(format!("{namespace}/{service}").as_str(), status)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn remove_rollout(&self, namespace: &str, service: &str) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ROLLOUTS)?;
            table.remove(format!("{namespace}/{service}").as_str())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Every stored rollout status: (namespace, service, status).
    pub fn rollouts(&self) -> Result<Vec<(String, String, Vec<u8>)>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ROLLOUTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let key = k.value();
            let (namespace, service) = key
                .split_once('/')
                .ok_or_else(|| Error::Corrupt(format!("rollout key {key:?}")))?;
            out.push((namespace.to_owned(), service.to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    // --- audit log ---

    /// Appends an entry chained to the previous one.
    pub fn audit(
        &self,
        now: i64,
        actor: &str,
        action: &str,
        subject: &str,
        detail: serde_json::Value,
    ) -> Result<AuditEntry, Error> {
        let txn = self.db.begin_write()?;
        let entry = {
            let mut table = txn.open_table(AUDIT)?;
            let (seq, prev) = match table.last()? {
                Some((k, v)) => {
                    let last: AuditEntry = decode(v.value())?;
                    (k.value() + 1, last.hash)
                }
                None => (1, GENESIS.to_owned()),
            };
            let mut entry = AuditEntry {
                seq,
                time: now,
                actor: actor.to_owned(),
                action: action.to_owned(),
                subject: subject.to_owned(),
                detail,
                prev,
                hash: String::new(),
            };
            entry.hash = entry_hash(&entry);
            table.insert(seq, encode(&entry).as_slice())?;
            entry
        };
        txn.commit()?;
        Ok(entry)
    }

    /// Every audit entry, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// At most `limit` entries, the newest of those before `before` (a sequence number; `None`:
    /// the end), oldest first.
    pub fn audit_page(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut out = Vec::new();
        let rows = match before {
            Some(b) => table.range(..b)?,
            None => table.range(0..)?,
        };
        for row in rows.rev().take(limit) {
            let (_, v) = row?;
            out.push(decode(v.value())?);
        }
        out.reverse();
        Ok(out)
    }

    /// Checks the whole chain; returns the number of entries, or the first broken one.
    pub fn verify_audit(&self) -> Result<Result<u64, BrokenChain>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut prev = GENESIS.to_owned();
        let mut expected_seq = 1;
        for row in table.iter()? {
            let (k, v) = row?;
            let seq = k.value();
            let entry: AuditEntry = match serde_json::from_slice(v.value()) {
                Ok(e) => e,
                Err(e) => {
                    return Ok(Err(BrokenChain {
                        seq,
                        reason: format!("it does not decode: {e}"),
                    }));
                }
            };
            let broken = |reason: String| Ok(Err(BrokenChain { seq, reason }));
            if seq != expected_seq || entry.seq != seq {
                return broken(format!(
                    "expected entry {expected_seq} here (an entry was removed?)"
                ));
            }
            if entry.prev != prev {
                return broken("it does not point at the hash of the entry before".into());
            }
            if entry_hash(&entry) != entry.hash {
                return broken("its content does not match its hash (it was edited)".into());
            }
            prev = entry.hash;
            expected_seq += 1;
        }
        Ok(Ok(expected_seq - 1))
    }

    /// Test and repair hook: overwrite an audit entry as stored, bypassing the chain. Used by
    /// tests to show that `verify_audit` catches tampering.
    #[doc(hidden)]
    pub fn overwrite_audit_entry(&self, entry: &AuditEntry) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(AUDIT)?;
            table.insert(entry.seq, encode(entry).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }
}

fn service_prefix(namespace: &str, service: &str) -> String {
    format!("{namespace}/{service}/")
}

fn revision_key(r: &RevisionRecord) -> String {
    format!(
        "{}{:010}",
        service_prefix(&r.namespace, &r.service),
        r.number
    )
}

/// sha256 over `prev` and the entry's fields, in a fixed order.
fn entry_hash(e: &AuditEntry) -> String {
    let body = serde_json::json!([e.seq, e.time, e.actor, e.action, e.subject, e.detail]);
    let mut h = Sha256::new();
    h.update(e.prev.as_bytes());
    h.update(b"\n");
    h.update(body.to_string().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests;
