//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// orfeas: images in, printable 3D models out — for AI agents, over NATS.
#[derive(Parser, Debug)]
#[command(name = "orfeas", version, about)]
pub struct Cli {
    /// Configuration file (TOML, version = 1).
    #[arg(long, global = true, env = "ORFEAS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Turn images into 3D models. With no NATS configured, starts an embedded
    /// single-node setup for the duration of the command.
    Generate(GenerateArgs),
    /// Run a node against a NATS server until SIGTERM / Ctrl-C.
    Serve(ServeArgs),
    /// Agent keys.
    Keys {
        /// What to do with keys.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The agent registry: keys (add, rotate, revoke) and per-agent policy.
    Agents {
        /// What to do with agents.
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Submit one image as an agent and print its events.
    Submit(SubmitArgs),
    /// Run the mesh pipeline on a volume saved by NumPy (`.npy`, float32,
    /// C order, axes [z, y, x]; value > iso is solid unless --sdf).
    Mesh(MeshArgs),
    /// Drive a node or cluster as N agents and measure throughput, latency
    /// percentiles, rejections and batch sizes (embedded setup when no NATS
    /// is given).
    Bench(BenchArgs),
    /// Print the resolved configuration (secrets redacted).
    Config,
    /// List the models a deployment serves (asks any one node over NATS).
    Models(ModelsArgs),
    /// Time raw forward passes of one model at several batch sizes (no NATS,
    /// no preprocessing, no meshing): the model's own throughput.
    BenchForward(BenchForwardArgs),
    /// List live nodes of the deployment and their load.
    Nodes(NodesArgs),
    /// Download the result files of a finished job over NATS (for agents
    /// without access to the object store).
    Fetch(FetchArgs),
    /// Compare the deployment's streams and buckets with this
    /// configuration; with --apply, update them where JetStream can.
    Streams(StreamsArgs),
    /// The state of one of an agent's jobs (signed request over NATS).
    Status(crate::jobs_cmd::JobArgs),
    /// Cancel one of an agent's jobs (signed request over NATS).
    Cancel(crate::jobs_cmd::JobArgs),
    /// Write the NATS authorization block isolating agents from each other.
    NatsConfig(crate::nats_config::NatsConfigArgs),
    /// Serve the Model Context Protocol (stdio, or streamable HTTP with
    /// --http) as one registered agent, for LLM hosts.
    Mcp(crate::mcp::McpArgs),
    /// Serve a web page for people (upload, live progress, 3D viewer, print
    /// report, downloads) as one agent; the embedded default without --nats.
    Studio(crate::studio::StudioArgs),
    /// The audit trail (hash-chained admission decisions and terminal states).
    Audit {
        /// What to do with the audit trail.
        #[command(subcommand)]
        command: crate::audit_cmd::AuditCommand,
    },
}

/// `orfeas models`
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ModelsArgs {
    /// Without a subcommand: list the models a deployment serves.
    #[command(subcommand)]
    pub command: Option<ModelsCommand>,
    /// NATS URL.
    #[arg(long)]
    pub nats: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds without an answer.
    #[arg(long, default_value_t = 10)]
    pub timeout_s: u64,
}

/// `orfeas models …`
#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Check a model folder before a node loads it: parse the manifest and
    /// any pipeline.toml, load every stage with libtorch, run B = 1 and
    /// B = 2 smoke passes with the declared shapes and check that batch
    /// items are independent. Exit 0 when it passes, 1 with a stable error
    /// code when not.
    Check(ModelsCheckArgs),
}

/// `orfeas models check`
#[derive(Args, Debug)]
pub struct ModelsCheckArgs {
    /// Model folder (`manifest.toml` and `model.pt`, or `pipeline.toml` and its stage files).
    pub dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Use the CPU even when a CUDA GPU is present.
    #[arg(long)]
    pub cpu: bool,
}

/// `orfeas bench-forward`
#[derive(Args, Debug)]
pub struct BenchForwardArgs {
    /// Model folder (`manifest.toml` + `model.pt`), e.g. models/inflate.
    #[arg(long)]
    pub model: PathBuf,
    /// Batch sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub batches: Vec<usize>,
    /// Timed forward passes per batch size (after two untimed ones).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// libtorch intra-op threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Run on the CPU even when CUDA is present.
    #[arg(long)]
    pub cpu: bool,
}

/// `orfeas bench`
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// NATS URL of a running deployment; without it (and without nats.url)
    /// the embedded setup is started for the run.
    #[arg(long)]
    pub nats: Option<String>,
    /// Metrics endpoints of the nodes (`http://host:port/metrics`), for the
    /// batch-size distribution; the embedded node's is added by itself.
    #[arg(long)]
    pub metrics: Vec<String>,
    /// Agents, each with its own key, taking turns.
    #[arg(long, default_value_t = 4)]
    pub agents: usize,
    /// Model.
    #[arg(long, default_value = "null")]
    pub model: String,
    /// Image to submit (default: a small generated PNG).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Output formats.
    #[arg(long = "format", default_value = "glb")]
    pub format: Vec<String>,
    /// Closed loop: jobs kept in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Open loop: submissions per second (overrides --concurrency).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop with Poisson arrivals (exponential gaps of mean 1/rate,
    /// from this seed) instead of evenly spaced ones.
    #[arg(long, requires = "rate")]
    pub poisson_seed: Option<u64>,
    /// Measured jobs (ignored with --duration-s).
    #[arg(long, default_value_t = 500)]
    pub jobs: u64,
    /// Measure for this long instead of a job count.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Jobs run first and not measured (model warm, connections open).
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// Give up on a job's answer after this long.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
    /// Also measure raw JetStream publish + consume of same-size messages.
    #[arg(long)]
    pub raw: bool,
    /// Messages for the raw floor.
    #[arg(long, default_value_t = 5000)]
    pub raw_messages: u64,
    /// PubAcks outstanding at most in the raw floor.
    #[arg(long, default_value_t = 32)]
    pub raw_window: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Mesh parameters for every job.
    #[command(flatten)]
    pub shape: ShapeArgs,
}

