//! Wiring: settings in, a running HTTP service out.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access_log::AccessLog;
use crate::appender::{Appender, CommitFeed};
use crate::audit::note::Signer;
use crate::audit::tree::{CheckpointPolicy, Checkpointer};
use crate::auth::{Authenticator, Role};
use crate::commands::{CommandService, Repository};
use crate::config::Settings;
use crate::crypto::Vault;
use crate::http::{router, AppState, Limits, Reporting, Services};
use crate::leader::Campaign;
use crate::metrics::Metrics;
use crate::projector::{self, ProjectionSettings};
use crate::publisher::{self, NatsSettings};
use crate::slots::Slots;
use crate::store::Store;
use crate::supervisor::{OnExit, Stage, Supervisor};
use crate::tokens;
use circle_projections::practice::AlertRules;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    supervisor: Supervisor,
    body_limit: usize,
    shutdown_grace: Duration,
    /// Set when no admin token was configured and one was generated at start.
    pub generated_admin_token: Option<String>,
}

impl Settings {
    pub fn alert_rules(&self) -> AlertRules {
        AlertRules {
            consecutive_absences: self.alert_consecutive_absences,
        }
    }

    /// What the reports projection's state depends on.
    pub fn projection(&self) -> ProjectionSettings {
        ProjectionSettings {
            alert_rules: self.alert_rules(),
            reporter_min_count: self.reporter_min_count,
        }
    }

    fn nats(&self) -> Option<NatsSettings> {
        Some(NatsSettings {
            url: self.nats_url.clone()?,
            namespace: self.nats_namespace.clone(),
            coalesce: Duration::from_millis(self.nats_coalesce_ms),
            duplicate_window: Duration::from_secs(self.nats_duplicate_window_secs),
        })
    }
}

/// The store the settings name: PostgreSQL when a URL is set, else embedded.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    match &settings.database_url {
        Some(url) => Store::postgres(url.expose(), settings.database_max_connections)
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

/// The master key from settings (for the embedded store: `data_dir/master.key`,
/// created on a first run so a newcomer needs no setup), checked against the store.
pub async fn open_vault(settings: &Settings, store: &Store) -> anyhow::Result<Vault> {
    let key = match &settings.master_key {
        Some(key) => key.expose().to_string(),
        None if settings.database_url.is_some() => anyhow::bail!(
            "CIRCLE_MASTER_KEY (base64 of 32 bytes) must be set when using PostgreSQL"
        ),
        None => embedded_master_key(&settings.data_dir.join("master.key"), store).await?,
    };
    let vault = Vault::from_base64(&key).context("reading the master key")?;
    check_master_key(&vault, store).await?;
    Ok(vault)
}

/// Whether the store holds anything a master key sealed.
async fn holds_sealed_data(store: &Store) -> anyhow::Result<bool> {
    Ok(store.key_check().await?.is_some() || store.any_wrapped_key().await?.is_some())
}

/// Reads the key file, refusing one others may read; creates one only while the
/// store holds nothing sealed, never over existing data (a new key opens none of it).
async fn embedded_master_key(path: &Path, store: &Store) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(existing) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    anyhow::bail!(
                        "{} may be read by others (mode {mode:o}); it must be 0600: chmod 600 it",
                        path.display()
                    );
                }
            }
            Ok(existing.trim().to_string())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if holds_sealed_data(store).await? {
                anyhow::bail!(
                    "{} is missing, but the store holds data sealed with a master key: \
                     restore the key file (or set CIRCLE_MASTER_KEY); a new key would open none of it",
                    path.display()
                );
            }
            let key = Vault::generate_master_key();
            write_private(path, &key).with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a master key for the embedded store");
            Ok(key)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Refuses a master key other than the one the store's data was sealed with: the
/// stored check value must open (stores from before key checks: a client's wrapped
/// key must), and the first start stores the check value.
async fn check_master_key(vault: &Vault, store: &Store) -> anyhow::Result<()> {
    const MISMATCH: &str = "the master key is not the one this store's personal data was \
        sealed with (the key check failed): start with the original key";
    if store.key_check().await?.is_none() {
        if let Some((client_id, wrapped)) = store.any_wrapped_key().await? {
            anyhow::ensure!(vault.unwraps(&wrapped, &client_id), MISMATCH);
        }
        store.save_key_check(&vault.key_check()).await?;
    }
    // Read back: of two first starts racing, the check value stored first decides.
    let stored = store.key_check().await?;
    anyhow::ensure!(stored.is_some_and(|sealed| vault.checks(&sealed)), MISMATCH);
    Ok(())
}

