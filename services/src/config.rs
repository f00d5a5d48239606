//! Settings: compiled-in defaults (`config/defaults.toml`), then an optional file,
//! then flags and `CIRCLE_*` environment variables. No address, port or secret is
//! written in code.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::secret::Secret;

const DEFAULTS: &str = include_str!("../config/defaults.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub listen: String,
    pub data_dir: PathBuf,
    /// May carry a password: a [`Secret`], like the token and the key below.
    pub database_url: Option<Secret>,
    pub database_max_connections: u32,
    pub nats_url: Option<String>,
    pub admin_token: Option<Secret>,
    /// Base64 of 32 bytes; wraps every client's data key.
    pub master_key: Option<Secret>,
    pub body_limit_bytes: usize,
    pub command_attempts: u32,
    pub append_batch_max: usize,
    /// Aggregates of each type kept in memory between commands; the least recently
    /// used beyond this are loaded again from the log when next needed.
    pub aggregate_cache_capacity: usize,
    /// Consecutive absences that raise an attendance alert.
    pub alert_consecutive_absences: u32,
    /// The k of k-anonymity in the reporter form: a value computed from fewer people is `null`.
    pub reporter_min_count: u32,
    /// Longest a read waits for `min_position`, in milliseconds.
    pub read_wait_max_ms: u64,
    /// `as_of` reports computed at once; more are answered 503 with Retry-After.
    pub as_of_max_concurrent: usize,
    /// Exports (CSV, NDJSON) streaming at once; more are answered 503 with Retry-After.
    pub exports_max_concurrent: usize,
    /// A snapshot of the reports fold is kept every this many events, so `as_of`
    /// reports need not fold the log from the start.
    pub as_of_snapshot_every_events: i64,
    /// First token of every subject and prefix of stream names (`circle` →
    /// `circle.events.>`, `CIRCLE_EVENTS`).
    pub nats_namespace: String,
    /// At most one report publish per NATS subject per this many milliseconds.
    pub nats_coalesce_ms: u64,
    /// JetStream de-duplication window for re-published messages, in seconds.
    pub nats_duplicate_window_secs: u64,
    pub log: String,
    /// `text` for people, `json` for log shippers.
    pub log_format: LogFormat,
    /// OTLP/HTTP traces endpoint (`http://collector:4318/v1/traces`); needs a build
    /// with the `otlp` feature.
    pub otlp_endpoint: Option<String>,
    /// Longest a request may take before it is answered 503, in milliseconds.
    pub request_timeout_ms: u64,
    /// Requests served at once; more are answered 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// How long the leader's lease lasts without renewal, in milliseconds.
    pub leader_lease_ttl_ms: u64,
    /// From SIGTERM to exit: HTTP drains, then the appender, then the followers.
    pub shutdown_grace_ms: u64,
    /// The checkpoint signing key, `PRIVATE+KEY+name+id+key` (signed-note form). The
    /// embedded store creates one in the data directory; PostgreSQL without one
    /// signs no checkpoints.
    pub audit_signing_key: Option<Secret>,
    /// The log's name (checkpoint origin) for a key Circle generates itself.
    pub audit_origin: String,
    /// The leader signs a checkpoint once this many events are unsigned...
    pub audit_checkpoint_every_events: i64,
    /// ...or this long after the last one, whichever comes first (milliseconds).
    pub audit_checkpoint_every_ms: u64,
    /// Record every disclosure of client data and every refusal (ARCHITECTURE.md,
    /// "Privacy"). Off only to measure what it costs.
    pub access_log: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Values from flags or the environment; `None` keeps the file's value.
#[derive(Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub nats_url: Option<String>,
    pub admin_token: Option<String>,
    pub master_key: Option<String>,
    pub audit_signing_key: Option<String>,
    pub log_format: Option<LogFormat>,
}

