//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info` for
//! orfeas, `warn` for dependencies), as text or JSON lines.

use tracing_subscriber::{fmt, EnvFilter};

/// Install the global subscriber.
pub fn init(json: bool, default_level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,orfeas={default_level},orfeas_actors={default_level}")));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
