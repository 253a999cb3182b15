//! The agent registry (`orfeas_agents`) and node keys (`orfeas_nodes`).
//!
//! An agent's record holds its keys and its policy. Keys have validity
//! windows (`not_before_ms` / `not_after_ms`), so a key can be rotated with
//! an overlap in which both verify; a revoked key verifies nothing, ever
//! (`revoked_key`). The policy says which operations the agent may use,
//! how many requests per minute and unfinished jobs it may have, its
//! priority lane and its largest image. Every policy field is optional with
//! a serde default: records written before a field existed still load and
//! mean "no limit" / the `normal` lane. Writes are revision-checked, so two
//! operators changing one agent at once never lose an update.

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
pub use orfeas_wire::v1::NodeRecord;
use orfeas_wire::{keys::KeyError, v1::Lane, ErrorCode, PublicKey};
use serde::{Deserialize, Serialize};

use crate::bus::BusError;

/// Operations an agent may be allowed, by their `orfeas.op` name.
pub const OPERATIONS: [&str; 5] = ["submit", "submit_batch", "status", "cancel", "fetch"];

/// One registered key of an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentKey {
    /// Key id (`kid`).
    pub kid: String,
    /// 64 hex digits.
    pub public_key: String,
    /// A revoked key verifies nothing, ever.
    #[serde(default)]
    pub revoked: bool,
    /// Not valid before this time, ms since the epoch (absent: from the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// Not valid after this time, ms since the epoch (absent: no end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_ms: Option<u64>,
    /// When it was revoked, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
}

/// An agent's registry entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Agent name (the subject token).
    pub name: String,
    /// Its keys.
    pub keys: Vec<AgentKey>,
    /// Operations it may use (names from [`OPERATIONS`]); absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<Vec<String>>,
    /// Signed requests per minute (GCRA, burst = the same number); absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Unfinished jobs at most; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// The lane its jobs run in (a job may ask for a lower one).
    #[serde(default, skip_serializing_if = "is_normal")]
    pub lane: Lane,
    /// Largest image, bytes; absent: the protocol's cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_image_bytes: Option<u64>,
}

fn is_normal(lane: &Lane) -> bool {
    *lane == Lane::Normal
}

/// What the registry says about one key of one agent at one time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    /// Verifies messages now.
    Active(PublicKey),
    /// Revoked: refused with `revoked_key`, whatever the time.
    Revoked,
    /// Outside its validity window (or unreadable).
    Inactive(String),
    /// No such agent or key.
    Unknown,
}

impl KeyStatus {
    /// The stable code of a refusal, `None` when active.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Active(_) => None,
            Self::Revoked => Some(ErrorCode::RevokedKey),
            Self::Inactive(_) | Self::Unknown => Some(ErrorCode::UnknownKey),
        }
    }
}

impl AgentRecord {
    /// A new agent with no keys and no limits.
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string(), keys: vec![], operations: None, requests_per_minute: None, max_concurrent: None, lane: Lane::Normal, max_image_bytes: None }
    }

    /// Whether the agent may use operation `op`.
    pub fn allows(&self, op: &str) -> bool {
        self.operations.as_ref().is_none_or(|ops| ops.iter().any(|o| o == op))
    }

    /// The status of key `kid` at `now_ms`.
    pub fn key_status(&self, kid: &str, now_ms: u64) -> KeyStatus {
        let Some(key) = self.keys.iter().find(|k| k.kid == kid) else { return KeyStatus::Unknown };
        if key.revoked {
            return KeyStatus::Revoked;
        }
        if let Some(from) = key.not_before_ms.filter(|&t| now_ms < t) {
            return KeyStatus::Inactive(format!("key {kid} is valid from {from} ms, server time is {now_ms} ms"));
        }
        if let Some(until) = key.not_after_ms.filter(|&t| now_ms > t) {
            return KeyStatus::Inactive(format!("key {kid} expired at {until} ms, server time is {now_ms} ms"));
        }
        match PublicKey::from_hex(&key.public_key) {
            Ok(k) => KeyStatus::Active(k),
            Err(e) => KeyStatus::Inactive(format!("key {kid} is unusable: {e}")),
        }
    }
}

