//! Where tracing's spans and events go: logs on stderr (text or JSON lines) and,
//! in a build with the `otlp` feature, traces to an OpenTelemetry collector.
//!
//! OTLP is behind a cargo feature, off by default: it brings an HTTP client and
//! protobuf into the build, which most installations (and every test run) do without.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Keeps trace export alive; dropping it flushes the spans not yet sent.
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "otlp_endpoint is set, but this circle was built without OTLP export; \
         build it with `cargo build --release --features otlp`"
    )]
    NotBuilt,
    #[cfg(feature = "otlp")]
    #[error("starting OTLP trace export")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Installs the global subscriber: `filter` (unless `RUST_LOG` says otherwise), logs
/// in `format`, and spans exported to `otlp_endpoint` when one is configured.
pub fn init(
    filter: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    // Colours only on a terminal: a file, journald or a container's log keeps plain text.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        // One JSON object per line, with the current span and its parents' fields.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    #[cfg(feature = "otlp")]
    {
        let provider = otlp_endpoint.map(otlp::provider).transpose()?;
        let traces = provider.as_ref().map(otlp::layer);
        registry.with(traces).init();
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        if otlp_endpoint.is_some() {
            return Err(TelemetryError::NotBuilt);
        }
        registry.init();
        Ok(Telemetry {})
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// Spans in batches over OTLP/HTTP (protobuf), e.g. to
    /// `http://collector:4318/v1/traces`.
    pub fn provider(endpoint: &str) -> Result<SdkTracerProvider, super::TelemetryError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("circle")
                    .build(),
            )
            .build())
    }

    pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("circle"))
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("flushing traces failed: {error}");
            }
        }
    }
}

#[cfg(all(test, not(feature = "otlp")))]
mod tests {
    use super::*;

    /// A configured collector is never ignored silently.
    #[test]
    fn a_build_without_otlp_refuses_an_otlp_endpoint() {
        let refused = init(
            "info",
            LogFormat::Text,
            Some("http://127.0.0.1:4318/v1/traces"),
        );
        assert!(matches!(refused, Err(TelemetryError::NotBuilt)));
    }
}
