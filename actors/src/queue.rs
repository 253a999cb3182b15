//! The Scheduler's view of `ORFEAS_QUEUE`: one durable pull consumer per
//! lane, each filtered to `orfeas.jobs.queue.<lane>`, so a node can pull
//! each lane by its own credit (a full normal lane never hides a high job).
//!
//! The normal lane keeps the historical consumer name `scheduler`; a
//! deployment from before lanes has it unfiltered, which a work-queue
//! stream would not allow next to the other lanes' consumers, so it is
//! narrowed to the normal lane first (messages stay in the stream; nothing
//! is lost or redelivered twice by the change).

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy},
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
    subject.strip_prefix("orfeas.jobs.queue.").and_then(Lane::parse)
}

fn config(lane: Lane, settings: &NodeSettings, max_ack_pending: i64) -> pull::Config {
    let name = consumer_name(lane);
    pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        filter_subject: subjects::queue(lane.as_str()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver,
        max_ack_pending,
        num_replicas: settings.replicas,
        ..Default::default()
    }
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
            assert_eq!(lane_of(&subjects::queue(lane.as_str())), Some(lane));
        }
        assert_eq!(lane_of("orfeas.jobs.queue.urgent"), None);
    }
}
