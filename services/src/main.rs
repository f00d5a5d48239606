//! `circle`: serve the API, seed and serve a demo practice, manage tokens.

use std::path::PathBuf;

use anyhow::Context;
use circle_services::app::{open_store, open_vault, rotate_master_key, Application};
use circle_services::auth::Role;
use circle_services::config::{LogFormat, Overrides, Settings};
use circle_services::errors::ErrorChain;
use circle_services::projector;
use circle_services::store::{Revocation, StoreError};
use circle_services::telemetry;
use circle_services::tokens::{self, Grant};
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
    /// Check the log without trusting the server: an export offline, the store, or
    /// the consistency of two checkpoints an auditor kept.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Export data offline, straight from the store: a group as FHIR, or the
    /// practice in the import layout.
    Export {
        #[command(subcommand)]
        format: ExportFormat,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Import a practice's history from CSV files in the layout of docs/import.md
    /// (a directory, or one file named for what it holds). Each row goes through the
    /// command path; refused rows are printed as `file:line: column: reason`, the
    /// rest continue. Re-running the same files changes nothing. Exit 1 when any row
    /// was refused.
    Import {
        /// A directory holding groups.csv, clients.csv, … or one such file.
        path: PathBuf,
        /// Check every row, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Refused rows printed (the rest are counted).
        #[arg(long, default_value_t = 1000)]
        max_errors: u64,
        /// Aggregates written at once.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: u16,
        #[command(flatten)]
        store: StoreArgs,
        /// The master key (PostgreSQL; the embedded store reads its file).
        #[arg(long, env = "CIRCLE_MASTER_KEY", hide_env_values = true, hide = true)]
        master_key: Option<String>,
    },
    /// Manage the master key.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
enum ExportFormat {
    /// A group as FHIR R4 Bulk Data NDJSON, one file per resource type
    /// (`Group.ndjson`, `Patient.ndjson`, …); patients by opaque id, no names.
    Fhir {
        /// The group to export.
        #[arg(long)]
        group: String,
        /// The directory to write the files into (created if missing).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The practice's history in the import layout (docs/import.md), personal data
    /// decrypted: what `circle import` reads back.
    Csv {
        /// The directory to write groups.csv, clients.csv, … into (created if needed).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// The master key (PostgreSQL; the embedded store reads its file).
        #[arg(long, env = "CIRCLE_MASTER_KEY", hide_env_values = true, hide = true)]
        master_key: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Re-wrap every live client key under a new master key (stop every instance
    /// first). The embedded store replaces `master.key`; with PostgreSQL the new key
    /// is CIRCLE_NEW_MASTER_KEY, or generated and printed once.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        /// The current master key (PostgreSQL; the embedded store reads its file).
        #[arg(long, env = "CIRCLE_MASTER_KEY", hide_env_values = true, hide = true)]
        master_key: Option<String>,
        /// The new master key (base64 of 32 bytes); generated when absent.
        #[arg(
            long,
            env = "CIRCLE_NEW_MASTER_KEY",
            hide_env_values = true,
            hide = true
        )]
        new_master_key: Option<String>,
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
        /// What or whom the token is for (shown by `circle token list`).
        #[arg(long, default_value = "")]
        label: String,
        /// Days until the token stops working; without it, until revoked.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List every token: id, role, clinician, label, created, expires, revoked.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token by its id: every instance refuses it from now on.
    Revoke {
        /// The token's id (`tok_…`, from `circle token list`), not its secret.
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

impl TokenAction {
    fn store(&self) -> &StoreArgs {
        match self {
            TokenAction::Create { store, .. }
            | TokenAction::List { store }
            | TokenAction::Revoke { store, .. } => store,
        }
    }
}

#[derive(Subcommand)]
enum AuditAction {
    /// Recompute the chain and the Merkle root of an NDJSON export (offline) and check
    /// a signed checkpoint against it; without --export, check the store itself.
    /// Prints `ok <n> events, root <hex>` (exit 0) or the first bad position (exit 1).
    Verify {
        /// An export from GET /api/v1/audit/events (Accept: application/x-ndjson).
        #[arg(long)]
        export: Option<PathBuf>,
        /// A signed checkpoint (GET /api/v1/audit/checkpoint) the export must match.
        #[arg(long, requires = "key", requires = "export")]
        checkpoint: Option<PathBuf>,
        /// The verifier key (GET /api/v1/audit/key), kept by the auditor.
        #[arg(long, requires = "checkpoint")]
        key: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Fetch the consistency proof between two signed checkpoints and check it: a log
    /// rewritten since OLD fails here.
    Consistency {
        old: PathBuf,
        new: PathBuf,
        /// Circle's base URL, e.g. http://127.0.0.1:8080 (plain HTTP).
        #[arg(long)]
        url: String,
        /// An auditor's or admin's API token.
        #[arg(long, env = "CIRCLE_TOKEN", hide_env_values = true)]
        token: String,
        /// The verifier key; both checkpoints' signatures are checked with it.
        #[arg(long)]
        key: PathBuf,
    },
    /// Create a checkpoint signing key: prints the key (for CIRCLE_AUDIT_SIGNING_KEY)
    /// and the verifier key auditors keep.
    Keygen {
        /// The log's name, e.g. clinic.example/circle.
        #[arg(long)]
        origin: String,
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

impl StoreArgs {
    /// The settings these flags change: which store.
    fn overrides(self) -> Overrides {
        Overrides {
            data_dir: self.data_dir,
            database_url: self.database_url,
            ..Overrides::default()
        }
    }
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

fn main() -> anyhow::Result<()> {
    circle_services::alloc::run(run())?
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::load(cli.config.as_deref(), args.overrides())?;
            let _telemetry = telemetry::init(
                &settings.log,
                settings.log_format,
                settings.otlp_endpoint.as_deref(),
            )?;
            serve(settings, false).await
        }
        Command::Demo(args) => {
            let mut overrides = args.overrides();
            // The demo keeps its data apart from a real embedded store.
            if overrides.data_dir.is_none() {
                overrides.data_dir = Some(PathBuf::from("data/demo"));
            }
            let settings = Settings::load(cli.config.as_deref(), overrides)?;
            let _telemetry = telemetry::init(
                &settings.log,
                settings.log_format,
                settings.otlp_endpoint.as_deref(),
            )?;
            serve(settings, true).await
        }
        Command::Replay { projection, store } => {
            let settings = Settings::load(cli.config.as_deref(), store.overrides())?;
            let _telemetry = telemetry::init("warn", LogFormat::Text, None)?;
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
        Command::Export {
            format: ExportFormat::Fhir { group, out, store },
        } => {
            let settings = Settings::load(cli.config.as_deref(), store.overrides())?;
            let _telemetry = telemetry::init("warn", LogFormat::Text, None)?;
            let store = open_store(&settings).await?;
            export_fhir(&store, &group, &out).await
        }
        Command::Audit { action } => {
            let _telemetry = telemetry::init("warn", LogFormat::Text, None)?;
            let outcome = audit(cli.config.as_deref(), action).await;
            match outcome {
                Ok(line) => {
                    println!("{line}");
                    Ok(())
                }
                Err(reason) => {
                    println!("FAIL {reason}");
                    std::process::exit(1)
                }
            }
        }
        Command::Import {
            path,
            dry_run,
            max_errors,
            workers,
            store,
            master_key,
        } => {
            let mut overrides = store.overrides();
            overrides.master_key = master_key;
            // An import serves nothing: any free port, no publishing from this process.
            overrides.listen = Some("127.0.0.1:0".into());
            let mut settings = Settings::load(cli.config.as_deref(), overrides)?;
            settings.nats_url = None;
            let _telemetry = telemetry::init("warn", LogFormat::Text, None)?;
            let app = Application::build(&settings).await?;
            if let Some(token) = &app.generated_admin_token {
                println!("admin token (shown once): {token}");
            }
            let options = circle_services::import::Options {
                dry_run,
                workers: usize::from(workers),
                max_errors,
                progress: true,
            };
            let state = app.state();
            let outcome = circle_services::import::import(&state, &path, &options).await;
            // Stop in order: the appender commits what is queued, the projector saves.
            // The state outlives the stop, so the appender ends by its stop signal, not
            // by losing its last sender.
            app.run(async {}).await?;
            drop(state);
            let summary = outcome?;
            for line in summary.lines() {
                println!("{line}");
            }
            if summary.refused() > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Export {
            format:
                ExportFormat::Csv {
                    out,
                    store,
                    master_key,
                },
        } => {
            let mut overrides = store.overrides();
            overrides.master_key = master_key;
            let settings = Settings::load(cli.config.as_deref(), overrides)?;
            let _telemetry = telemetry::init("warn", LogFormat::Text, None)?;
            let store = open_store(&settings).await?;
            let vault = open_vault(&settings, &store).await?;
            let summary = circle_services::import::export::export_csv(&store, &vault, &out).await?;
            for line in summary.lines() {
                println!("{line}");
            }
            Ok(())
        }
        Command::Keys {
            action:
                KeysAction::Rotate {
                    store,
                    master_key,
                    new_master_key,
                },
        } => {
            let overrides = Overrides {
                master_key,
                ..store.overrides()
            };
            let settings = Settings::load(cli.config.as_deref(), overrides)?;
            let _telemetry = telemetry::init("warn", LogFormat::Text, None)?;
            let rotation = rotate_master_key(&settings, new_master_key).await?;
            println!(
                "re-wrapped {} client keys under the new master key",
                rotation.rewrapped
            );
            if let Some(key) = rotation.new_key {
                println!("new master key (shown once; set CIRCLE_MASTER_KEY to it): {key}");
            }
            Ok(())
        }
        Command::Token { action } => {
            let settings =
                Settings::load(cli.config.as_deref(), action.store().clone().overrides())?;
            let _telemetry = telemetry::init("warn", LogFormat::Text, None)?;
            let store = open_store(&settings).await?;
            token_command(&store, action).await
        }
    }
}

/// Runs an audit command; `Err` is the one-line reason it failed.
async fn audit(config: Option<&std::path::Path>, action: AuditAction) -> Result<String, String> {
    use circle_services::audit::{merkle, note, tree, verify};
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
    };
    match action {
        AuditAction::Verify {
            export: Some(export),
            checkpoint,
            key,
            ..
        } => {
            let file = std::fs::File::open(&export)
                .map_err(|e| format!("reading {}: {e}", export.display()))?;
            let signed = match (checkpoint, key) {
                (Some(c), Some(k)) => Some((read(&c)?, read(&k)?)),
                _ => None,
            };
            let signed = signed.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
            verify::verify_export(std::io::BufReader::new(file), signed)
                .map(|summary| summary.to_string())
                .map_err(|failure| failure.to_string())
        }
        AuditAction::Verify {
            export: None,
            store,
            ..
        } => {
            let settings =
                Settings::load(config, store.overrides()).map_err(|e| format!("{e:#}"))?;
            let store = open_store(&settings).await.map_err(|e| format!("{e:#}"))?;
            let verdict = tree::verify_store(&store, |n, head| progress_bar(n as i64, head))
                .await
                .map_err(|e| format!("reading the store: {}", ErrorChain(&e)))?;
            eprintln!();
            match (verdict.first_bad_position, verdict.reason) {
                (None, None) => Ok(format!(
                    "ok {} events, root {}",
                    verdict.checked, verdict.root
                )),
                (position, reason) => Err(format!(
                    "position {}: {}",
                    position.map_or("?".to_string(), |p| p.to_string()),
                    reason.unwrap_or_default()
                )),
            }
        }
        AuditAction::Consistency {
            old,
            new,
            url,
            token,
            key,
        } => {
            let verifier = note::Verifier::parse(&read(&key)?).map_err(|e| e.to_string())?;
            let open = |path: &PathBuf| -> Result<note::Checkpoint, String> {
                note::Checkpoint::open(&read(path)?, &verifier)
                    .map_err(|e| format!("{}: {e}", path.display()))
            };
            let (old, new) = (open(&old)?, open(&new)?);
            if old.size > new.size {
                return Err(format!(
                    "OLD has {} events, NEW only {}",
                    old.size, new.size
                ));
            }
            let proof: Vec<merkle::Hash> = if old.size == 0 || old.size == new.size {
                Vec::new()
            } else {
                fetch_consistency(&url, &token, old.size, new.size).await?
            };
            if merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &proof) {
                Ok(format!(
                    "ok the log of {} events extends the one of {} signed earlier",
                    new.size, old.size
                ))
            } else {
                Err(format!(
                    "the log of {} events is not an extension of the one of {} events signed \
                     earlier: history before {} was rewritten",
                    new.size, old.size, old.size
                ))
            }
        }
        AuditAction::Keygen { origin } => {
            let key = note::Signer::generate(&origin).map_err(|e| e.to_string())?;
            let signer = note::Signer::parse(&key).map_err(|e| e.to_string())?;
            Ok(format!(
                "signing key (CIRCLE_AUDIT_SIGNING_KEY, keep secret): {key}\nverifier key (give to auditors): {}",
                signer.verifier_key()
            ))
        }
    }
}

/// GET /api/v1/audit/proof/consistency, the proof's hashes decoded.
async fn fetch_consistency(
    base: &str,
    token: &str,
    from: u64,
    to: u64,
) -> Result<Vec<circle_services::audit::merkle::Hash>, String> {
    let url = format!(
        "{}/api/v1/audit/proof/consistency?from={from}&to={to}",
        base.trim_end_matches('/')
    );
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("fetching {url}: {e}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("{url} answered {status} without JSON: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url} answered {status}: {}", body["detail"]));
    }
    body["proof"]
        .as_array()
        .ok_or_else(|| format!("{url}: no proof in the answer"))?
        .iter()
        .map(|h| {
            h.as_str()
                .and_then(circle_services::audit::chain::hash_from_hex)
                .ok_or_else(|| format!("{url}: a proof hash is not 64 hex digits"))
        })
        .collect()
}

async fn token_command(
    store: &circle_services::store::Store,
    action: TokenAction,
) -> anyhow::Result<()> {
    match action {
        TokenAction::Create {
            role,
            clinician_id,
            label,
            expires_in_days,
            ..
        } => {
            let grant = Grant {
                expires_at: expires_in_days
                    .map(|days| chrono::Utc::now() + chrono::Duration::days(i64::from(days))),
                ..Grant::new(role, clinician_id, label)
            };
            let (secret, record) = tokens::issue(store, &grant, tokens::operator("cli")).await?;
            println!(
                "created {} token {}: {secret}",
                role.as_str(),
                record.token_id
            );
        }
        TokenAction::List { .. } => {
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or_else(|| "-".to_string(), |t| t.to_rfc3339())
            };
            println!("id\trole\tclinician_id\tlabel\tcreated_at\texpires_at\trevoked_at");
            for token in store.list_tokens().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    token.token_id,
                    token.role,
                    token.clinician_id.as_deref().unwrap_or("-"),
                    token.label,
                    token.created_at.to_rfc3339(),
                    when(token.expires_at),
                    when(token.revoked_at),
                );
            }
        }
        TokenAction::Revoke { id, .. } => {
            match tokens::revoke(store, &id, tokens::operator("cli")).await? {
                Revocation::Revoked(_) => println!("revoked {id}"),
                Revocation::AlreadyRevoked(_) => println!("{id} was already revoked"),
                Revocation::Unknown => anyhow::bail!("no token has the id {id}"),
            }
        }
    }
    Ok(())
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
    if demo {
        let token = app
            .generated_admin_token
            .clone()
            .unwrap_or_else(|| "$TOKEN".to_string());
        let get = format!("curl -sH 'Authorization: Bearer {token}' http://{address}/api/v1/audit");
        println!("check the log yourself (a checkpoint is signed within seconds):");
        println!("  {get}/checkpoint > checkpoint.txt");
        println!("  {get}/key > circle.vkey");
        println!("  {get}/events -H 'Accept: application/x-ndjson' > export.ndjson");
        println!("  circle audit verify --export export.ndjson --checkpoint checkpoint.txt --key circle.vkey");
    }
    if demo {
        // The links carry tokens, like the admin token above: shown once, at the
        // first start of this data directory.
        match &app.generated_admin_token {
            Some(admin) => {
                let (clinician, clinician_id) =
                    circle_services::demo::dashboard_clinician_token(&app.state()).await?;
                println!("dashboard, one click to sign in (keep these links private):");
                println!("  admin:     http://{address}/app/sign-in?token={admin}");
                println!("  clinician: http://{address}/app/sign-in?token={clinician}   ({clinician_id})");
            }
            None => println!("dashboard: http://{address}/app (sign in with your token)"),
        }
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

/// `circle export fhir`: the group's files into `out`, a counter line on stderr.
async fn export_fhir(
    store: &circle_services::store::Store,
    group: &str,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use circle_services::fhir;
    eprint!("reading group {group}…");
    let options = circle_projections::fhir::ExportOptions::default();
    let Some((files, clients)) = fhir::export_group(store, group, &options).await? else {
        eprintln!();
        anyhow::bail!("no group {group} in the store");
    };
    eprintln!(" {} members", clients.len());
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let total: usize = files.iter().map(|f| f.count).sum();
    let mut written = 0;
    for file in &files {
        let path = out.join(format!("{}.ndjson", file.resource_type.name()));
        std::fs::write(&path, &file.ndjson)
            .with_context(|| format!("writing {}", path.display()))?;
        written += file.count;
        eprint!("\r{written}/{total} resources written");
    }
    eprintln!();
    for file in &files {
        println!("{}.ndjson\t{}", file.resource_type.name(), file.count);
    }
    Ok(())
}
