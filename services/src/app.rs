//! Wiring: settings in, a running HTTP service out.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::appender::Appender;
use crate::auth::{create_token, register_token, Authenticator, Role};
use crate::commands::{CommandService, Repository};
use crate::config::Settings;
use crate::crypto::Vault;
use crate::http::{router, AppState, Reporting, Services};
use crate::metrics::Metrics;
use crate::projector;
use crate::publisher::{self, NatsSettings};
use crate::store::Store;
use circle_projections::practice::AlertRules;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    body_limit: usize,
    /// Set when no admin token was configured and one was generated at start.
    pub generated_admin_token: Option<String>,
}

/// The store the settings name: PostgreSQL when a URL is set, else embedded.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    match &settings.database_url {
        Some(url) => Store::postgres(url, settings.database_max_connections)
            .await
            .context("connecting to PostgreSQL"),
        None => Store::embedded(&settings.data_dir).await.with_context(|| {
            format!(
                "opening the embedded store in {}",
                settings.data_dir.display()
            )
        }),
    }
}

/// The master key from settings; for the embedded store a first run creates one in
/// the data directory so a newcomer needs no setup.
fn master_key(settings: &Settings) -> anyhow::Result<String> {
    if let Some(key) = &settings.master_key {
        return Ok(key.clone());
    }
    if settings.database_url.is_some() {
        anyhow::bail!("CIRCLE_MASTER_KEY (base64 of 32 bytes) must be set when using PostgreSQL");
    }
    let path = settings.data_dir.join("master.key");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(existing.trim().to_string());
    }
    let key = Vault::generate_master_key();
    write_private(&path, &key).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a master key for the embedded store");
    Ok(key)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

impl Application {
    pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
        let store = open_store(settings).await?;
        let vault = Vault::from_base64(&master_key(settings)?).context("reading the master key")?;
        let metrics = Metrics::new();
        let (committed, committed_positions) = tokio::sync::watch::channel(0);
        let appender = Appender::start(
            store.clone(),
            metrics.clone(),
            settings.append_batch_max,
            committed,
        );
        let reporting = Reporting {
            alert_rules: AlertRules {
                consecutive_absences: settings.alert_consecutive_absences,
            },
            reporter_min_count: settings.reporter_min_count,
            read_wait_max: std::time::Duration::from_millis(settings.read_wait_max_ms),
        };
        let reports = projector::start(
            store.clone(),
            reporting.alert_rules,
            metrics.clone(),
            committed_positions.clone(),
        )
        .await
        .context("starting the reports projection")?;
        let committed_for_nats = committed_positions;
        let commands = CommandService::new(
            store.clone(),
            appender,
            metrics.clone(),
            settings.command_attempts,
        );
        let generated_admin_token = match &settings.admin_token {
            Some(token) => {
                register_token(&store, token, Role::Admin, None)
                    .await
                    .context("registering the admin token")?;
                None
            }
            None => Some(
                create_token(&store, Role::Admin, None)
                    .await
                    .context("creating an admin token")?,
            ),
        };
        match &settings.nats_url {
            None => tracing::info!(
                "no NATS URL configured: publishing over NATS is off; reports are served over HTTP"
            ),
            Some(url) => publisher::start(
                NatsSettings {
                    url: url.clone(),
                    namespace: settings.nats_namespace.clone(),
                    coalesce: std::time::Duration::from_millis(settings.nats_coalesce_ms),
                    duplicate_window: std::time::Duration::from_secs(
                        settings.nats_duplicate_window_secs,
                    ),
                },
                store.clone(),
                reports.clone(),
                reporting.clone(),
                metrics.clone(),
                committed_for_nats,
            )
            .await
            .context("connecting to NATS")?,
        }
        let listener = TcpListener::bind(&settings.listen)
            .await
            .with_context(|| format!("listening on {}", settings.listen))?;
        let state = AppState(Arc::new(Services {
            reports,
            reporting,
            groups: Repository::new(
                store.clone(),
                settings.aggregate_cache_capacity,
                metrics.clone(),
            ),
            clients: Repository::new(
                store.clone(),
                settings.aggregate_cache_capacity,
                metrics.clone(),
            ),
            auth: Authenticator::new(store.clone()),
            store,
            commands,
            vault,
            metrics,
        }));
        tracing::info!(
            store = state.store.backend_name(),
            address = %listener.local_addr()?,
            "circle is ready"
        );
        Ok(Application {
            listener,
            state,
            body_limit: settings.body_limit_bytes,
            generated_admin_token,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = router(self.state, self.body_limit);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")
    }
}