/// Problems changing the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Not a valid agent name.
    #[error("agent name {0:?} is not 1-64 of a-z 0-9 _ -")]
    BadName(String),
    /// Not an acceptable key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// No such agent.
    #[error("agent {0:?} is not registered")]
    NoAgent(String),
    /// No such key of the agent.
    #[error("agent {0:?} has no key {1:?}")]
    NoKey(String, String),
    /// A policy value is not acceptable.
    #[error("{0}")]
    BadPolicy(String),
    /// Another writer kept changing the record.
    #[error("agent {0:?} was changed concurrently too often; try again")]
    Contended(String),
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Changes to an agent's policy; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct PolicyUpdate {
    /// Allowed operations (`Some(vec![])` is refused: use revoke).
    pub operations: Option<Vec<String>>,
    /// Requests per minute (0 = no limit).
    pub requests_per_minute: Option<u32>,
    /// Unfinished jobs at most (0 = no limit).
    pub max_concurrent: Option<u32>,
    /// Priority lane.
    pub lane: Option<Lane>,
    /// Largest image, bytes (0 = the protocol's cap).
    pub max_image_bytes: Option<u64>,
}

impl PolicyUpdate {
    /// Apply to `record`, checking values.
    pub fn apply(&self, record: &mut AgentRecord) -> Result<(), RegistryError> {
        if let Some(ops) = &self.operations {
            if ops.is_empty() {
                return Err(RegistryError::BadPolicy("an agent needs at least one operation (revoke its keys to stop it)".into()));
            }
            if let Some(bad) = ops.iter().find(|o| !OPERATIONS.contains(&o.as_str())) {
                return Err(RegistryError::BadPolicy(format!("operation {bad:?} is not one of {}", OPERATIONS.join(", "))));
            }
            let mut ops = ops.clone();
            ops.sort();
            ops.dedup();
            record.operations = Some(ops);
        }
        let nonzero = |v: u32| (v > 0).then_some(v);
        if let Some(rpm) = self.requests_per_minute {
            record.requests_per_minute = nonzero(rpm);
        }
        if let Some(n) = self.max_concurrent {
            record.max_concurrent = nonzero(n);
        }
        if let Some(lane) = self.lane {
            record.lane = lane;
        }
        if let Some(bytes) = self.max_image_bytes {
            record.max_image_bytes = (bytes > 0).then_some(bytes);
        }
        Ok(())
    }
}

/// Typed access to the registry buckets.
#[derive(Clone)]
pub struct Registry {
    agents: kv::Store,
    nodes: kv::Store,
}

fn now_ms() -> u64 {
    crate::now_ms()
}

impl Registry {
    /// Wrap the buckets.
    pub fn new(agents: kv::Store, nodes: kv::Store) -> Self {
        Self { agents, nodes }
    }

    /// Register `public_key` for agent `name` (creating the agent if new).
    pub async fn add_agent_key(&self, name: &str, public_key: &str) -> Result<AgentRecord, RegistryError> {
        self.add_agent(name, public_key, &PolicyUpdate::default()).await
    }

    /// Register `public_key` for agent `name` (creating the agent if new)
    /// and apply `policy`. Weak keys are refused.
    pub async fn add_agent(&self, name: &str, public_key: &str, policy: &PolicyUpdate) -> Result<AgentRecord, RegistryError> {
        let key = PublicKey::from_hex(public_key)?;
        self.change(name, true, |record| {
            let kid = key.id().0;
            if !record.keys.iter().any(|k| k.kid == kid) {
                record.keys.push(AgentKey { kid, public_key: key.to_hex(), revoked: false, not_before_ms: None, not_after_ms: None, revoked_at_ms: None });
            }
            policy.apply(record)
        })
        .await
    }

    /// Change the policy of an existing agent.
    pub async fn set_policy(&self, name: &str, policy: &PolicyUpdate) -> Result<AgentRecord, RegistryError> {
        self.change(name, false, |record| policy.apply(record)).await
    }

    /// Revoke key `kid` of agent `name`, or every key when `kid` is `None`.
    /// Absolute: nothing signed with a revoked key is accepted again.
    pub async fn revoke(&self, name: &str, kid: Option<&str>) -> Result<AgentRecord, RegistryError> {
        let at = now_ms();
        self.change(name, false, |record| {
            let mut found = false;
            for k in record.keys.iter_mut().filter(|k| kid.is_none_or(|kid| k.kid == kid)) {
                found = true;
                if !k.revoked {
                    k.revoked = true;
                    k.revoked_at_ms = Some(at);
                }
            }
            match (found, kid) {
                (false, Some(kid)) => Err(RegistryError::NoKey(record.name.clone(), kid.to_string())),
                _ => Ok(()),
            }
        })
        .await
    }

