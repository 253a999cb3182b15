//! NATS subjects, streams, consumers and buckets. `subjects.md` at the
//! repository root is the catalogue; these functions are its only spelling.

/// Prefix of every subject orfeas uses.
pub const ROOT: &str = "orfeas";
/// Stream holding agents' signed submissions (work queue).
pub const SUBMIT_STREAM: &str = "ORFEAS_SUBMIT";
/// Subjects of [`SUBMIT_STREAM`].
pub const SUBMIT_WILDCARD: &str = "orfeas.jobs.submit.*";
/// Stream holding admitted jobs waiting for a device (work queue).
pub const QUEUE_STREAM: &str = "ORFEAS_QUEUE";
/// Subjects of [`QUEUE_STREAM`]: `orfeas.jobs.queue.<lane>.<agent>` (and
/// `orfeas.jobs.queue.<lane>`, where deployments before per-agent queues
/// published).
pub const QUEUE_WILDCARD: &str = "orfeas.jobs.queue.>";
/// [`QUEUE_STREAM`]'s subjects before per-agent queues (a stream created
/// with them is widened to [`QUEUE_WILDCARD`] in place).
pub const QUEUE_WILDCARD_LANES: &str = "orfeas.jobs.queue.*";
/// Stream keeping events for replay by agents that were not listening.
pub const EVENTS_STREAM: &str = "ORFEAS_EVENTS";
/// Subjects of [`EVENTS_STREAM`].
pub const EVENTS_WILDCARD: &str = "orfeas.events.>";
/// Durable consumer of [`SUBMIT_STREAM`].
pub const INGRESS_CONSUMER: &str = "ingress";
/// Durable consumer of [`QUEUE_STREAM`].
pub const SCHEDULER_CONSUMER: &str = "scheduler";
/// Request/reply: any one node answers `ListModels` with its `ModelList`.
pub const MODELS_LIST: &str = "orfeas.models.list";
/// Queue group the nodes answer [`MODELS_LIST`] in (one answer per request).
pub const NODES_QUEUE_GROUP: &str = "orfeas-nodes";
/// KV bucket: one record per job.
pub const JOBS_BUCKET: &str = "orfeas_jobs";
/// KV bucket: the agent registry.
pub const AGENTS_BUCKET: &str = "orfeas_agents";
/// KV bucket: nodes and their event-signing keys.
pub const NODES_BUCKET: &str = "orfeas_nodes";
/// KV bucket: nonces (`cti`) of verified messages, kept past their window.
pub const NONCES_BUCKET: &str = "orfeas_nonces";
/// KV bucket: per agent, the jobs holding a slot of its concurrency cap.
pub const ACTIVE_BUCKET: &str = "orfeas_active";
/// KV bucket: one record per `submit_batch` (its jobs and refusals).
pub const BATCHES_BUCKET: &str = "orfeas_batches";
/// JetStream object store agents upload images to for submission by
/// reference (`ImageInput::Ref` with `store: jetstream`); object names start
/// with `<agent>/`.
pub const UPLOADS_BUCKET: &str = "orfeas_uploads";
/// Key prefix of uploaded images in the node's configured object store
/// (`ImageInput::Ref` with `store: object_store`): `uploads/<agent>/…`.
pub const UPLOADS_PREFIX: &str = "uploads";

/// Stream holding every node's hash-chained audit records (deny delete,
/// deny purge).
pub const AUDIT_STREAM: &str = "ORFEAS_AUDIT";
/// Subjects of [`AUDIT_STREAM`].
pub const AUDIT_WILDCARD: &str = "orfeas.audit.*";

/// Where node `node` appends its audit chain.
pub fn audit(node: &str) -> String {
    format!("orfeas.audit.{node}")
}

/// Subjects of agents' result fetch requests (request/reply, no stream).
pub const FETCH_WILDCARD: &str = "orfeas.results.fetch.*";
/// Queue group of nodes answering fetch requests from a shared store.
pub const FETCH_QUEUE_GROUP: &str = "orfeas-fetch";

/// Where agent `agent` publishes submissions.
pub fn submit(agent: &str) -> String {
    format!("orfeas.jobs.submit.{agent}")
}

/// Where the events of one job are published.
pub fn events(agent: &str, job_id: &uuid::Uuid) -> String {
    format!("orfeas.events.{agent}.{job_id}")
}

