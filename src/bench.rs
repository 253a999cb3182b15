//! `orfeas bench`: drive a node or a cluster as N agents with their own
//! keys and measure what agents get — throughput, submit → accepted and
//! submit → terminal latency percentiles, rejections by code, and the batch
//! sizes the nodes formed. Closed loop (`--concurrency`: each worker keeps
//! one job in flight) or open loop (`--rate`: submissions on a fixed
//! schedule, whatever the answers). With no NATS given it runs against the
//! embedded setup (child nats-server + an in-process node), like `generate`.
//!
//! `--raw` adds the floor in the same run: raw JetStream publish (PubAck
//! awaited) + pull consume (acked) of messages the size of one signed
//! submission, on a throwaway stream of the same storage kind.
//!
//! Events are decoded, not verified: signature checks are the agent's cost,
//! and on one shared machine they would be charged to the system.

use std::{
    collections::{BTreeMap, HashMap},
    io::Cursor,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use async_nats::{
    jetstream::{self, consumer::pull, stream::StorageType},
    HeaderMap,
};
use futures::StreamExt;
use orfeas_actors::{bus::Bus, node, registry::Registry};
use orfeas_wire::{
    envelope::{self, ContentKind},
    v1::{Event, EventKind, ImageInput, SubmitJob, MAX_LIFETIME_S},
    SecretKey,
};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::oneshot,
};
use uuid::Uuid;

use crate::{agent, cli::BenchArgs, config::Config};

/// Latency summary in milliseconds.
#[derive(Debug, Serialize, Default)]
pub struct Percentiles {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        // Nearest-rank percentiles: every reported value was observed.
        let rank = |p: f64| {
            samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        Self {
            n: samples.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: *samples.last().expect("not empty"),
        }
    }
}

/// What the system did with the measured jobs.
#[derive(Debug, Serialize)]
pub struct SystemReport {
    /// `closed`, `open` (evenly spaced) or `poisson` (open loop, Poisson arrivals).
    pub mode: &'static str,
    /// Closed loop: jobs in flight.
    pub concurrency: Option<usize>,
    /// Open loop: submissions per second.
    pub rate: Option<f64>,
    /// Agents (each with its own key).
    pub agents: usize,
    /// Model.
    pub model: String,
    /// Measured submissions (warmup excluded).
    pub submitted: u64,
    /// Answered `completed`.
    pub completed: u64,
    /// Answered `failed`.
    pub failed: u64,
    /// Answered `rejected`, or refused at publish.
    pub rejected: u64,
    /// No terminal answer within the timeout.
    pub unanswered: u64,
    /// Terminal answers seen more than once for one job.
    pub duplicate_terminals: u64,
    /// Failed / rejected by code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// First measured submission to last terminal answer.
    pub duration_s: f64,
    /// Completed jobs per second over `duration_s`.
    pub throughput_jobs_s: f64,
    /// Submit → `accepted` (ms).
    pub accepted_ms: Percentiles,
    /// Submit → `completed` (ms).
    pub completed_ms: Percentiles,
    /// Forward passes by batch size (upper bucket bound → passes) during the
    /// measured phase, from the nodes' `orfeas_batch_size` histogram.
    pub batch_sizes: BTreeMap<String, u64>,
    /// Jobs per forward pass, mean.
    pub batch_mean: f64,
    /// Jobs that went through a forward pass (histogram sum).
    pub batch_items: u64,
}

/// The raw JetStream floor.
#[derive(Debug, Serialize)]
pub struct RawReport {
    /// Messages published and consumed.
    pub messages: u64,
    /// Bytes per message.
    pub message_bytes: usize,
    /// Publishes in flight at most.
    pub window: usize,
    /// First publish to last ack.
    pub duration_s: f64,
    /// Messages per second, publish + consume.
    pub throughput_msgs_s: f64,
    /// Publish → consumed (ms).
    pub latency_ms: Percentiles,
}

/// Everything one `orfeas bench` run measured.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// Host facts.
    pub host: String,
    /// The system run.
    pub system: SystemReport,
    /// The raw floor, when asked for.
    pub raw: Option<RawReport>,
    /// System ÷ raw throughput.
    pub system_over_raw: Option<f64>,
}

