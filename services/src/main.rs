//! `circle`: serve the API, seed and serve a demo practice, manage tokens.

use std::path::PathBuf;

use anyhow::Context;
use circle_services::app::{open_store, Application};
use circle_services::auth::{create_token, Role};
use circle_services::config::{LogFormat, Overrides, Settings};
use circle_services::errors::ErrorChain;
use circle_services::projector;
use circle_services::store::StoreError;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "circle",
    version,
    about = "Attendance and outcomes for group therapy practices"
)]
struct Cli {
    /// A TOML file overriding the built-in defaults.
    #[arg(long, env = "CIRCLE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (embedded store unless a database URL is configured).
    Serve(ServeArgs),
    /// Seed a realistic demo practice (if the store is empty) and serve it.
    Demo(ServeArgs),
    /// Rebuild projections from position 0 (with a progress bar) and save them.
    Replay {
        /// Which projection; all when left out.
        #[arg(long, value_parser = ["reports"])]
        projection: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token; it is printed once, as the last word on stdout.
    Create {
        #[arg(long, value_enum)]
        role: Role,
        /// Required for clinicians: the id groups list among their facilitators.
        #[arg(long)]
        clinician_id: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// Directory of the embedded store (used when no database URL is set).
    #[arg(long, env = "CIRCLE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL; without it the embedded store is used.
    #[arg(long, env = "CIRCLE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, env = "CIRCLE_LISTEN")]
    listen: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// NATS server URL; without it publishing is off.
    #[arg(long, env = "CIRCLE_NATS_URL")]
    nats_url: Option<String>,
    /// The first admin token; without it one is generated and printed once.
    #[arg(long, env = "CIRCLE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Base64 of 32 bytes wrapping every client's key (environment only).
    #[arg(long, env = "CIRCLE_MASTER_KEY", hide_env_values = true, hide = true)]
    master_key: Option<String>,
    /// The checkpoint signing key, signed-note form (environment only).
    #[arg(
        long,
        env = "CIRCLE_AUDIT_SIGNING_KEY",
        hide_env_values = true,
        hide = true
    )]
    audit_signing_key: Option<String>,
    /// Log lines as text (for people) or JSON (for log shippers).
    #[arg(long, env = "CIRCLE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    fn overrides(self) -> Overrides {
        Overrides {
            listen: self.listen,
            data_dir: self.store.data_dir,
            database_url: self.store.database_url,
            nats_url: self.nats_url,
            admin_token: self.admin_token,
            master_key: self.master_key,
            audit_signing_key: self.audit_signing_key,
            log_format: self.log_format,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::load(cli.config.as_deref(), args.overrides())?;
            init_logging(&settings.log, settings.log_format);
            serve(settings, false).await
        }
        Command::Demo(args) => {
            let mut overrides = args.overrides();
            // The demo keeps its data apart from a real embedded store.
            if overrides.data_dir.is_none() {
                overrides.data_dir = Some(PathBuf::from("data/demo"));
            }
            let settings = Settings::load(cli.config.as_deref(), overrides)?;
            init_logging(&settings.log, settings.log_format);
            serve(settings, true).await
        }
        Command::Replay { projection, store } => {
            let overrides = Overrides {
                data_dir: store.data_dir,
                database_url: store.database_url,
                ..Overrides::default()
            };
            let settings = Settings::load(cli.config.as_deref(), overrides)?;
            init_logging("warn", LogFormat::Text);
            let store = open_store(&settings).await?;
            let name = projection.unwrap_or_else(|| projector::REPORTS.to_string());
            let started = std::time::Instant::now();
            let practice = projector::rebuild(&store, &settings.projection(), progress_bar).await?;
            eprintln!();
            println!(
                "rebuilt {name} to position {} in {:.1}s",
                practice.position,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Token {
            action:
                TokenAction::Create {
                    role,
                    clinician_id,
                    store,
                },
        } => {
            let overrides = Overrides {
                data_dir: store.data_dir,
                database_url: store.database_url,
                ..Overrides::default()
            };
            let settings = Settings::load(cli.config.as_deref(), overrides)?;
            init_logging("warn", LogFormat::Text);
            let store = open_store(&settings).await?;
            let token = create_token(&store, role, clinician_id).await?;
            println!("created {} token: {token}", role.as_str());
            Ok(())
        }
    }
}

async fn serve(settings: Settings, demo: bool) -> anyhow::Result<()> {
    let app = build_when_reachable(&settings).await?;
    let address = app.local_addr()?;
    if demo {
        let summary = circle_services::demo::seed_if_empty(&app.state())
            .await
            .context("seeding the demo practice")?;
        println!("{summary}");
    }
    if let Some(token) = &app.generated_admin_token {
        println!("admin token (shown once): {token}");
        println!("try: curl -H 'Authorization: Bearer {token}' http://{address}/api/v1/groups");
    }
    println!("circle listening on http://{address} (OpenAPI: /api/v1/openapi.json)");
    app.run(shutdown_signal()).await
}

/// Builds the application, waiting for PostgreSQL while it is unreachable (a
/// database that starts after Circle is normal in a deployment); other errors end it.
async fn build_when_reachable(settings: &Settings) -> anyhow::Result<Application> {
    let mut backoff = std::time::Duration::from_millis(250);
    let mut stop = std::pin::pin!(shutdown_signal());
    loop {
        match Application::build(settings).await {
            Ok(app) => return Ok(app),
            Err(error) if is_unavailable(&error) => {
                let error: &dyn std::error::Error = error.as_ref();
                tracing::warn!(error = %ErrorChain(error), retry_in_ms = backoff.as_millis() as u64, "the event store is unreachable; not ready, retrying");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            _ = &mut stop => anyhow::bail!("stopped before the event store was reachable"),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

fn is_unavailable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<StoreError>(),
            Some(StoreError::Unavailable(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut
            ))
        )
    })
}

/// Draws `[#####     ] 48% 480000/1000000` on stderr.
fn progress_bar(position: i64, head: i64) {
    use std::io::Write;
    const WIDTH: i64 = 40;
    let filled = if head > 0 {
        position * WIDTH / head
    } else {
        WIDTH
    };
    let percent = if head > 0 { position * 100 / head } else { 100 };
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { ' ' })
        .collect();
    let mut err = std::io::stderr();
    let _ = write!(err, "\r[{bar}] {percent:>3}% {position}/{head}");
    let _ = err.flush();
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return interrupt.await.unwrap_or(()),
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or(());
    tracing::info!("shutting down");
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        // One JSON object per line, with the current span and its parents' fields.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