    /// Add `public_key` to agent `name`, valid from now, and end every other
    /// unrevoked key `overlap_ms` from now: both verify during the overlap.
    pub async fn rotate(&self, name: &str, public_key: &str, overlap_ms: u64) -> Result<AgentRecord, RegistryError> {
        let key = PublicKey::from_hex(public_key)?;
        let at = now_ms();
        self.change(name, false, |record| {
            let kid = key.id().0;
            for k in record.keys.iter_mut().filter(|k| k.kid != kid && !k.revoked) {
                let end = at + overlap_ms;
                k.not_after_ms = Some(k.not_after_ms.map_or(end, |t| t.min(end)));
            }
            match record.keys.iter_mut().find(|k| k.kid == kid) {
                Some(existing) if existing.revoked => return Err(RegistryError::BadPolicy(format!("key {kid} is revoked and cannot come back"))),
                Some(existing) => existing.not_after_ms = None,
                None => record.keys.push(AgentKey { kid, public_key: key.to_hex(), revoked: false, not_before_ms: Some(at), not_after_ms: None, revoked_at_ms: None }),
            }
            Ok(())
        })
        .await
    }

    /// Read-modify-write of one agent's record, revision-checked.
    async fn change(&self, name: &str, create: bool, mut edit: impl FnMut(&mut AgentRecord) -> Result<(), RegistryError>) -> Result<AgentRecord, RegistryError> {
        if !orfeas_wire::subjects::is_valid_agent_name(name) {
            return Err(RegistryError::BadName(name.to_string()));
        }
        let kv_err = |op: &'static str, e: &dyn std::fmt::Display| BusError::Kv { op, key: name.to_string(), detail: e.to_string() };
        for _ in 0..16 {
            let entry = self.agents.entry(name).await.map_err(|e| kv_err("get", &e))?;
            let current = match &entry {
                Some(e) if !e.value.is_empty() => Some((orfeas_wire::from_cbor::<AgentRecord>(&e.value).map_err(|e| kv_err("get", &e))?, e.revision)),
                _ => None,
            };
            let (mut record, revision) = match current {
                Some((record, revision)) => (record, Some(revision)),
                None if create => (AgentRecord::new(name), entry.as_ref().map(|e| e.revision)),
                None => return Err(RegistryError::NoAgent(name.to_string())),
            };
            edit(&mut record)?;
            let bytes = orfeas_wire::to_cbor(&record);
            let written = match revision {
                Some(revision) => match self.agents.update(name, bytes.into(), revision).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(kv_err("update", &e).into()),
                },
                None => match self.agents.create(name, bytes.into()).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(kv_err("create", &e).into()),
                },
            };
            if written {
                return Ok(record);
            }
        }
        Err(RegistryError::Contended(name.to_string()))
    }

    /// The registry entry of agent `name`.
    pub async fn agent(&self, name: &str) -> Result<Option<AgentRecord>, BusError> {
        read(&self.agents, name).await
    }

    /// Every registered agent, by name.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, BusError> {
        use futures::TryStreamExt;
        let kv_err = |e: &dyn std::fmt::Display| BusError::Kv { op: "keys", key: "*".into(), detail: e.to_string() };
        let mut names: Vec<String> = self.agents.keys().await.map_err(|e| kv_err(&e))?.try_collect().await.map_err(|e| kv_err(&e))?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(record) = self.agent(&name).await? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// The active key `kid` of agent `name`, if registered, not revoked and
    /// inside its validity window now.
    pub async fn agent_key(&self, name: &str, kid: &str) -> Result<Option<PublicKey>, BusError> {
        Ok(self.key_status(name, kid).await?.0)
    }

    /// The status of key `kid` of agent `name` now, with the agent's record.
    pub async fn key_status(&self, name: &str, kid: &str) -> Result<(Option<PublicKey>, KeyStatus, Option<AgentRecord>), BusError> {
        let Some(record) = self.agent(name).await? else { return Ok((None, KeyStatus::Unknown, None)) };
        let status = record.key_status(kid, now_ms());
        let key = match &status {
            KeyStatus::Active(k) => Some(*k),
            _ => None,
        };
        Ok((key, status, Some(record)))
    }

    /// Publish this node's event key.
    pub async fn put_node(&self, record: &NodeRecord) -> Result<(), BusError> {
        self.nodes
            .put(&record.node_id, orfeas_wire::to_cbor(record).into())
            .await
            .map(|_| ())
            .map_err(|e| BusError::Kv { op: "put", key: record.node_id.clone(), detail: e.to_string() })
    }

    /// Every node whose record has not expired (live nodes), by id.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, BusError> {
        use futures::TryStreamExt;
        let kv_err = |e: &dyn std::fmt::Display| BusError::Kv { op: "keys", key: "*".into(), detail: e.to_string() };
        let mut keys: Vec<String> = self.nodes.keys().await.map_err(|e| kv_err(&e))?.try_collect().await.map_err(|e| kv_err(&e))?;
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(record) = read::<NodeRecord>(&self.nodes, &key).await? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// The event key of node `node_id`.
    pub async fn node_key(&self, node_id: &str) -> Result<Option<PublicKey>, BusError> {
        let record: Option<NodeRecord> = read(&self.nodes, node_id).await?;
        Ok(record.and_then(|r| PublicKey::from_hex(&r.public_key).ok()))
    }
}

