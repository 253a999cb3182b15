//! The Scheduler's view of `ORFEAS_QUEUE`: jobs wait per lane and agent on
//! `orfeas.jobs.queue.<lane>.<agent>`, each subject with its own durable
//! pull consumer `q_<lane>_<agent>` (filters are disjoint, as a work-queue
//! stream requires), created on demand by any node and deleted by JetStream
//! after [`AGENT_CONSUMER_IDLE`] without pulls. A node pulls each lane by
//! its own credit (a full normal lane never hides a high job) and, inside a
//! lane, the agents with a backlog in turn (see [`crate::fair_pull`]), so
//! one agent's burst never fills a node ahead of another agent's job.
//!
//! The lane-wide consumers (`scheduler`, `scheduler_high`, `scheduler_low`,
//! filtered to `orfeas.jobs.queue.<lane>` exactly) stay: they drain what a
//! deployment from before per-agent queues left on the lane subjects, and
//! their filters do not overlap the per-agent ones.
//!
//! The normal lane keeps the historical consumer name `scheduler`; a
//! deployment from before lanes has it unfiltered, which a work-queue
//! stream would not allow next to the other lanes' consumers, so it is
//! narrowed to the normal lane first (messages stay in the stream; nothing
//! is lost or redelivered twice by the change).

use async_nats::jetstream::{
    self,
    consumer::pull,
};
use orfeas_wire::{subjects, v1::Lane};

use crate::{bus::{Bus, BusError}, settings::NodeSettings};

/// The durable consumer of `lane`.
pub fn consumer_name(lane: Lane) -> String {
    match lane {
        Lane::Normal => subjects::SCHEDULER_CONSUMER.to_string(),
        other => format!("{}_{}", subjects::SCHEDULER_CONSUMER, other.as_str()),
    }
}

/// The lane a queue message was published to.
pub fn lane_of(subject: &str) -> Option<Lane> {
    subjects::queue_of(subject).and_then(|(lane, _)| Lane::parse(lane))
}

/// How long a per-agent consumer lives without pulls: far longer than any
/// job is held (so its held messages' acks still reach it), short enough
/// that agents gone quiet do not pile up consumers.
pub const AGENT_CONSUMER_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Where jobs of one lane come from: an agent's subject, or the lane-wide
/// subject of deployments before per-agent queues.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// `orfeas.jobs.queue.<lane>`, consumer [`consumer_name`].
    Lane,
    /// `orfeas.jobs.queue.<lane>.<agent>`, consumer [`agent_consumer_name`].
    Agent(String),
}

/// The lane and source of a queue subject.
pub fn source_of(subject: &str) -> Option<(Lane, Source)> {
    let (lane, agent) = subjects::queue_of(subject)?;
    let lane = Lane::parse(lane)?;
    Some((lane, agent.map_or(Source::Lane, |a| Source::Agent(a.to_string()))))
}

/// The durable consumer of `agent`'s jobs in `lane`.
pub fn agent_consumer_name(lane: Lane, agent: &str) -> String {
    format!("q_{}_{agent}", lane.as_str())
}

/// The consumer of one source of `lane`.
pub fn source_consumer_name(lane: Lane, source: &Source) -> String {
    match source {
        Source::Lane => consumer_name(lane),
        Source::Agent(agent) => agent_consumer_name(lane, agent),
    }
}

/// The config of `agent`'s consumer in `lane` (explicit acks, the node's
/// `ack_wait` and `max_deliver`, deleted after [`AGENT_CONSUMER_IDLE`]).
pub fn agent_config(lane: Lane, agent: &str, settings: &NodeSettings, max_ack_pending: i64) -> pull::Config {
    let name = agent_consumer_name(lane, agent);
    pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        filter_subject: subjects::queue(lane.as_str(), agent),
        inactive_threshold: AGENT_CONSUMER_IDLE,
        ..config(lane, settings, max_ack_pending)
    }
}

/// `agent`'s consumer in `lane`, created when missing.
pub async fn agent_consumer(
    stream: &jetstream::stream::Stream,
    lane: Lane,
    agent: &str,
    settings: &NodeSettings,
    max_ack_pending: i64,
) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
    let name = agent_consumer_name(lane, agent);
    stream.get_or_create_consumer(&name, agent_config(lane, agent, settings, max_ack_pending)).await.map_err(|e| setup_err(&name, e))
}

fn config(lane: Lane, settings: &NodeSettings, max_ack_pending: i64) -> pull::Config {
    pull::Config { filter_subject: subjects::queue_lane(lane.as_str()), ..crate::bus::work_consumer(&consumer_name(lane), settings, max_ack_pending) }
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Setup { what: what.to_string(), detail: e.to_string() }
}

/// The three lane consumers, created when missing (and the pre-lanes
/// consumer narrowed to the normal lane).
pub async fn lane_consumers(
    bus: &Bus,
    settings: &NodeSettings,
    max_ack_pending: i64,
) -> Result<Vec<(Lane, jetstream::consumer::Consumer<pull::Config>)>, BusError> {
    let stream = bus.js.get_stream(subjects::QUEUE_STREAM).await.map_err(|e| setup_err(subjects::QUEUE_STREAM, e))?;
    if let Ok(info) = stream.consumer_info(subjects::SCHEDULER_CONSUMER).await {
        if info.config.filter_subject.is_empty() && info.config.filter_subjects.is_empty() {
            tracing::info!("narrowing the consumer `scheduler` to the normal lane");
            let mut narrowed = config(Lane::Normal, settings, info.config.max_ack_pending);
            narrowed.max_deliver = info.config.max_deliver;
            narrowed.ack_wait = info.config.ack_wait;
            stream.update_consumer(narrowed).await.map_err(|e| setup_err(subjects::SCHEDULER_CONSUMER, e))?;
        }
    }
    let mut out = Vec::with_capacity(Lane::ALL.len());
    for lane in Lane::ALL {
        let name = consumer_name(lane);
        let consumer = match stream.get_consumer::<pull::Config>(&name).await {
            Ok(consumer) => consumer,
            Err(_) => stream.get_or_create_consumer(&name, config(lane, settings, max_ack_pending)).await.map_err(|e| setup_err(&name, e))?,
        };
        out.push((lane, consumer));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_name_their_consumers_and_subjects() {
        assert_eq!(consumer_name(Lane::Normal), "scheduler");
        assert_eq!(consumer_name(Lane::High), "scheduler_high");
        assert_eq!(consumer_name(Lane::Low), "scheduler_low");
        for lane in Lane::ALL {
            assert_eq!(lane_of(&subjects::queue_lane(lane.as_str())), Some(lane));
            assert_eq!(lane_of(&subjects::queue(lane.as_str(), "ann")), Some(lane));
            assert_eq!(source_of(&subjects::queue(lane.as_str(), "ann")), Some((lane, Source::Agent("ann".into()))));
            assert_eq!(source_of(&subjects::queue_lane(lane.as_str())), Some((lane, Source::Lane)));
        }
        assert_eq!(lane_of("orfeas.jobs.queue.urgent"), None);
        assert_eq!(lane_of("orfeas.jobs.queue.urgent.ann"), None);
        assert_eq!(agent_consumer_name(Lane::High, "ann"), "q_high_ann");
        assert_eq!(source_consumer_name(Lane::Normal, &Source::Lane), "scheduler");
    }
}