/// `orfeas nodes`
#[derive(Args, Debug)]
pub struct NodesArgs {
    /// NATS URL(s), comma separated.
    #[arg(long)]
    pub nats: Option<String>,
    /// One JSON object per node instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// How an agent command connects and signs: the same three flags for
/// `submit`, `fetch`, `status` and `cancel`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// NATS URL(s), comma separated.
    #[arg(long)]
    pub nats: Option<String>,
    /// Agent name (the job's owner).
    #[arg(long)]
    pub agent: String,
    /// Agent secret key file.
    #[arg(long)]
    pub key: PathBuf,
}

impl AgentArgs {
    /// A client connected to NATS as this agent, signing with its key.
    pub async fn client(&self, config: &crate::config::Config) -> anyhow::Result<orfeas_wire::client::AgentClient> {
        let url = crate::nats_url(config, &self.nats)?;
        let key = crate::read_key(&self.key)?;
        let client = orfeas_actors::bus::connect(&url, &format!("orfeas-agent-{}", self.agent)).await?;
        Ok(orfeas_wire::client::AgentClient::new(client, &self.agent, key, &config.node.deployment))
    }
}

/// `orfeas fetch`
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The job.
    pub job_id: uuid::Uuid,
    /// Who asks.
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Folder to write the files into (created if missing).
    #[arg(short, long, default_value = ".")]
    pub output: PathBuf,
    /// Also fetch the preview images.
    #[arg(long)]
    pub previews: bool,
    /// Give up on a silent request after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_s: u64,
}

/// `orfeas streams`
#[derive(Args, Debug)]
pub struct StreamsArgs {
    /// NATS URL(s), comma separated.
    #[arg(long)]
    pub nats: Option<String>,
    /// Update streams, buckets and consumers to this configuration (replicas,
    /// limits); subjects, retention and storage cannot change in place.
    #[arg(long)]
    pub apply: bool,
}

/// How the mesh is made (job parameters).
#[derive(Args, Debug, Clone)]
pub struct ShapeArgs {
    /// Decimate to about this many triangles (100..=2000000).
    #[arg(long)]
    pub faces: Option<u32>,
    /// Longest side of the printed object, millimetres (`generate`: 80 by default).
    #[arg(long)]
    pub size_mm: Option<f32>,
    /// Keep the voxel terracing (no smoothing).
    #[arg(long)]
    pub no_smooth: bool,
    /// No vertex colours.
    #[arg(long)]
    pub no_colour: bool,
    /// No preview renders.
    #[arg(long)]
    pub no_previews: bool,
    /// A model parameter, NAME=VALUE (number, or true/false), repeatable;
    /// e.g. `--param max_height=0.5 --param invert=true` for `relief`
    /// (`orfeas models` lists each model's parameters).
    #[arg(long = "param", value_parser = parse_model_param)]
    pub model_params: Vec<(String, f64)>,
    /// Also texture the mesh with the image (GLB embeds it; OBJ comes with .mtl and .png).
    #[arg(long)]
    pub texture: bool,
    /// Printer build volume x,y,z in mm (Z up) the report checks the object against [default: 256,256,256].
    #[arg(long, value_parser = parse_xyz, value_name = "X,Y,Z")]
    pub build_volume_mm: Option<[f32; 3]>,
    /// Turn the object so its largest stable face rests on the bed.
    #[arg(long)]
    pub lay_flat: bool,
}