/// Shown without the secrets it may carry.
impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |value: &Option<String>| value.as_ref().map(|_| "[redacted]");
        f.debug_struct("Overrides")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &hidden(&self.database_url))
            .field("nats_url", &self.nats_url)
            .field("admin_token", &hidden(&self.admin_token))
            .field("master_key", &hidden(&self.master_key))
            .field("audit_signing_key", &hidden(&self.audit_signing_key))
            .field("log_format", &self.log_format)
            .finish()
    }
}

impl Settings {
    pub fn load(file: Option<&Path>, overrides: Overrides) -> anyhow::Result<Settings> {
        let mut table: toml::Table = DEFAULTS.parse().context("parsing built-in defaults")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let user: toml::Table = text
                .parse()
                .with_context(|| format!("parsing config file {}", path.display()))?;
            table.extend(user);
        }
        let mut settings: Settings = toml::Value::Table(table)
            .try_into()
            .context("reading settings")?;
        let Overrides {
            listen,
            data_dir,
            database_url,
            nats_url,
            admin_token,
            master_key,
            audit_signing_key,
            log_format,
        } = overrides;
        settings.listen = listen.unwrap_or(settings.listen);
        settings.data_dir = data_dir.unwrap_or(settings.data_dir);
        settings.database_url = database_url
            .map(Secret::from)
            .or(settings.database_url)
            .filter(|u| !u.expose().is_empty());
        settings.nats_url = nats_url.or(settings.nats_url).filter(|u| !u.is_empty());
        settings.admin_token = admin_token.map(Secret::from).or(settings.admin_token);
        settings.master_key = master_key.map(Secret::from).or(settings.master_key);
        // An empty value (a deployment's unset variable) means no key, as for URLs.
        settings.audit_signing_key = audit_signing_key
            .map(Secret::from)
            .or(settings.audit_signing_key)
            .filter(|k| !k.expose().trim().is_empty());
        settings.log_format = log_format.unwrap_or(settings.log_format);
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_flags_win_over_files() {
        let settings = Settings::load(None, Overrides::default()).unwrap();
        assert!(settings.database_url.is_none());
        let dir = std::env::temp_dir().join(format!("circle-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("circle.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:9000\"\ncommand_attempts = 9\n").unwrap();
        let settings = Settings::load(
            Some(&file),
            Overrides {
                listen: Some("127.0.0.1:0".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(settings.listen, "127.0.0.1:0");
        assert_eq!(settings.command_attempts, 9);
    }

    #[test]
    fn a_secret_never_prints() {
        let settings = Settings::load(
            None,
            Overrides {
                audit_signing_key: Some("PRIVATE+KEY+x+00000000+c2VjcmV0".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert!(!format!("{settings:?}").contains("PRIVATE"));
        assert!(settings
            .audit_signing_key
            .unwrap()
            .expose()
            .contains("PRIVATE"));
    }

    #[test]
    fn settings_and_overrides_show_no_secret_in_debug() {
        let (password, token, key) = (
            "pg-pass-5f1c9e",
            "admin-token-8d2b7a41c3e9f0a6b5d4c3e2",
            "bWFzdGVyLWtleS1ieXRlcy0zMi1ieXRlcy1sb25nISE=",
        );
        let overrides = Overrides {
            database_url: Some(format!("postgres://circle:{password}@db:5432/circle")),
            admin_token: Some(token.into()),
            master_key: Some(key.into()),
            ..Overrides::default()
        };
        let settings = Settings::load(None, overrides.clone()).unwrap();
        let shown = format!("{settings:?} {settings:#?} {overrides:?} {overrides:#?}");
        for secret in [password, token, key] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("[redacted]"));
        assert_eq!(settings.admin_token.unwrap().expose(), token);
    }

    #[test]
    fn an_unknown_key_is_an_error_not_a_silent_default() {
        let dir = std::env::temp_dir().join(format!("circle-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("circle.toml");
        std::fs::write(&file, "lisen = \"0.0.0.0:9000\"\n").unwrap();
        assert!(Settings::load(Some(&file), Overrides::default()).is_err());
    }
}
