//! Configuration: one typed struct, `version = 1`, resolved in layers —
//! built-in defaults, then a TOML file, then `ORFEAS_<SECTION>_<KEY>`
//! environment variables, then command-line flags — and validated before
//! any actor starts. The loader takes the environment as a parameter so
//! tests need no process environment.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use orfeas_actors::{learned_matte::MattingMethod, store::S3Config, NodeSettings};
use orfeas_wire::SecretKey;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version; only 1 exists.
    pub version: u32,
    /// This node.
    pub node: NodeSection,
    /// NATS.
    pub nats: NatsSection,
    /// Result storage.
    pub store: StoreSection,
    /// Models.
    pub models: ModelsSection,
    /// How objects are cut out of images without alpha.
    pub matting: MattingSection,
    /// Devices.
    pub devices: DevicesSection,
    /// Scheduling and delivery.
    pub scheduler: SchedulerSection,
    /// Admission.
    pub ingress: IngressSection,
    /// Operator endpoint.
    pub http: HttpSection,
}

/// `[http]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address of `/metrics`, `/healthz`, `/readyz` for `serve`; empty = off.
    pub listen: String,
}

/// `[node]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Unique node name; empty = `<hostname>-<pid>`.
    pub id: String,
    /// Deployment name agents sign for (`aud`).
    pub deployment: String,
    /// File with the node's event-signing key; empty = a new key each start.
    pub key_file: String,
    /// Added to every batch (simulated device; tests and scale experiments).
    pub simulated_latency_ms: u64,
    /// Added to every sampler step of a pipeline model (simulated device).
    pub simulated_step_latency_ms: u64,
}

/// `[nats]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// Server URL(s); empty = start an embedded server (`generate` only).
    pub url: String,
    /// The `nats-server` binary used for the embedded server; empty = search.
    pub server_bin: String,
    /// Replicas of streams and buckets (3 on a cluster).
    pub replicas: usize,
    /// File holding the nkey seed (`SU…`) nodes and operator commands
    /// authenticate with (servers running `nats/isolation.conf`); empty = none.
    #[serde(default)]
    pub nkey_seed_file: String,
}

/// `[store]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Local folder of the object store (used when `url` is empty).
    pub root: String,
    /// `s3://bucket/prefix`: an S3-compatible bucket shared by a cluster;
    /// empty = the local folder.
    pub url: String,
    /// S3 endpoint for S3-compatible servers (`http://minio:9000`); empty = AWS.
    pub endpoint: String,
    /// S3 region.
    pub region: String,
    /// S3 access key id; empty = `AWS_*` environment / instance credentials.
    pub access_key_id: String,
    /// S3 secret access key (secret: redacted by `orfeas config`).
    pub secret_access_key: String,
    /// Lifetime of the pre-signed URLs agents receive, seconds (max 7 days).
    pub url_expiry_s: u64,
}

/// `[models]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSection {
    /// Folder of `<name>/manifest.toml` + `model.pt`.
    pub dir: String,
    /// Models to load; empty = all.
    pub enabled: Vec<String>,
}

/// `[matting]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MattingSection {
    /// `flood` (fill the plain background from the border; no model) or `learned`.
    pub method: String,
    /// Folder of the matting model (`manifest.toml` + `model.pt`) for `learned`.
    pub model: String,
}

/// `[devices]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesSection {
    /// CPU inference threads (0 = libtorch default).
    pub cpu_threads: usize,
    /// Use CUDA GPUs when present.
    pub use_cuda: bool,
    /// Fraction of a device's free memory a batch may plan on (0–1].
    pub memory_safety: f64,
    /// Pipeline models: jobs join and leave the running set at step
    /// boundaries (true) or each batch samples to the end alone (false,
    /// whole-request batching; for comparison).
    pub step_batching: bool,
    /// How much lower than the node's the meshing threads' priority is
    /// (nice, 0–19; 0 = the same): above 0 the control plane is served
    /// first on busy cores, at some cost in throughput (md/benchmarks.md).
    #[serde(default = "default_mesh_nice")]
    pub mesh_nice: i32,
}

fn default_mesh_nice() -> i32 {
    orfeas_actors::mesh_pool::MESH_NICE
}