fn parse_model_param(text: &str) -> Result<(String, f64), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    let value = match value.trim() {
        "true" => 1.0,
        "false" => 0.0,
        v => v.parse().map_err(|_| format!("{value:?} is not a number or true/false"))?,
    };
    Ok((name.trim().to_string(), value))
}

/// `x,y,z` → three numbers.
fn parse_xyz(text: &str) -> Result<[f32; 3], String> {
    let values: Vec<f32> = text.split(',').map(|v| v.trim().parse::<f32>().map_err(|e| format!("{v:?}: {e}"))).collect::<Result<_, _>>()?;
    values.try_into().map_err(|v: Vec<f32>| format!("need three numbers x,y,z, got {}", v.len()))
}

/// `orfeas mesh`
#[derive(Args, Debug)]
pub struct MeshArgs {
    /// The volume (.npy).
    pub volume: PathBuf,
    /// Output file; its extension picks the format (glb, stl, obj, ply, 3mf).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Surface level.
    #[arg(long, default_value_t = 0.0)]
    pub iso: f32,
    /// Values below iso are solid (signed distance) instead of above (occupancy).
    #[arg(long)]
    pub sdf: bool,
    /// World bounds: minimum x,y,z.
    #[arg(long, value_delimiter = ',', default_value = "-1,-1,-1")]
    pub bounds_min: Vec<f32>,
    /// World bounds: maximum x,y,z.
    #[arg(long, value_delimiter = ',', default_value = "1,1,1")]
    pub bounds_max: Vec<f32>,
    /// Decimate to about this many triangles.
    #[arg(long)]
    pub faces: Option<usize>,
    /// Longest side of the printed object, millimetres.
    #[arg(long)]
    pub size_mm: Option<f32>,
    /// Keep the voxel terracing (no smoothing).
    #[arg(long)]
    pub no_smooth: bool,
    /// Also write PNG previews next to the output.
    #[arg(long)]
    pub previews: bool,
    /// Printer build volume x,y,z in mm (Z up) the report checks the object against [default: 256,256,256].
    #[arg(long, value_parser = parse_xyz, value_name = "X,Y,Z")]
    pub build_volume_mm: Option<[f32; 3]>,
    /// Turn the object so its largest stable face rests on the bed.
    #[arg(long)]
    pub lay_flat: bool,
    /// Colour the vertices from this image (PNG, JPEG, WebP), stretched over the x/y bounds
    /// as seen from the front (+z), top row at the largest y.
    #[arg(long, value_name = "IMAGE", conflicts_with = "texture")]
    pub colour: Option<PathBuf>,
    /// As --colour, and texture the mesh with the image: GLB embeds it, OBJ comes with
    /// OUT.mtl and OUT.png (PLY and 3MF keep vertex colours, STL has none).
    #[arg(long, value_name = "IMAGE")]
    pub texture: Option<PathBuf>,
}

