//! The agent registry (`orfeas_agents`) and node keys (`orfeas_nodes`).
//! Agents are looked up by name and key id; only listed, unrevoked keys
//! verify anything.

use async_nats::jetstream::kv;
pub use orfeas_wire::v1::NodeRecord;
use orfeas_wire::{keys::KeyError, PublicKey};
use serde::{Deserialize, Serialize};

use crate::bus::BusError;

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
}

/// An agent's registry entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Agent name (the subject token).
    pub name: String,
    /// Its keys.
    pub keys: Vec<AgentKey>,
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
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Typed access to the registry buckets.
#[derive(Clone)]
pub struct Registry {
    agents: kv::Store,
    nodes: kv::Store,
}

impl Registry {
    /// Wrap the buckets.
    pub fn new(agents: kv::Store, nodes: kv::Store) -> Self {
        Self { agents, nodes }
    }

    /// Register `public_key` for agent `name` (creating the agent if new).
    pub async fn add_agent_key(&self, name: &str, public_key: &str) -> Result<AgentRecord, RegistryError> {
        if !orfeas_wire::subjects::is_valid_agent_name(name) {
            return Err(RegistryError::BadName(name.to_string()));
        }
        let key = PublicKey::from_hex(public_key)?;
        let mut record = self.agent(name).await?.unwrap_or(AgentRecord { name: name.to_string(), keys: vec![] });
        let kid = key.id().0;
        if !record.keys.iter().any(|k| k.kid == kid) {
            record.keys.push(AgentKey { kid, public_key: key.to_hex(), revoked: false });
        }
        self.agents
            .put(name, orfeas_wire::to_cbor(&record).into())
            .await
            .map_err(|e| BusError::Kv { op: "put", key: name.to_string(), detail: e.to_string() })?;
        Ok(record)
    }

    /// The registry entry of agent `name`.
    pub async fn agent(&self, name: &str) -> Result<Option<AgentRecord>, BusError> {
        read(&self.agents, name).await
    }

    /// The active key `kid` of agent `name`, if registered and not revoked.
    pub async fn agent_key(&self, name: &str, kid: &str) -> Result<Option<PublicKey>, BusError> {
        let Some(record) = self.agent(name).await? else { return Ok(None) };
        Ok(record
            .keys
            .iter()
            .find(|k| k.kid == kid && !k.revoked)
            .and_then(|k| PublicKey::from_hex(&k.public_key).ok()))
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
