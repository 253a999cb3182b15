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
    /// List the models a deployment serves (asks any one node over NATS).
    Models(ModelsArgs),
    /// Time raw forward passes of one model at several batch sizes (no NATS,
    /// no preprocessing, no meshing): the model's own throughput.
    BenchForward(BenchForwardArgs),
}

/// `orfeas models`
#[derive(Args, Debug)]
pub struct ModelsArgs {
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
    /// A model parameter, NAME=VALUE (number, or true/false), repeatable;
    /// e.g. `--param max_height=0.5 --param invert=true` for `relief`
    /// (`orfeas models` lists each model's parameters).
    #[arg(long = "param", value_parser = parse_model_param)]
    pub model_params: Vec<(String, f64)>,
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
            model_params: self.model_params.iter().cloned().collect(),
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