/// `orfeas generate`
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Input images (PNG, JPEG, WebP); none with --studio.
    #[arg(required_unless_present = "studio")]
    pub images: Vec<PathBuf>,
    /// Output file (one image; its extension picks the format: `out.3mf` → `out.3mf`)
    /// or folder (`<image stem>.<ext>` per format). Previews and `NAME.report.json`
    /// go beside the model.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Output formats, comma separated (glb, stl, obj, ply, 3mf) [default: the -o
    /// extension, else glb,stl].
    #[arg(long, value_delimiter = ',')]
    pub format: Option<Vec<String>>,
    /// Model to run (`relief` for flat artwork, tiles and patterns).
    #[arg(long, default_value = "inflate")]
    pub model: String,
    /// Submit to this NATS deployment as an agent (--agent, --key) instead of an
    /// embedded server; starts no node, registers no key.
    #[arg(long)]
    pub nats: Option<String>,
    /// Agent name to submit as (with --nats or nats.url).
    #[arg(long, env = "ORFEAS_AGENT")]
    pub agent: Option<String>,
    /// The agent's secret key file (with --nats or nats.url).
    #[arg(long, env = "ORFEAS_AGENT_KEY")]
    pub key: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Print one JSON document with every image's files and report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Material density for the weight estimate, g/cm³ (1.24: PLA).
    #[arg(long, default_value_t = 1.24)]
    pub density_g_cm3: f64,
    /// Material price per kilogram for the cost estimate.
    #[arg(long, default_value_t = 25.0)]
    pub price_per_kg: f64,
    /// How the embedded node cuts objects out of images without alpha: `flood` (the plain
    /// background, filled from the border) or `learned` (a matting model) [default:
    /// matting.method, flood].
    #[arg(long, value_parser = ["flood", "learned"])]
    pub matting: Option<String>,
    /// Folder of the matting model (`manifest.toml` + `model.pt`, models/README.md);
    /// implies `--matting learned` [default: matting.model].
    #[arg(long)]
    pub matting_model: Option<PathBuf>,
    /// Then serve the studio web page (md/studio.md) on the same setup, with these
    /// images' jobs in its history, until Ctrl-C / SIGTERM.
    #[arg(long)]
    pub studio: bool,
    /// Address of the studio page (with --studio).
    #[arg(long, default_value = "127.0.0.1:8780", env = "ORFEAS_STUDIO_BIND", requires = "studio")]
    pub studio_bind: std::net::SocketAddr,
    /// How the mesh is made.
    #[command(flatten)]
    pub shape: ShapeArgs,
}

/// `orfeas serve`
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// NATS URL (overrides nats.url).
    #[arg(long)]
    pub nats: Option<String>,
}

/// `orfeas keys …`
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a new Ed25519 key; prints its public key.
    New {
        /// Write the secret key here (mode 0600); stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the public key of a secret key file.
    Public {
        /// The secret key file.
        key: PathBuf,
    },
}

pub use crate::agents_cmd::AgentsCommand;

/// `orfeas submit`
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Who submits.
    #[command(flatten)]
    pub agent: AgentArgs,
    /// The image.
    pub image: PathBuf,
    /// Model.
    #[arg(long, default_value = "inflate")]
    pub model: String,
    /// Output formats, comma separated.
    #[arg(long, default_value = "glb", value_delimiter = ',')]
    pub format: Vec<String>,
    /// Wait for the final event (and download with -o).
    #[arg(long)]
    pub wait: bool,
    /// Where to put the result files (with --wait).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Upload the image to the uploads object store (`orfeas_uploads`) and
    /// submit it by reference; automatic for images over the inline cap.
    #[arg(long)]
    pub by_reference: bool,
    /// How the mesh is made.
    #[command(flatten)]
    pub shape: ShapeArgs,
}

impl ShapeArgs {
    /// The job parameters these flags ask for.
    pub fn params(&self) -> orfeas_wire::v1::JobParams {
        orfeas_wire::v1::JobParams {
            target_faces: self.faces,
            size_mm: self.size_mm,
            smooth: self.no_smooth.then_some(false),
            colour: self.no_colour.then_some(false),
            previews: self.no_previews.then_some(false),
            model_params: self.model_params.iter().cloned().collect(),
            texture: self.texture,
            build_volume_mm: self.build_volume_mm,
            lay_flat: self.lay_flat,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_params_parse_numbers_and_booleans() {
        assert_eq!(parse_model_param("max_height=0.5"), Ok(("max_height".into(), 0.5)));
        assert_eq!(parse_model_param("invert=true"), Ok(("invert".into(), 1.0)));
        assert_eq!(parse_model_param("invert=false"), Ok(("invert".into(), 0.0)));
        assert!(parse_model_param("max_height").unwrap_err().contains("NAME=VALUE"));
        assert!(parse_model_param("max_height=high").unwrap_err().contains("high"));
        let cli = Cli::try_parse_from(["orfeas", "generate", "a.png", "--model", "relief", "--param", "max_height=0.6", "--param", "invert=true"]).unwrap();
        let Command::Generate(args) = cli.command else { panic!("generate") };
        let params = args.shape.params().model_params;
        assert_eq!(params.get("max_height"), Some(&0.6));
        assert_eq!(params.get("invert"), Some(&1.0));
    }
}