/// What `circle keys rotate` did.
pub struct Rotation {
    /// Live client keys now wrapped by the new master key.
    pub rewrapped: usize,
    /// The new key, when it is the operator's to store (PostgreSQL, or a key given
    /// in the environment); the embedded store keeps it in `master.key` itself.
    pub new_key: Option<String>,
}

/// Re-wraps every live client key under a new master key (`new_key`, or a fresh
/// one) and stores its key check, in one transaction; then compacts the key table
/// so the old wrapped forms leave its files. Once the old master key is destroyed,
/// no copy of an erased client's key (a backup, old WAL) can be opened. Every
/// instance must be stopped: one still running would seal with the old key. A
/// running leader is detected (the lease is taken for the rotation), followers not.
pub async fn rotate_master_key(
    settings: &Settings,
    new_key: Option<String>,
) -> anyhow::Result<Rotation> {
    let store = open_store(settings).await?;
    let old = open_vault(settings, &store).await?;
    let holder = uuid::Uuid::new_v4();
    let lease = store
        .acquire_lease(crate::leader::LEADER_LEASE, holder, Duration::from_secs(60))
        .await?;
    anyhow::ensure!(
        lease.is_some(),
        "a Circle instance is running (it holds the leader lease): stop every instance first"
    );
    let generated = new_key.is_none();
    let new_key = new_key.unwrap_or_else(Vault::generate_master_key);
    let new = Vault::from_base64(&new_key).context("reading the new master key")?;
    let embedded_file = (settings.database_url.is_none() && settings.master_key.is_none())
        .then(|| settings.data_dir.join("master.key"));
    // The new key is on disk before the store depends on it.
    let staged = embedded_file
        .as_ref()
        .map(|file| file.with_extension("key.new"));
    if let Some(staged) = &staged {
        let _ = std::fs::remove_file(staged);
        write_private(staged, &new_key).with_context(|| format!("writing {}", staged.display()))?;
    }
    let rewrap = |client_id: &str, wrapped: &[u8]| old.rewrap(&new, client_id, wrapped);
    let rewrapped = store.rewrap_keys(&rewrap, &new.key_check()).await?;
    if let (Some(staged), Some(file)) = (&staged, &embedded_file) {
        std::fs::rename(staged, file)
            .with_context(|| format!("replacing {} with {}", file.display(), staged.display()))?;
    }
    store.compact_keys().await?;
    store
        .release_lease(crate::leader::LEADER_LEASE, holder)
        .await?;
    Ok(Rotation {
        rewrapped,
        new_key: (embedded_file.is_none() && generated).then_some(new_key),
    })
}