#[derive(Default)]
struct JobTimes {
    submitted: Option<Instant>,
    accepted: Option<Instant>,
    terminal: Option<(Instant, &'static str, Option<String>)>,
    terminals: u32,
    waiter: Option<oneshot::Sender<()>>,
}

/// Per-job times, filled by the event readers.
#[derive(Default)]
struct Tracker {
    jobs: Mutex<HashMap<Uuid, JobTimes>>,
}

impl Tracker {
    fn start(&self, job_id: Uuid) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let times = JobTimes {
            submitted: Some(Instant::now()),
            waiter: Some(tx),
            ..Default::default()
        };
        self.jobs
            .lock()
            .expect("tracker lock")
            .insert(job_id, times);
        rx
    }

    fn publish_refused(&self, job_id: Uuid, code: &str) {
        let mut jobs = self.jobs.lock().expect("tracker lock");
        if let Some(times) = jobs.get_mut(&job_id) {
            times.terminal = Some((Instant::now(), "rejected", Some(code.to_string())));
            times.terminals += 1;
            if let Some(waiter) = times.waiter.take() {
                let _ = waiter.send(());
            }
        }
    }

    fn event(&self, event: &Event) {
        let now = Instant::now();
        let mut jobs = self.jobs.lock().expect("tracker lock");
        let Some(times) = jobs.get_mut(&event.job_id) else {
            return;
        };
        match &event.kind {
            EventKind::Accepted { .. } => {
                times.accepted.get_or_insert(now);
            }
            EventKind::Progress { .. } => {}
            kind => {
                let code = match kind {
                    EventKind::Failed(f) | EventKind::Rejected(f) => {
                        Some(f.code.as_str().to_string())
                    }
                    _ => None,
                };
                times.terminals += 1;
                if times.terminal.is_none() {
                    times.terminal = Some((now, kind.name(), code));
                }
                if let Some(waiter) = times.waiter.take() {
                    let _ = waiter.send(());
                }
            }
        }
    }

    fn forget(&self) {
        self.jobs.lock().expect("tracker lock").clear();
    }
}

struct Agent {
    name: String,
    key: SecretKey,
}

struct Driver {
    js: jetstream::Context,
    tracker: Arc<Tracker>,
    agents: Vec<Agent>,
    audience: String,
    template: SubmitJob,
    next: AtomicU64,
}

impl Driver {
    /// Sign and publish one job as the next agent (round robin).
    async fn submit(&self) -> (Uuid, oneshot::Receiver<()>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let agent = &self.agents[(n % self.agents.len() as u64) as usize];
        let mut job = self.template.clone();
        job.job_id = Uuid::now_v7();
        let now_s = orfeas_actors::now_ms() / 1000;
        let (subject, bytes) = job.seal(
            &agent.name,
            &agent.key,
            &self.audience,
            now_s,
            MAX_LIFETIME_S / 2,
        );
        let done = self.tracker.start(job.job_id);
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{}:{}", agent.name, job.job_id).as_str(),
        );
        let published = match self
            .js
            .publish_with_headers(subject, headers, bytes.into())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = published {
            // A full submit stream refuses at publish: the agent's 503.
            let code = if e.contains("maximum messages") || e.contains("10077") {
                "unavailable"
            } else {
                "publish_failed"
            };
            self.tracker.publish_refused(job.job_id, code);
        }
        (job.job_id, done)
    }
}

