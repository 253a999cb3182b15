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
    /// The agent registry.
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
    /// Print the resolved configuration (secrets redacted).
    Config,
    /// List live nodes of the deployment and their load.
    Nodes(NodesArgs),
    /// Download the result files of a finished job over NATS (for agents
    /// without access to the object store).
    Fetch(FetchArgs),
    /// Compare the deployment's streams and buckets with this
    /// configuration; with --apply, update them where JetStream can.
    Streams(StreamsArgs),
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

/// `orfeas fetch`
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The job.
    pub job_id: uuid::Uuid,
    /// NATS URL(s), comma separated.
    #[arg(long)]
    pub nats: Option<String>,
    /// Agent name (the job's owner).
    #[arg(long)]
    pub agent: String,
    /// Agent secret key file.
    #[arg(long)]
    pub key: PathBuf,
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
    /// Longest side of the printed object, millimetres.
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
}

/// `orfeas generate`
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Input images (PNG, JPEG, WebP).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output file (one image: `out.glb` → `out.glb` + `out.stl`) or folder.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Output formats, comma separated (glb, stl, obj, ply, 3mf).
    #[arg(long, default_value = "glb,stl", value_delimiter = ',')]
    pub format: Vec<String>,
    /// Model to run.
    #[arg(long, default_value = "inflate")]
    pub model: String,
    /// Use this NATS instead of an embedded server.
    #[arg(long)]
    pub nats: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
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

/// `orfeas agents …`
#[derive(Subcommand, Debug)]
pub enum AgentsCommand {
    /// Register a public key for an agent (creates the agent if new).
    Add {
        /// Agent name (subject token: a-z 0-9 _ -).
        name: String,
        /// Public key, 64 hex digits.
        #[arg(long)]
        pubkey: String,
        /// NATS URL.
        #[arg(long)]
        nats: Option<String>,
    },
}

/// `orfeas submit`
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// NATS URL.
    #[arg(long)]
    pub nats: Option<String>,
    /// Agent name.
    #[arg(long)]
    pub agent: String,
    /// Agent secret key file.
    #[arg(long)]
    pub key: PathBuf,
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
        }
    }
}