/// `[scheduler]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    /// Largest batch (also capped per model).
    pub max_batch: usize,
    /// JetStream ack wait, seconds.
    pub ack_wait_s: u64,
    /// Interval of in-progress acks, seconds (must be below ack_wait_s).
    pub progress_ack_s: u64,
    /// Deliveries before a job fails for good.
    pub max_deliver: i64,
    /// How long a batch that is not full may wait for more jobs, ms (0 = dispatch at once).
    pub max_queue_delay_ms: u64,
    /// Batches per device held beyond the running and next one, per lane (agents take turns among them).
    pub lookahead_batches: usize,
    /// On SIGTERM, how long running jobs may take to finish before they are handed back, seconds.
    pub shutdown_grace_s: u64,
}

/// `[ingress]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSection {
    /// Tolerated clock skew, seconds.
    pub clock_skew_s: u64,
    /// Largest image side, pixels.
    pub max_image_side: u32,
    /// Submissions held before new ones are refused.
    pub submit_queue_max: i64,
    /// Messages per minute per subject token before the signature is checked.
    #[serde(default = "default_preauth_per_minute")]
    pub preauth_per_minute: u32,
}

fn default_preauth_per_minute() -> u32 {
    6_000
}

/// Where the repository's models are when nothing else is configured.
pub fn default_models_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/models").to_string()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            version: 1,
            node: NodeSection { id: String::new(), deployment: "orfeas".into(), key_file: String::new(), simulated_latency_ms: 0, simulated_step_latency_ms: 0 },
            nats: NatsSection { url: String::new(), server_bin: String::new(), replicas: 1, nkey_seed_file: String::new() },
            store: StoreSection {
                root: String::new(),
                url: String::new(),
                endpoint: String::new(),
                region: "us-east-1".into(),
                access_key_id: String::new(),
                secret_access_key: String::new(),
                url_expiry_s: 7 * 24 * 3600,
            },
            models: ModelsSection { dir: default_models_dir(), enabled: vec![] },
            matting: MattingSection { method: "flood".into(), model: String::new() },
            devices: DevicesSection { cpu_threads: 0, use_cuda: true, memory_safety: 0.8, step_batching: true, mesh_nice: default_mesh_nice() },
            scheduler: SchedulerSection { max_batch: 8, ack_wait_s: 60, progress_ack_s: 15, max_deliver: 5, max_queue_delay_ms: 0, lookahead_batches: 2, shutdown_grace_s: 30 },
            ingress: IngressSection { clock_skew_s: 120, max_image_side: 16384, submit_queue_max: 100_000, preauth_per_minute: default_preauth_per_minute() },
            http: HttpSection { listen: "127.0.0.1:9470".into() },
        }
    }
}