/// Run the benchmark.
pub async fn run(config: Config, args: BenchArgs) -> Result<BenchReport> {
    if args.agents == 0 {
        bail!("--agents must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r > 0.0)) {
        bail!("--rate must be positive");
    }
    let (embedded, url) = crate::embedded::server_or_embedded(&config, args.nats.as_deref()).await?;
    let scratch = tempfile::Builder::new().prefix("orfeas-bench-").tempdir()?;
    let mut metrics_urls = args.metrics.clone();
    let local_node = if embedded.is_some() {
        let mut settings = config.node_settings(&url, scratch.path().join("store"))?;
        settings.http_listen = Some("127.0.0.1:0".parse().expect("literal address"));
        let node = node::start(settings).await.context("starting the node")?;
        if let Some(addr) = node.http_addr() {
            metrics_urls.push(format!("http://{addr}/metrics"));
        }
        Some(node)
    } else {
        None
    };
    let outcome = measure(&config, &args, &url, &metrics_urls).await;
    if let Some(node) = local_node {
        node.stop().await;
    }
    drop(embedded);
    outcome
}

async fn measure(
    config: &Config,
    args: &BenchArgs,
    url: &str,
    metrics_urls: &[String],
) -> Result<BenchReport> {
    let client = orfeas_actors::bus::connect(url, "orfeas-bench").await?;
    let bus = Bus::attach(client.clone()).await?;
    let registry = Registry::new(bus.agents.clone(), bus.nodes.clone());
    let run_id = &Uuid::new_v4().simple().to_string()[..6];
    let mut agents = Vec::with_capacity(args.agents);
    for i in 0..args.agents {
        let key = SecretKey::generate();
        let name = format!("bench-{run_id}-{i}");
        registry
            .add_agent_key(&name, &key.public().to_hex())
            .await?;
        agents.push(Agent { name, key });
    }
    let tracker = Arc::new(Tracker::default());
    let mut readers = Vec::new();
    for agent in &agents {
        let mut events = client
            .subscribe(format!("orfeas.events.{}.>", agent.name))
            .await?;
        let tracker = tracker.clone();
        readers.push(tokio::spawn(async move {
            while let Some(message) = events.next().await {
                let Ok(opened) = envelope::open(&message.payload, 1 << 20, ContentKind::Event)
                else {
                    continue;
                };
                if let Ok(event) = orfeas_wire::from_cbor::<Event>(&opened.payload) {
                    tracker.event(&event);
                }
            }
        }));
    }
    client.flush().await?;
    let image = match &args.image {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => default_image(),
    };
    let media_type = match &args.image {
        Some(path) => agent::media_type(&image, path)?,
        None => "image/png",
    };
    let template = SubmitJob {
        job_id: Uuid::nil(),
        model: args.model.clone(),
        image: ImageInput::Inline {
            media_type: media_type.into(),
            data: image,
        },
        formats: agent::formats(&args.format)?,
        params: args.shape.params(),
    };
    let driver = Arc::new(Driver {
        js: jetstream::new(client.clone()),
        tracker: tracker.clone(),
        agents,
        audience: config.node.deployment.clone(),
        template,
        next: AtomicU64::new(0),
    });
    let timeout = Duration::from_secs(args.timeout_s);
    if args.warmup > 0 {
        closed_loop(
            &driver,
            args.concurrency.min(args.warmup as usize).max(1),
            Some(args.warmup),
            None,
            timeout,
        )
        .await;
        tracker.forget();
    }
    let before = scrape_batches(metrics_urls, &args.model).await?;
    let started = Instant::now();
    let deadline = args
        .duration_s
        .map(|s| started + Duration::from_secs_f64(s));
    let jobs = if deadline.is_some() {
        None
    } else {
        Some(args.jobs)
    };
    let submitted = match args.rate {
        Some(rate) => open_loop(&driver, rate, args.poisson_seed, jobs, deadline, timeout).await,
        None => closed_loop(&driver, args.concurrency, jobs, deadline, timeout).await,
    };
    let after = scrape_batches(metrics_urls, &args.model).await?;
    for reader in readers {
        reader.abort();
    }
    let system = summarize(args, &tracker, submitted, started, before, after);
    let raw = if args.raw {
        let message_bytes = driver
            .template
            .seal(
                &driver.agents[0].name,
                &driver.agents[0].key,
                &driver.audience,
                0,
                60,
            )
            .1
            .len();
        Some(raw_floor(&client, message_bytes, args.raw_messages, args.raw_window).await?)
    } else {
        None
    };
    let system_over_raw = raw
        .as_ref()
        .map(|r| system.throughput_jobs_s / r.throughput_msgs_s);
    Ok(BenchReport {
        at_ms: orfeas_actors::now_ms(),
        host: host(),
        system,
        raw,
        system_over_raw,
    })
}

/// `workers` jobs in flight until `jobs` were submitted or `deadline`.
async fn closed_loop(
    driver: &Arc<Driver>,
    workers: usize,
    jobs: Option<u64>,
    deadline: Option<Instant>,
    timeout: Duration,
) -> u64 {
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let driver = driver.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if jobs.is_some_and(|j| n >= j) {
                    issued.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                let (_, done) = driver.submit().await;
                let _ = tokio::time::timeout(timeout, done).await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    issued.load(Ordering::Relaxed)
}

/// Submit at `rate` per second until `jobs` or `deadline` (evenly spaced,
/// or Poisson arrivals from `poisson` as seed); then wait for the answers
/// (each at most `timeout`).
async fn open_loop(
    driver: &Arc<Driver>,
    rate: f64,
    poisson: Option<u64>,
    jobs: Option<u64>,
    deadline: Option<Instant>,
    timeout: Duration,
) -> u64 {
    let started = Instant::now();
    let mut sent = 0u64;
    let mut waiting = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut arrivals = poisson.map(|seed| PoissonArrivals { state: seed, next_s: 0.0, rate, count: 0 });
    loop {
        tick.tick().await;
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) || jobs.is_some_and(|j| sent >= j) {
            break;
        }
        // Catch up to the schedule: the rate holds even when ticks slip.
        let elapsed = now.duration_since(started).as_secs_f64();
        let due = match arrivals.as_mut() {
            Some(a) => a.due(elapsed),
            None => (elapsed * rate) as u64 + 1,
        };
        let due = jobs.map_or(due, |j| due.min(j));
        while sent < due {
            let driver = driver.clone();
            waiting.push(tokio::spawn(async move {
                let (_, done) = driver.submit().await;
                let _ = tokio::time::timeout(timeout, done).await;
            }));
            sent += 1;
        }
    }
    for task in waiting {
        let _ = task.await;
    }
    sent
}

/// Arrival times of a Poisson process: exponential gaps of mean 1 / rate.
struct PoissonArrivals {
    state: u64,
    next_s: f64,
    rate: f64,
    count: u64,
}

impl PoissonArrivals {
    /// Arrivals at or before `elapsed` seconds.
    fn due(&mut self, elapsed: f64) -> u64 {
        while self.next_s <= elapsed {
            self.count += 1;
            // SplitMix64 → uniform in (0, 1] → exponential gap.
            self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let u = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
            self.next_s += -(1.0 - u).ln() / self.rate;
        }
        self.count
    }
}

fn summarize(
    args: &BenchArgs,
    tracker: &Tracker,
    submitted: u64,
    started: Instant,
    before: BTreeMap<String, f64>,
    after: BTreeMap<String, f64>,
) -> SystemReport {
    let jobs = tracker.jobs.lock().expect("tracker lock");
    let (mut completed, mut failed, mut rejected, mut unanswered, mut duplicates) = (0, 0, 0, 0, 0);
    let mut errors_by_code = BTreeMap::new();
    let mut accepted_ms = Vec::new();
    let mut completed_ms = Vec::new();
    let mut last = started;
    for times in jobs.values() {
        let Some(submitted_at) = times.submitted else {
            continue;
        };
        if let Some(accepted) = times.accepted {
            accepted_ms.push(accepted.duration_since(submitted_at).as_secs_f64() * 1000.0);
        }
        duplicates += u64::from(times.terminals.saturating_sub(1));
        match &times.terminal {
            None => unanswered += 1,
            Some((at, kind, code)) => {
                last = last.max(*at);
                match *kind {
                    "completed" => {
                        completed += 1;
                        completed_ms.push(at.duration_since(submitted_at).as_secs_f64() * 1000.0);
                    }
                    "failed" => failed += 1,
                    _ => rejected += 1,
                }
                if let Some(code) = code {
                    *errors_by_code.entry(code.clone()).or_insert(0) += 1;
                }
            }
        }
    }
    let duration_s = last.duration_since(started).as_secs_f64();
    let mut batch_sizes = BTreeMap::new();
    let mut previous = 0.0;
    for (le, count) in &after {
        if le == "sum" || le == "count" {
            continue;
        }
        let cumulative = count - before.get(le).copied().unwrap_or(0.0);
        let passes = (cumulative - previous).round().max(0.0) as u64;
        previous = cumulative;
        if passes > 0 {
            batch_sizes.insert(le.clone(), passes);
        }
    }
    let delta =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let (passes, items) = (delta("count"), delta("sum"));
    SystemReport {
        mode: if args.poisson_seed.is_some() {
            "poisson"
        } else if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        concurrency: args.rate.is_none().then_some(args.concurrency),
        rate: args.rate,
        agents: args.agents,
        model: args.model.clone(),
        submitted,
        completed,
        failed,
        rejected,
        unanswered,
        duplicate_terminals: duplicates,
        errors_by_code,
        duration_s,
        throughput_jobs_s: if duration_s > 0.0 {
            completed as f64 / duration_s
        } else {
            0.0
        },
        accepted_ms: Percentiles::of(accepted_ms),
        completed_ms: Percentiles::of(completed_ms),
        batch_sizes,
        batch_mean: if passes > 0.0 { items / passes } else { 0.0 },
        batch_items: items.round() as u64,
    }
}

/// `orfeas_batch_size` of `model` summed over every node: bucket bound →
/// cumulative count, plus `sum` and `count`. Buckets are keyed so that they
/// sort numerically (zero-padded).
async fn scrape_batches(urls: &[String], model: &str) -> Result<BTreeMap<String, f64>> {
    let mut total = BTreeMap::new();
    for url in urls {
        let text = http_get(url)
            .await
            .with_context(|| format!("scraping {url}"))?;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("orfeas_batch_size") else {
                continue;
            };
            if !rest.contains(&format!("model=\"{model}\"")) {
                continue;
            }
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            let key = if rest.starts_with("_sum") {
                "sum".to_string()
            } else if rest.starts_with("_count") {
                "count".to_string()
            } else if let Some(le) = rest.split("le=\"").nth(1).and_then(|s| s.split('"').next()) {
                match le.parse::<f64>() {
                    Ok(bound) => format!("{bound:06}"),
                    Err(_) => "+Inf".to_string(),
                }
            } else {
                continue;
            };
            *total.entry(key).or_insert(0.0) += value;
        }
    }
    Ok(total)
}

