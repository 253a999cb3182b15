//! Logging and traces: `tracing` to stderr, filtered by `RUST_LOG` (default
//! `info` for orfeas, `warn` for dependencies), as text or JSON lines; and,
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set,
//! the job spans exported over OTLP/HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL` =
//! `http/protobuf`, the default, or `http/json`; service name from
//! `OTEL_SERVICE_NAME`, default `orfeas`). The standard variables keep the
//! exporter configurable the way every collector documents it.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{trace::SdkTracerProvider, Resource};
use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// Flushes exported spans when dropped (end of `main`).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: traces not flushed: {e}");
            }
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

fn otlp_provider() -> Result<SdkTracerProvider, String> {
    // The exporter's HTTP client needs the process's TLS provider.
    orfeas_actors::store::install_tls_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "orfeas".into());
    let resource = Resource::builder_empty()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Install the global subscriber (and the OTLP exporter when configured).
pub fn init(json: bool, default_level: &str) -> Telemetry {
    let filter = || {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new(format!(
                "warn,orfeas={default_level},orfeas_actors={default_level}"
            ))
        })
    };
    let base = fmt::layer().with_writer(std::io::stderr).with_target(false);
    let logs = if json {
        base.json().boxed()
    } else {
        base.boxed()
    };
    let (otel, provider) = if otlp_configured() {
        match otlp_provider() {
            Ok(provider) => {
                let tracer = provider.tracer("orfeas");
                // Job spans are exported whatever RUST_LOG says about logs.
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(tracing_subscriber::filter::filter_fn(|m| m.name() == "job"));
                (Some(layer), Some(provider))
            }
            Err(e) => {
                eprintln!("warning: OTLP export disabled: {e}");
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter()))
        .with(otel)
        .try_init();
    Telemetry { provider }
}