impl Config {
    /// Resolve: defaults ← file ← env (`ORFEAS_<SECTION>_<KEY>`) ← `overrides`
    /// (`section.key` → TOML value text).
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>, overrides: &[(&str, String)]) -> Result<Self> {
        let mut tree = toml::Value::try_from(Config::default()).context("defaults")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
            let from_file: toml::Value = toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
            merge(&mut tree, from_file);
        }
        let sections: Vec<String> = tree.as_table().map(|t| t.keys().cloned().collect()).unwrap_or_default();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("ORFEAS_") else { continue };
            let rest = rest.to_ascii_lowercase();
            // Only variables naming a known section are configuration; others
            // (e.g. ORFEAS_CACHE_DIR for the setup script) are not ours here.
            let Some(section) = sections.iter().find(|s| rest.starts_with(&format!("{s}_"))) else { continue };
            let key = &rest[section.len() + 1..];
            set(&mut tree, section, key, value).with_context(|| format!("environment variable {name}"))?;
        }
        for (path, value) in overrides {
            let (section, key) = path.split_once('.').context("override must be section.key")?;
            set(&mut tree, section, key, value).with_context(|| format!("flag for {path}"))?;
        }
        let config: Config = tree.try_into().context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if self.version != 1 {
            bail!("config version {} is not supported (only 1)", self.version);
        }
        if !self.node.id.is_empty() && !orfeas_wire::subjects::is_valid_agent_name(&self.node.id) {
            bail!("node.id {:?} must be 1-64 of a-z 0-9 _ -", self.node.id);
        }
        if self.scheduler.max_batch == 0 {
            bail!("scheduler.max_batch must be at least 1");
        }
        if !(0..=19).contains(&self.devices.mesh_nice) {
            bail!("devices.mesh_nice {} must be in 0..=19 (0 = the node's own priority)", self.devices.mesh_nice);
        }
        if !(self.devices.memory_safety > 0.0 && self.devices.memory_safety <= 1.0) {
            bail!("devices.memory_safety {} must be in (0, 1]", self.devices.memory_safety);
        }
        if self.scheduler.progress_ack_s == 0 || self.scheduler.progress_ack_s >= self.scheduler.ack_wait_s {
            bail!(
                "scheduler.progress_ack_s ({}) must be between 1 and ack_wait_s ({}) exclusive",
                self.scheduler.progress_ack_s,
                self.scheduler.ack_wait_s
            );
        }
        if self.nats.replicas == 0 || self.nats.replicas > 5 {
            bail!("nats.replicas must be 1..=5, not {}", self.nats.replicas);
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!("http.listen {:?} is not an address like 0.0.0.0:9470", self.http.listen);
        }
        if self.ingress.clock_skew_s > orfeas_actors::gate::MAX_CLOCK_SKEW_S {
            bail!("ingress.clock_skew_s {} is above {} (the nonce bucket's window)", self.ingress.clock_skew_s, orfeas_actors::gate::MAX_CLOCK_SKEW_S);
        }
        if self.ingress.preauth_per_minute == 0 {
            bail!("ingress.preauth_per_minute must be at least 1");
        }
        if self.scheduler.max_deliver < 1 {
            bail!("scheduler.max_deliver must be at least 1");
        }
        self.matting_method()?;
        self.s3()?;
        Ok(())
    }

    /// The matting stage `[matting]` asks for.
    pub fn matting_method(&self) -> Result<MattingMethod> {
        match (self.matting.method.as_str(), self.matting.model.is_empty()) {
            ("flood", true) => Ok(MattingMethod::Flood),
            ("flood", false) => bail!("matting.model {:?} is set but matting.method is flood: set matting.method = \"learned\" to use it", self.matting.model),
            ("learned", false) => Ok(MattingMethod::Learned(PathBuf::from(&self.matting.model))),
            ("learned", true) => bail!("matting.method = learned needs matting.model, the folder of a matting model (manifest.toml + model.pt; see models/README.md)"),
            (other, _) => bail!("matting.method {other:?} must be flood or learned"),
        }
    }

    /// The nkey seed of `nats.nkey_seed_file`, if set.
    pub fn nats_seed(&self) -> Result<Option<String>> {
        if self.nats.nkey_seed_file.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.nats.nkey_seed_file).with_context(|| format!("reading nats.nkey_seed_file {}", self.nats.nkey_seed_file))?;
        Ok(Some(text.trim().to_string()))
    }

    /// The configuration as TOML with secrets redacted (`orfeas config`).
    pub fn redacted(&self) -> String {
        let mut shown = self.clone();
        if !shown.node.key_file.is_empty() {
            shown.node.key_file = format!("{} (contents not shown)", shown.node.key_file);
        }
        if !shown.store.secret_access_key.is_empty() {
            shown.store.secret_access_key = "(set, not shown)".into();
        }
        toml::to_string_pretty(&shown).unwrap_or_default()
    }

    /// The node settings for the actors, with the resolved NATS URL and store.
    pub fn node_settings(&self, nats_url: &str, store_root: PathBuf) -> Result<NodeSettings> {
        let node_id = if self.node.id.is_empty() { default_node_id() } else { self.node.id.clone() };
        let node_key = if self.node.key_file.is_empty() {
            SecretKey::generate()
        } else {
            let text = std::fs::read_to_string(&self.node.key_file).with_context(|| format!("reading node.key_file {}", self.node.key_file))?;
            SecretKey::from_text(&text)?
        };
        let mut settings = NodeSettings::local(&node_id, nats_url, PathBuf::from(&self.models.dir), store_root);
        settings.deployment = self.node.deployment.clone();
        settings.replicas = self.nats.replicas;
        settings.node_key = node_key;
        settings.models = self.models.enabled.clone();
        settings.matting = self.matting_method()?;
        settings.cpu_threads = self.devices.cpu_threads;
        settings.use_cuda = self.devices.use_cuda;
        settings.max_batch = self.scheduler.max_batch;
        settings.memory_safety = self.devices.memory_safety;
        settings.ack_wait = Duration::from_secs(self.scheduler.ack_wait_s);
        settings.progress_ack_interval = Duration::from_secs(self.scheduler.progress_ack_s);
        settings.max_deliver = self.scheduler.max_deliver;
        settings.max_queue_delay = Duration::from_millis(self.scheduler.max_queue_delay_ms);
        settings.lookahead_batches = self.scheduler.lookahead_batches;
        settings.shutdown_grace = Duration::from_secs(self.scheduler.shutdown_grace_s);
        settings.submit_queue_max = self.ingress.submit_queue_max;
        settings.clock_skew_s = self.ingress.clock_skew_s;
        settings.nats_nkey_seed = self.nats_seed()?;
        settings.preauth_per_minute = self.ingress.preauth_per_minute;
        settings.max_image_side = self.ingress.max_image_side;
        settings.simulated_latency = Duration::from_millis(self.node.simulated_latency_ms);
        settings.simulated_step_latency = Duration::from_millis(self.node.simulated_step_latency_ms);
        settings.step_batching = self.devices.step_batching;
        settings.mesh_nice = self.devices.mesh_nice;
        settings.http_listen = if self.http.listen.is_empty() { None } else { Some(self.http.listen.parse()?) };
        settings.store_s3 = self.s3()?;
        Ok(settings)
    }

    /// The S3 bucket of `store.url`, if one is configured.
    pub fn s3(&self) -> Result<Option<S3Config>> {
        let store = &self.store;
        if store.url.is_empty() {
            return Ok(None);
        }
        let mut s3 = S3Config::from_url(&store.url).map_err(|e| anyhow::anyhow!("store.url: {e}"))?;
        if !store.endpoint.is_empty() {
            if !(store.endpoint.starts_with("http://") || store.endpoint.starts_with("https://")) {
                bail!("store.endpoint {:?} must start with http:// or https://", store.endpoint);
            }
            s3.endpoint = Some(store.endpoint.clone());
        }
        s3.region = store.region.clone();
        if store.access_key_id.is_empty() != store.secret_access_key.is_empty() {
            bail!("store.access_key_id and store.secret_access_key go together (set both, or neither to use AWS_* credentials)");
        }
        if !store.access_key_id.is_empty() {
            s3.access_key_id = Some(store.access_key_id.clone());
            s3.secret_access_key = Some(store.secret_access_key.clone());
        }
        if !(1..=7 * 24 * 3600).contains(&store.url_expiry_s) {
            bail!("store.url_expiry_s must be 1..=604800 (S3 signs URLs for at most 7 days), not {}", store.url_expiry_s);
        }
        s3.url_expiry = Duration::from_secs(store.url_expiry_s);
        Ok(Some(s3))
    }

    /// The store folder: configured, or `<data dir>/orfeas/results`.
    pub fn store_root(&self) -> PathBuf {
        if !self.store.root.is_empty() {
            return PathBuf::from(&self.store.root);
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("orfeas/results")
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "node".into());
    let host: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(40)
        .collect();
    format!("{}-{}", if host.is_empty() { "node" } else { &host }, std::process::id())
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Set `section.key` from text, typed like the default already there.
fn set(tree: &mut toml::Value, section: &str, key: &str, text: &str) -> Result<()> {
    let table = tree
        .get_mut(section)
        .and_then(|s| s.as_table_mut())
        .with_context(|| format!("unknown section {section:?}"))?;
    let current = table.get(key).with_context(|| format!("unknown key {section}.{key}"))?;
    let value = match current {
        toml::Value::String(_) => toml::Value::String(text.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(text.trim().parse().with_context(|| format!("{section}.{key} wants an integer, got {text:?}"))?),
        toml::Value::Boolean(_) => toml::Value::Boolean(text.trim().parse().with_context(|| format!("{section}.{key} wants true or false, got {text:?}"))?),
        toml::Value::Float(_) => toml::Value::Float(text.trim().parse().with_context(|| format!("{section}.{key} wants a number, got {text:?}"))?),
        toml::Value::Array(_) => toml::Value::Array(
            text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| toml::Value::String(s.to_string())).collect(),
        ),
        other => bail!("{section}.{key} cannot be set from text (it is {})", other.type_str()),
    };
    table.insert(key.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("orfeas.toml");
        std::fs::write(&file, "version = 1\n[scheduler]\nmax_batch = 4\nack_wait_s = 30\n[nats]\nurl = \"nats://file:4222\"\n").unwrap();
        let e = env(&[("ORFEAS_SCHEDULER_MAX_BATCH", "6"), ("ORFEAS_MODELS_ENABLED", "inflate, null"), ("ORFEAS_CACHE_DIR", "/x")]);
        let config = Config::load(Some(&file), &e, &[("nats.url", "nats://flag:4222".into())]).unwrap();
        assert_eq!(config.scheduler.max_batch, 6, "env beats file");
        assert_eq!(config.scheduler.ack_wait_s, 30, "file beats default");
        assert_eq!(config.nats.url, "nats://flag:4222", "flag beats file");
        assert_eq!(config.models.enabled, vec!["inflate", "null"]);
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::load(None, &env(&[("ORFEAS_SCHEDULER_MAX_BATCH", "many")]), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("ORFEAS_SCHEDULER_MAX_BATCH"), "{err:#}");
        let err = Config::load(None, &env(&[("ORFEAS_SCHEDULER_NOPE", "1")]), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("unknown key scheduler.nope"), "{err:#}");
        let err = Config::load(None, &env(&[("ORFEAS_DEVICES_MEMORY_SAFETY", "1.5")]), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("devices.memory_safety 1.5"), "{err:#}");
        let err = Config::load(None, &env(&[("ORFEAS_DEVICES_MESH_NICE", "20")]), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("devices.mesh_nice 20"), "{err:#}");
        let err = Config::load(None, &env(&[("ORFEAS_SCHEDULER_PROGRESS_ACK_S", "90")]), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("progress_ack_s"), "{err:#}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "version = 1\n[node]\ncolour = \"red\"\n").unwrap();
        assert!(Config::load(Some(&file), &BTreeMap::new(), &[]).is_err(), "unknown fields are refused");
    }

    #[test]
    fn s3_store_is_resolved_and_its_secret_redacted() {
        let e = env(&[
            ("ORFEAS_STORE_URL", "s3://results/orfeas"),
            ("ORFEAS_STORE_ENDPOINT", "http://127.0.0.1:9000"),
            ("ORFEAS_STORE_ACCESS_KEY_ID", "AKID"),
            ("ORFEAS_STORE_SECRET_ACCESS_KEY", "hunter2"),
            ("ORFEAS_STORE_URL_EXPIRY_S", "3600"),
        ]);
        let config = Config::load(None, &e, &[]).unwrap();
        let s3 = config.s3().unwrap().expect("s3 configured");
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("results", "orfeas"));
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.url_expiry, Duration::from_secs(3600));
        assert_eq!(config.node_settings("nats://x", "/tmp/x".into()).unwrap().store_s3, Some(s3));
        let shown = config.redacted();
        assert!(!shown.contains("hunter2") && shown.contains("(set, not shown)"), "{shown}");
        assert!(Config::load(None, &env(&[]), &[]).unwrap().s3().unwrap().is_none(), "local folder by default");
        let err = Config::load(None, &env(&[("ORFEAS_STORE_URL", "gs://b")]), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("store.url"), "{err:#}");
        let err = Config::load(None, &env(&[("ORFEAS_STORE_URL", "s3://b"), ("ORFEAS_STORE_ACCESS_KEY_ID", "x")]), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("go together"), "{err:#}");
    }

    #[test]
    fn redacted_output_parses_back() {
        let config = Config::default();
        let text = config.redacted();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn matting_is_flood_by_default_and_learned_needs_a_model() {
        let config = Config::load(None, &env(&[]), &[]).unwrap();
        assert_eq!(config.matting_method().unwrap(), MattingMethod::Flood);
        let e = env(&[("ORFEAS_MATTING_METHOD", "learned"), ("ORFEAS_MATTING_MODEL", "/m/tiny")]);
        let learned = Config::load(None, &e, &[]).unwrap();
        assert_eq!(learned.node_settings("nats://x", "/tmp".into()).unwrap().matting, MattingMethod::Learned("/m/tiny".into()));
        let without = Config::load(None, &env(&[("ORFEAS_MATTING_METHOD", "learned")]), &[]).unwrap_err();
        assert!(format!("{without:#}").contains("needs matting.model"), "{without:#}");
        let unused = Config::load(None, &env(&[("ORFEAS_MATTING_MODEL", "/m/tiny")]), &[]).unwrap_err();
        assert!(format!("{unused:#}").contains("matting.method is flood"), "{unused:#}");
        let unknown = Config::load(None, &env(&[("ORFEAS_MATTING_METHOD", "magic")]), &[]).unwrap_err();
        assert!(format!("{unknown:#}").contains("\"magic\" must be flood or learned"), "{unknown:#}");
    }
}