/// A plain HTTP/1.1 GET (the metrics endpoint is ours and local).
async fn http_get(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// metrics URLs")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

/// Publish `messages` of `bytes` each on a throwaway file stream with at
/// most `window` PubAcks outstanding, while a pull consumer acks them.
async fn raw_floor(
    client: &async_nats::Client,
    bytes: usize,
    messages: u64,
    window: usize,
) -> Result<RawReport> {
    let js = jetstream::new(client.clone());
    let name = format!("ORFEAS_BENCH_RAW_{}", Uuid::new_v4().simple());
    let subject = format!("orfeas.bench.raw.{}", &name[17..]);
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating {name}: {e}"))?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("consumer: {e}"))?;
    let epoch = Instant::now();
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(messages as usize);
        let mut stream = consumer
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        while (latencies.len() as u64) < messages {
            let Some(message) = stream.next().await else {
                break;
            };
            let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
            let sent_ns = u64::from_le_bytes(message.payload[..8].try_into().expect("8 bytes"));
            latencies
                .push((epoch.elapsed().as_nanos() as u64).saturating_sub(sent_ns) as f64 / 1e6);
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok(latencies)
    });
    let mut pending = futures::stream::FuturesUnordered::<
        <jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture,
    >::new();
    for _ in 0..messages {
        if pending.len() >= window {
            if let Some(ack) = pending.next().await {
                ack.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        let mut payload = vec![0u8; bytes.max(8)];
        payload[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
        let ack = js
            .publish(subject.clone(), payload.into())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        pending.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(ack) = pending.next().await {
        ack.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let latencies = consume.await??;
    let duration_s = started.elapsed().as_secs_f64();
    let _ = js.delete_stream(&name).await;
    Ok(RawReport {
        messages,
        message_bytes: bytes,
        window,
        duration_s,
        throughput_msgs_s: messages as f64 / duration_s,
        latency_ms: Percentiles::of(latencies),
    })
}

/// A 96² PNG of a red disc on white: small, valid for every built-in model.
fn default_image() -> Vec<u8> {
    let image = image::RgbaImage::from_fn(96, 96, |x, y| {
        let (dx, dy) = (x as f32 - 48.0, y as f32 - 48.0);
        if dx * dx + dy * dy < 30.0 * 30.0 {
            image::Rgba([200, 40, 30, 255])
        } else {
            image::Rgba([255, 255, 255, 255])
        }
    });
    let mut png = Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .expect("in-memory PNG");
    png.into_inner()
}

fn host() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpus} cpus, {model}")
}

/// Human-readable report.
pub fn print(report: &BenchReport) {
    let s = &report.system;
    let load = match (s.concurrency, s.rate) {
        (Some(c), _) => format!("closed loop, {c} in flight"),
        (_, Some(r)) if s.mode == "poisson" => format!("open loop, Poisson arrivals at {r} jobs/s"),
        (_, Some(r)) => format!("open loop, {r} jobs/s"),
        _ => String::new(),
    };
    println!(
        "orfeas bench: model {}, {} agents, {load} ({})",
        s.model, s.agents, report.host
    );
    println!(
        "  jobs        {} submitted, {} completed, {} failed, {} rejected, {} unanswered, {} duplicate answers",
        s.submitted, s.completed, s.failed, s.rejected, s.unanswered, s.duplicate_terminals
    );
    println!(
        "  throughput  {:.1} jobs/s over {:.2} s",
        s.throughput_jobs_s, s.duration_s
    );
    let row = |name: &str, p: &Percentiles| {
        println!(
            "  {name:<11} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={})",
            p.p50, p.p90, p.p99, p.max, p.n
        )
    };
    row("accepted", &s.accepted_ms);
    row("completed", &s.completed_ms);
    if !s.errors_by_code.is_empty() {
        let codes: Vec<String> = s
            .errors_by_code
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        println!("  errors      {}", codes.join(", "));
    }
    let batches: Vec<String> = s
        .batch_sizes
        .iter()
        .map(|(le, n)| format!("≤{}: {n}", le.trim_start_matches('0')))
        .collect();
    println!(
        "  batches     mean {:.2} jobs/pass; {}",
        s.batch_mean,
        batches.join(", ")
    );
    if let Some(raw) = &report.raw {
        println!(
            "  raw floor   {:.1} msgs/s ({} × {} B, window {}); latency p50 {:.2} ms p99 {:.2} ms",
            raw.throughput_msgs_s,
            raw.messages,
            raw.message_bytes,
            raw.window,
            raw.latency_ms.p50,
            raw.latency_ms.p99
        );
    }
    if let Some(ratio) = report.system_over_raw {
        println!("  system ÷ raw {ratio:.3}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn poisson_arrivals_come_at_the_rate_with_exponential_gaps() {
        let mut a = super::PoissonArrivals { state: 7, next_s: 0.0, rate: 10.0, count: 0 };
        let n = a.due(1000.0);
        assert!((9_700..10_300).contains(&n), "{n} arrivals in 1000 s at 10/s");
        // Exponential gaps: about e^-1 of them are longer than the mean.
        let mut b = super::PoissonArrivals { state: 7, next_s: 0.0, rate: 10.0, count: 0 };
        let (mut last, mut long, mut prev) = (0.0, 0, 0);
        for k in 1..=20_000 {
            let t = k as f64 * 0.001;
            let c = b.due(t);
            if c > prev {
                if t - last > 0.1 {
                    long += 1;
                }
                last = t;
                prev = c;
            }
        }
        let share = long as f64 / prev as f64;
        assert!((0.3..0.45).contains(&share), "share of gaps above the mean: {share}");
    }

    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (p.p50, p.p90, p.p99, p.max, p.n),
            (50.0, 90.0, 99.0, 100.0, 100)
        );
        let one = Percentiles::of(vec![3.0]);
        assert_eq!((one.p50, one.p99, one.max), (3.0, 3.0, 3.0));
        assert_eq!(Percentiles::of(vec![]).n, 0);
    }

    #[test]
    fn default_image_is_a_png() {
        let bytes = default_image();
        assert_eq!(
            image::guess_format(&bytes).unwrap(),
            image::ImageFormat::Png
        );
    }
}