async fn read<T: serde::de::DeserializeOwned>(store: &kv::Store, key: &str) -> Result<Option<T>, BusError> {
    let kv_err = |e: &dyn std::fmt::Display| BusError::Kv { op: "get", key: key.to_string(), detail: e.to_string() };
    match store.get(key).await.map_err(|e| kv_err(&e))? {
        Some(bytes) if !bytes.is_empty() => orfeas_wire::from_cbor(&bytes).map(Some).map_err(|e| kv_err(&e)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orfeas_wire::SecretKey;

    fn record_with(key: &SecretKey) -> AgentRecord {
        let mut record = AgentRecord::new("alice");
        record.keys.push(AgentKey { kid: key.public().id().0, public_key: key.public().to_hex(), revoked: false, not_before_ms: Some(1_000), not_after_ms: Some(5_000), revoked_at_ms: None });
        record
    }

    #[test]
    fn key_windows_and_revocation_decide_the_status() {
        let key = SecretKey::from_seed([5; 32]);
        let kid = key.public().id().0;
        let mut record = record_with(&key);
        assert_eq!(record.key_status(&kid, 3_000), KeyStatus::Active(key.public()));
        assert_eq!(record.key_status(&kid, 999).code(), Some(ErrorCode::UnknownKey));
        assert_eq!(record.key_status(&kid, 5_001).code(), Some(ErrorCode::UnknownKey));
        assert_eq!(record.key_status("0000000000000000", 3_000), KeyStatus::Unknown);
        record.keys[0].revoked = true;
        // Absolute: inside the window too.
        assert_eq!(record.key_status(&kid, 3_000), KeyStatus::Revoked);
        assert_eq!(KeyStatus::Revoked.code(), Some(ErrorCode::RevokedKey));
    }

    #[test]
    fn records_written_before_policy_fields_still_load_with_no_limits() {
        #[derive(Serialize)]
        struct OldKey {
            kid: String,
            public_key: String,
            revoked: bool,
        }
        #[derive(Serialize)]
        struct Old {
            name: String,
            keys: Vec<OldKey>,
        }
        let key = SecretKey::from_seed([6; 32]);
        let old = Old { name: "bob".into(), keys: vec![OldKey { kid: key.public().id().0, public_key: key.public().to_hex(), revoked: false }] };
        let record: AgentRecord = orfeas_wire::from_cbor(&orfeas_wire::to_cbor(&old)).unwrap();
        assert_eq!(record.lane, Lane::Normal);
        assert_eq!((record.requests_per_minute, record.max_concurrent, record.max_image_bytes), (None, None, None));
        assert!(record.allows("submit") && record.allows("cancel"));
        assert_eq!(record.key_status(&key.public().id().0, 0), KeyStatus::Active(key.public()));
        // And a record without policy encodes exactly as before.
        let mut plain = AgentRecord::new("bob");
        plain.keys.push(AgentKey { kid: key.public().id().0, public_key: key.public().to_hex(), revoked: false, not_before_ms: None, not_after_ms: None, revoked_at_ms: None });
        assert_eq!(orfeas_wire::to_cbor(&plain), orfeas_wire::to_cbor(&old));
    }

    #[test]
    fn policy_updates_are_checked() {
        let mut record = AgentRecord::new("carol");
        let update = PolicyUpdate { operations: Some(vec!["submit".into(), "status".into(), "submit".into()]), requests_per_minute: Some(30), max_concurrent: Some(2), lane: Some(Lane::Low), max_image_bytes: Some(1024) };
        update.apply(&mut record).unwrap();
        assert_eq!(record.operations, Some(vec!["status".to_string(), "submit".to_string()]));
        assert!(record.allows("submit") && !record.allows("cancel"));
        assert_eq!((record.requests_per_minute, record.max_concurrent, record.lane, record.max_image_bytes), (Some(30), Some(2), Lane::Low, Some(1024)));
        PolicyUpdate { requests_per_minute: Some(0), ..Default::default() }.apply(&mut record).unwrap();
        assert_eq!(record.requests_per_minute, None, "0 lifts the limit");
        let bad = PolicyUpdate { operations: Some(vec!["launch".into()]), ..Default::default() }.apply(&mut record).unwrap_err();
        assert!(bad.to_string().contains("\"launch\""), "{bad}");
        assert!(PolicyUpdate { operations: Some(vec![]), ..Default::default() }.apply(&mut record).is_err());
    }
}
