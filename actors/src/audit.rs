//! The audit trail: every admission decision (`accepted`, `rejected`) and
//! every terminal state (`completed`, `failed`, including `canceled`) a
//! node announces, appended to the stream `ORFEAS_AUDIT` (file, limits,
//! **deny delete, deny purge**: nothing can be taken out through NATS).
//!
//! - Hash chain: each node writes its own chain on `orfeas.audit.<node>`.
//!   Record `i` carries `index = i` and `prev` = SHA-256 of the exact bytes
//!   of record `i - 1` of that chain (64 zeros for the first). Per-node
//!   chains need no coordination between nodes; each append is published
//!   with `Nats-Expected-Last-Subject-Sequence`, so a second writer on the
//!   same chain (or a forged record) makes the append fail, and the node
//!   re-reads the chain's last record and chains onto it — `orfeas audit
//!   verify` then shows the foreign record as a break.
//! - What is checked (`verify`): every record decodes, names the chain it
//!   is on, has the next index (a lower one is a duplicate or modified
//!   copy, a higher one means records are missing) and the hash of its
//!   predecessor.
//! - Written by one task per node after the event's PubAck (so the record
//!   follows the decision it reports, in the node's order); not an actor.
//!   A node that dies between an event and its record loses that record
//!   (the chain has no gap; the event stream still has the event).

use std::collections::BTreeMap;

use async_nats::{jetstream, HeaderMap};
use orfeas_wire::{subjects, v1::EventKind, ErrorCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::now_ms;

/// Records waiting to be written at most (the event publisher waits beyond).
const QUEUE: usize = 4096;
/// `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record (CBOR on `orfeas.audit.<node>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The node whose chain this is.
    pub node: String,
    /// Position in the node's chain, from 0.
    pub index: u64,
    /// SHA-256 (hex) of the previous record's bytes; [`GENESIS`] for index 0.
    pub prev: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// The agent the decision is about.
    pub agent: String,
    /// The job (nil when a refused message had no readable job id).
    pub job_id: Uuid,
    /// `accepted`, `rejected`, `completed` or `failed`.
    pub decision: String,
    /// The event's `seq`.
    pub seq: u64,
    /// The code of a refusal or failure.
    #[serde(default)]
    pub code: Option<ErrorCode>,
    /// Its sentence.
    #[serde(default)]
    pub error: Option<String>,
}

/// What goes into a record (the chain fields are added by the writer).
#[derive(Clone, Debug)]
pub struct Entry {
    /// The agent.
    pub agent: String,
    /// The job.
    pub job_id: Uuid,
    /// Event seq.
    pub seq: u64,
    /// What happened.
    pub decision: &'static str,
    /// Refusal or failure.
    pub failure: Option<(ErrorCode, String)>,
}

impl Entry {
    /// The entry for an event, if it is a decision or a terminal state.
    pub fn for_event(agent: &str, job_id: Uuid, seq: u64, kind: &EventKind) -> Option<Self> {
        let failure = match kind {
            EventKind::Progress { .. } => return None,
            EventKind::Accepted { .. } | EventKind::Completed { .. } => None,
            EventKind::Failed(f) | EventKind::Rejected(f) => Some((f.code, f.error.clone())),
        };
        Some(Self { agent: agent.to_string(), job_id, seq, decision: kind.name(), failure })
    }
}

/// SHA-256 of a record's bytes, hex.
pub fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Handle to a node's audit writer.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Entry>,
}