/// Subjects of agents' status requests (request/reply, no stream).
pub const STATUS_WILDCARD: &str = "orfeas.status.*";
/// Subjects of agents' cancel requests (request/reply, no stream).
pub const CANCEL_WILDCARD: &str = "orfeas.cancel.*";
/// Queue group of nodes answering status and cancel requests (one answer each).
pub const REQUESTS_QUEUE_GROUP: &str = "orfeas-requests";

/// Core NATS notice (payload: the job id as text) that an agent canceled a
/// running job, so the node holding it drops it if no device started it.
/// Published by the node that answered the cancel; every node listens.
pub const CONTROL_CANCEL: &str = "orfeas.control.cancel";

/// Core NATS hint (payload: the queue subject) that a job was just queued,
/// so idle nodes pull it at once and busy ones see a new agent before their
/// next look at the queue's counts. Published by Ingress after the PubAck;
/// a lost hint only delays the job until that next look.
pub const CONTROL_QUEUED: &str = "orfeas.control.queued";

/// Where agent `agent` asks for the state of its jobs.
pub fn status(agent: &str) -> String {
    format!("orfeas.status.{agent}")
}

/// Where agent `agent` cancels its jobs.
pub fn cancel(agent: &str) -> String {
    format!("orfeas.cancel.{agent}")
}

/// The agent token of a status or cancel subject, with the operation.
pub fn agent_of_request(subject: &str) -> Option<(&'static str, &str)> {
    let (op, agent) = if let Some(a) = subject.strip_prefix("orfeas.status.") {
        ("status", a)
    } else {
        ("cancel", subject.strip_prefix("orfeas.cancel.")?)
    };
    is_valid_agent_name(agent).then_some((op, agent))
}

/// Where agent `agent` asks for the files of its jobs.
pub fn fetch(agent: &str) -> String {
    format!("orfeas.results.fetch.{agent}")
}

/// The agent token of a fetch subject, if the subject is one.
pub fn agent_of_fetch(subject: &str) -> Option<&str> {
    subject.strip_prefix("orfeas.results.fetch.").filter(|a| is_valid_agent_name(a))
}

/// Where admitted jobs of `agent` in a priority lane wait.
pub fn queue(lane: &str, agent: &str) -> String {
    format!("orfeas.jobs.queue.{lane}.{agent}")
}

/// Where admitted jobs of a priority lane waited before per-agent queues
/// (still drained, never published to).
pub fn queue_lane(lane: &str) -> String {
    format!("orfeas.jobs.queue.{lane}")
}

/// The lane token and, for a per-agent subject, the agent of a queue subject.
pub fn queue_of(subject: &str) -> Option<(&str, Option<&str>)> {
    let rest = subject.strip_prefix("orfeas.jobs.queue.")?;
    match rest.split_once('.') {
        None => (!rest.is_empty()).then_some((rest, None)),
        Some((lane, agent)) => (!lane.is_empty() && is_valid_agent_name(agent)).then_some((lane, Some(agent))),
    }
}

/// The agent token of a submit subject, if the subject is one.
pub fn agent_of_submit(subject: &str) -> Option<&str> {
    subject.strip_prefix("orfeas.jobs.submit.").filter(|a| is_valid_agent_name(a))
}

/// Agent names are subject tokens: 1–64 of `a-z 0-9 _ -`.
pub fn is_valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_of_submit_accepts_only_valid_tokens() {
        assert_eq!(agent_of_submit("orfeas.jobs.submit.alice"), Some("alice"));
        assert_eq!(agent_of_submit("orfeas.jobs.submit.Alice"), None);
        assert_eq!(agent_of_submit("orfeas.jobs.submit."), None);
        assert_eq!(agent_of_submit("orfeas.jobs.queue.normal"), None);
        assert!(!is_valid_agent_name(&"a".repeat(65)));
    }

    #[test]
    fn queue_subjects_name_lane_and_agent() {
        assert_eq!(queue("normal", "alice"), "orfeas.jobs.queue.normal.alice");
        assert_eq!(queue_of(&queue("high", "bob")), Some(("high", Some("bob"))));
        assert_eq!(queue_of(&queue_lane("low")), Some(("low", None)));
        assert_eq!(queue_of("orfeas.jobs.queue.normal.a.b"), None);
        assert_eq!(queue_of("orfeas.jobs.queue."), None);
        assert_eq!(queue_of("orfeas.jobs.submit.alice"), None);
    }

    #[test]
    fn events_subject_names_agent_and_job() {
        let id = uuid::Uuid::nil();
        assert_eq!(events("bob", &id), "orfeas.events.bob.00000000-0000-0000-0000-000000000000");
    }
}