/// The checkpoint signer from settings; the embedded store creates a key in the data
/// directory on first run, as it does the master key. PostgreSQL without a configured
/// key signs nothing: instances generating keys of their own would disagree.
fn audit_signer(settings: &Settings) -> anyhow::Result<Option<Signer>> {
    let text = match (&settings.audit_signing_key, &settings.database_url) {
        (Some(key), _) => key.expose().to_string(),
        (None, Some(_)) => {
            tracing::warn!(
                "no CIRCLE_AUDIT_SIGNING_KEY: the log is chained but no checkpoints are signed"
            );
            return Ok(None);
        }
        (None, None) => {
            let path = settings.data_dir.join("audit.key");
            match std::fs::read_to_string(&path) {
                Ok(existing) => existing,
                Err(_) => {
                    let key = Signer::generate(&settings.audit_origin)?;
                    write_private(&path, &key)
                        .with_context(|| format!("writing {}", path.display()))?;
                    tracing::info!(path = %path.display(), "generated the audit signing key");
                    key
                }
            }
        }
    };
    Ok(Some(
        Signer::parse(&text).context("reading the audit signing key")?,
    ))
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

/// The configured admin token is stored (once; it must be strong enough). Without
/// one, a token is generated only while no live admin token exists (the first
/// start, or after every admin token was revoked or expired), so restarts do not
/// pile up permanent admin tokens; it is returned to be shown once.
async fn admin_token(store: &Store, settings: &Settings) -> anyhow::Result<Option<String>> {
    if let Some(token) = &settings.admin_token {
        let grant = tokens::Grant::new(Role::Admin, None, "configured admin token");
        tokens::register(store, token.expose(), &grant, tokens::operator("serve"))
            .await
            .context("registering the admin token (--admin-token, CIRCLE_ADMIN_TOKEN)")?;
        return Ok(None);
    }
    if tokens::live_admin_exists(store)
        .await
        .context("looking for an admin token")?
    {
        return Ok(None);
    }
    let grant = tokens::Grant::new(Role::Admin, None, "generated at start");
    let (secret, _) = tokens::issue(store, &grant, tokens::operator("serve"))
        .await
        .context("creating an admin token")?;
    Ok(Some(secret))
}

impl Application {
    /// Opens the store and starts every background task under one [`Supervisor`].
    /// Each task's policy when it ends unexpectedly is written here:
    ///
    /// | task | stage | ends unexpectedly | required for `/readyz` |
    /// |---|---|---|---|
    /// | `appender` | writers | stop the process (commands cannot commit) | yes |
    /// | `access-log` | writers | restart with backoff (reads of client data answer 503 meanwhile) | yes |
    /// | `token-lookups` | writers | restart with backoff (requests answer 503 meanwhile) | yes |
    /// | `projector` | followers | restart with backoff | yes |
    /// | `nats-publisher` | followers | restart with backoff | no: NATS may be down |
    /// | `nats-service` | followers | restart with backoff | no |
    /// | `leader-lease` | lease | restart with backoff | no: followers serve anyway |
    /// | `audit-checkpoints` | followers | restart with backoff | no: the chain needs none |
    pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
        let store = open_store(settings).await?;
        let vault = open_vault(settings, &store).await?;
        let metrics = Metrics::new();
        let mut supervisor = Supervisor::new(metrics.clone());
        let (committed, committed_positions) = tokio::sync::watch::channel(0);

        let feed = CommitFeed::default();
        let (appender, worker) = Appender::new(
            store.clone(),
            metrics.clone(),
            settings.append_batch_max,
            committed,
        );
        let worker = worker.feeding(feed.clone());
        supervisor.spawn_worker(
            "appender",
            Stage::Writers,
            OnExit::StopProcess,
            true,
            worker,
        );

        let access_log = if settings.access_log {
            let (access_log, worker) = AccessLog::new(store.clone());
            supervisor.spawn_worker("access-log", Stage::Writers, OnExit::Restart, true, worker);
            access_log
        } else {
            tracing::warn!("the access log is off: reads of client data are not recorded");
            AccessLog::off()
        };

        let (auth, worker) = Authenticator::new(store.clone());
        supervisor.spawn_worker(
            "token-lookups",
            Stage::Writers,
            OnExit::Restart,
            true,
            worker,
        );

        let (campaign, leadership) = Campaign::new(
            store.clone(),
            Duration::from_millis(settings.leader_lease_ttl_ms),
            metrics.clone(),
        );
        let campaign = Arc::new(campaign);
        supervisor.spawn(
            "leader-lease",
            Stage::Lease,
            OnExit::Restart,
            false,
            move |stop| {
                let campaign = campaign.clone();
                async move { campaign.run(stop).await }
            },
        );

        let reporting = Reporting {
            projection: settings.projection(),
            read_wait_max: Duration::from_millis(settings.read_wait_max_ms),
        };
        let (reports, follower) = projector::start(
            store.clone(),
            settings.projection(),
            metrics.clone(),
            committed_positions.clone(),
            feed,
            leadership.clone(),
            settings.as_of_snapshot_every_events,
        )
        .await
        .context("starting the reports projection")?;
        supervisor.spawn(
            "projector",
            Stage::Followers,
            OnExit::Restart,
            true,
            move |stop| follower.clone().run(stop),
        );
        let signer = audit_signer(settings)?.map(Arc::new);
        let (checkpoints, _) = tokio::sync::watch::channel(None);
        if let Some(signer) = &signer {
            let checkpointer = Arc::new(Checkpointer {
                store: store.clone(),
                signer: signer.clone(),
                policy: CheckpointPolicy {
                    every_events: settings.audit_checkpoint_every_events.max(1),
                    every: Duration::from_millis(settings.audit_checkpoint_every_ms),
                },
            });
            let (leadership, checkpoints) = (leadership.clone(), checkpoints.clone());
            supervisor.spawn(
                "audit-checkpoints",
                Stage::Followers,
                OnExit::Restart,
                false,
                move |stop| {
                    let (checkpointer, leadership, checkpoints) = (
                        checkpointer.clone(),
                        leadership.clone(),
                        checkpoints.clone(),
                    );
                    async move { checkpointer.run(leadership, checkpoints, stop).await }
                },
            );
        }

        let commands = CommandService::new(
            store.clone(),
            appender,
            metrics.clone(),
            settings.command_attempts,
        );
        let generated_admin_token = admin_token(&store, settings).await?;
        match settings.nats() {
            None => tracing::info!(
                "no NATS URL configured: publishing over NATS is off; reports are served over HTTP"
            ),
            Some(nats_settings) => {
                let nats = publisher::start(
                    nats_settings,
                    store.clone(),
                    reports.clone(),
                    reporting.clone(),
                    metrics.clone(),
                )
                .await
                .context("connecting to NATS")?;
                let publishing = nats.clone();
                supervisor.spawn(
                    "nats-publisher",
                    Stage::Followers,
                    OnExit::Restart,
                    false,
                    move |stop| {
                        let (nats, leadership, committed) = (
                            publishing.clone(),
                            leadership.clone(),
                            committed_positions.clone(),
                        );
                        async move { nats.publish(leadership, committed, stop).await }
                    },
                );
                if signer.is_some() {
                    let (nats, checkpoints) = (nats.clone(), checkpoints.clone());
                    supervisor.spawn(
                        "nats-checkpoints",
                        Stage::Followers,
                        OnExit::Restart,
                        false,
                        move |stop| {
                            let (nats, signed) = (nats.clone(), checkpoints.subscribe());
                            async move { nats.publish_checkpoints(signed, stop).await }
                        },
                    );
                }
                supervisor.spawn(
                    "nats-service",
                    Stage::Followers,
                    OnExit::Restart,
                    false,
                    move |stop| {
                        let nats = nats.clone();
                        async move { nats.serve(stop).await }
                    },
                );
            }
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
            auth,
            audit_key: signer.as_ref().map(|s| s.verifier_key()),
            fhir_jobs: Default::default(),
            access_log,
            store,
            commands,
            vault,
            metrics,
            health: supervisor.health(),
            as_of_limit: Slots::new(
                settings.as_of_max_concurrent,
                "as_of reports are being computed",
            ),
            export_limit: Slots::new(settings.exports_max_concurrent, "exports are streaming"),
            limits: Limits::new(
                settings.max_concurrent_requests,
                Duration::from_millis(settings.request_timeout_ms),
            ),
            shutdown: CancellationToken::new(),
        }));
        tracing::info!(
            store = state.store.backend_name(),
            address = %listener.local_addr()?,
            "circle is ready"
        );
        Ok(Application {
            listener,
            state,
            supervisor,
            body_limit: settings.body_limit_bytes,
            shutdown_grace: Duration::from_millis(settings.shutdown_grace_ms),
            generated_admin_token,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` completes (or a task the process cannot run without
    /// has died), then stops in order within the grace period: HTTP stops accepting
    /// and finishes in-flight requests; the appender commits what they queued; the
    /// projector takes its last step and saves its checkpoint, the publisher awaits
    /// its acks, the NATS service ends; the leader lease is released.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            mut supervisor,
            body_limit,
            shutdown_grace,
            ..
        } = self;
        let fatal = supervisor.fatal();
        let stop_http = CancellationToken::new();
        let stop_streams = state.shutdown.clone();
        let app = router(state, body_limit);
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(stop_http.clone().cancelled_owned())
            .into_future();
        let mut server = std::pin::pin!(server);
        let outcome = tokio::select! {
            _ = shutdown => Ok(()),
            _ = fatal.cancelled() => Err(anyhow::anyhow!("a task the process cannot run without has stopped")),
            served = &mut server => Err(match served {
                Ok(()) => anyhow::anyhow!("the HTTP server stopped"),
                Err(error) => anyhow::Error::new(error).context("serving HTTP"),
            }),
        };
        let deadline = tokio::time::Instant::now() + shutdown_grace;
        tracing::info!("shutting down: HTTP stops accepting and finishes in-flight requests");
        stop_streams.cancel();
        stop_http.cancel();
        match tokio::time::timeout_at(deadline, &mut server).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(error = %crate::errors::ErrorChain(&error), "HTTP server")
            }
            Err(_) => tracing::warn!("in-flight requests did not finish in time"),
        }
        supervisor.stop(Stage::Writers, deadline).await;
        supervisor.stop(Stage::Followers, deadline).await;
        supervisor.stop(Stage::Lease, deadline).await;
        tracing::info!("stopped");
        outcome
    }
}