impl Auditor {
    /// Start the writer of `node_id`'s chain.
    pub fn spawn(js: jetstream::Context, node_id: &str) -> Self {
        let (tx, mut rx) = mpsc::channel::<Entry>(QUEUE);
        let node = node_id.to_string();
        tokio::spawn(async move {
            let subject = subjects::audit(&node);
            let mut head: Option<(u64, String, u64)> = None;
            while let Some(entry) = rx.recv().await {
                let mut attempts = 0u32;
                loop {
                    let (index, prev, last_seq) = match &head {
                        Some(h) => h.clone(),
                        None => match chain_head(&js, &subject).await {
                            Ok(h) => h,
                            Err(e) => {
                                tracing::warn!(error = %e, "audit chain unreadable; retrying");
                                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                                continue;
                            }
                        },
                    };
                    let record = AuditRecord {
                        node: node.clone(),
                        index,
                        prev,
                        at_ms: now_ms(),
                        agent: entry.agent.clone(),
                        job_id: entry.job_id,
                        decision: entry.decision.to_string(),
                        seq: entry.seq,
                        code: entry.failure.as_ref().map(|f| f.0),
                        error: entry.failure.as_ref().map(|f| f.1.clone()),
                    };
                    let bytes = orfeas_wire::to_cbor(&record);
                    let mut headers = HeaderMap::new();
                    headers.insert("Nats-Expected-Last-Subject-Sequence", last_seq.to_string().as_str());
                    let acked = match js.publish_with_headers(subject.clone(), headers, bytes.clone().into()).await {
                        Ok(ack) => ack.await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match acked {
                        Ok(ack) => {
                            head = Some((index + 1, hash(&bytes), ack.sequence));
                            crate::metrics::AUDIT_RECORDS.inc();
                            break;
                        }
                        Err(e) => {
                            // Someone else wrote on this chain, or NATS is
                            // away: read the head again and retry.
                            attempts += 1;
                            head = None;
                            tracing::warn!(error = %e, attempts, "audit record not written; retrying");
                            if attempts > 3 {
                                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                            }
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Queue a record (waits when the writer is far behind).
    pub async fn append(&self, entry: Entry) {
        let _ = self.tx.send(entry).await;
    }
}

/// `(next index, prev hash, last subject sequence)` of the chain on `subject`.
async fn chain_head(js: &jetstream::Context, subject: &str) -> Result<(u64, String, u64), String> {
    let stream = js.get_stream(subjects::AUDIT_STREAM).await.map_err(|e| e.to_string())?;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => {
            let record: AuditRecord = orfeas_wire::from_cbor(&message.payload)?;
            Ok((record.index + 1, hash(&message.payload), message.sequence))
        }
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok((0, GENESIS.to_string(), 0)),
        Err(e) => Err(e.to_string()),
    }
}

/// The outcome of checking the audit stream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Records per chain (node).
    pub chains: BTreeMap<String, u64>,
    /// Every break found, in stream order.
    pub problems: Vec<String>,
}

/// Check every chain in `messages` (`(subject, stream sequence, bytes)` in
/// stream order).
pub fn verify(messages: impl IntoIterator<Item = (String, u64, Vec<u8>)>) -> Verdict {
    let mut verdict = Verdict::default();
    // Per subject: (next index, hash of the last record).
    let mut heads: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for (subject, sequence, bytes) in messages {
        let record: AuditRecord = match orfeas_wire::from_cbor(&bytes) {
            Ok(r) => r,
            Err(e) => {
                verdict.problems.push(format!("stream sequence {sequence} on {subject}: not an audit record ({e})"));
                continue;
            }
        };
        if subject != subjects::audit(&record.node) {
            verdict.problems.push(format!("stream sequence {sequence}: record of node {:?} on {subject}", record.node));
        }
        let (want_index, want_prev) = heads.get(&subject).cloned().unwrap_or((0, GENESIS.to_string()));
        if record.index < want_index {
            verdict.problems.push(format!("stream sequence {sequence} on {subject}: index {} again after {} (duplicate or modified copy)", record.index, want_index - 1));
        } else if record.index > want_index {
            verdict.problems.push(format!("stream sequence {sequence} on {subject}: records {want_index}..{} are missing", record.index - 1));
        } else if record.prev != want_prev {
            verdict.problems.push(format!("stream sequence {sequence} on {subject}: record {} does not chain to record {} (modified)", record.index, want_index.wrapping_sub(1)));
        }
        *verdict.chains.entry(record.node.clone()).or_insert(0) += 1;
        heads.insert(subject, (record.index + 1, hash(&bytes)));
    }
    verdict
}

/// Read the whole audit stream and [`verify`] it.
pub async fn verify_stream(js: &jetstream::Context) -> Result<Verdict, String> {
    let mut stream = js.get_stream(subjects::AUDIT_STREAM).await.map_err(|e| e.to_string())?;
    let info = stream.info().await.map_err(|e| e.to_string())?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut messages = Vec::new();
    let mut missing = Vec::new();
    if info.state.messages > 0 {
        for sequence in first..=last {
            match stream.get_raw_message(sequence).await {
                Ok(m) => messages.push((m.subject.to_string(), m.sequence, m.payload.to_vec())),
                Err(e) => missing.push(format!("stream sequence {sequence} cannot be read: {e}")),
            }
        }
    }
    let mut verdict = verify(messages);
    missing.extend(verdict.problems);
    verdict.problems = missing;
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(node: &str, n: u64) -> Vec<(String, u64, Vec<u8>)> {
        let mut prev = GENESIS.to_string();
        let mut out = Vec::new();
        for index in 0..n {
            let record = AuditRecord { node: node.into(), index, prev: prev.clone(), at_ms: index, agent: "a".into(), job_id: Uuid::nil(), decision: "accepted".into(), seq: 0, code: None, error: None };
            let bytes = orfeas_wire::to_cbor(&record);
            prev = hash(&bytes);
            out.push((subjects::audit(node), index + 1, bytes));
        }
        out
    }

    #[test]
    fn intact_chains_verify() {
        let mut all = chain("n1", 3);
        all.extend(chain("n2", 2));
        let verdict = verify(all);
        assert_eq!(verdict.problems, Vec::<String>::new());
        assert_eq!(verdict.chains, BTreeMap::from([("n1".to_string(), 3), ("n2".to_string(), 2)]));
    }

    #[test]
    fn modified_missing_and_duplicate_records_are_found() {
        // Modified: a byte of record 1 changes, so record 2 no longer chains.
        let mut modified = chain("n1", 3);
        let mut record: AuditRecord = orfeas_wire::from_cbor(&modified[1].2).unwrap();
        record.decision = "rejected".into();
        modified[1].2 = orfeas_wire::to_cbor(&record);
        let problems = verify(modified).problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("record 2 does not chain to record 1"), "{problems:?}");
        // Missing: record 1 is gone.
        let mut gap = chain("n1", 3);
        gap.remove(1);
        let problems = verify(gap).problems;
        assert!(problems.len() == 1 && problems[0].contains("records 1..1 are missing"), "{problems:?}");
        // A copy appended again.
        let mut copy = chain("n1", 2);
        copy.push(copy[0].clone());
        assert!(verify(copy).problems[0].contains("index 0 again"));
        // A record of one node on another's chain.
        let mut foreign = chain("n1", 1);
        foreign[0].0 = subjects::audit("n2");
        assert!(verify(foreign).problems[0].contains("record of node \"n1\""));
    }
}
