//! Publishing over NATS JetStream, driven by the ordered log, never by the command
//! path: with NATS down, commands still succeed; when it returns, everything is
//! published from the publisher's own durable checkpoint.
//!
//! - Every event goes to `CIRCLE_EVENTS` on `circle.events.<aggregate_type>.<id>` with
//!   `Nats-Msg-Id` = event id, CloudEvents `ce-*` headers and opaque ids only.
//! - Reports go to `CIRCLE_REPORTS` on `circle.reports.<kind>.group.<id>` and
//!   `circle.reports.<kind>.practice`, in the reporter form, with `Circle-Position`
//!   and `Nats-Msg-Id` = `subject@position`; the stream keeps the newest per subject.
//!   Bursts are coalesced: at most one publish per subject per interval.
//! - A re-publish after a failure carries the same message ids, so JetStream's
//!   de-duplication keeps every stream free of duplicates.
//!
//! Only nats-server 2.9 features are used (no KV, no 2.10 stream options).
//!
//! Only the leader publishes (see `leader.rs`); its checkpoint saves are fenced by
//! its lease. Every instance answers report requests from its own live reports.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::service::ServiceExt;
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::Utc;
use circle_events::group::{Group, Sensitivity};
use circle_projections::consent::{self, sensitivity_in, SENSITIVITY_HEADER};
use circle_projections::goals;
use circle_projections::practice::Practice;
use circle_projections::reports::{self, RetentionScope};
use cqrs_es::Aggregate;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::errors::ErrorChain;
use crate::http::Reporting;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::policy::{self, Action, Resource, View};
use crate::projector::LiveReports;
use crate::store::{Fence, RecordedEvent, Store};

const CHECKPOINT: &str = "nats";
const PAGE: i64 = 1_000;
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Fields never published: sealed personal data and goal titles, and a token's
/// label (free text an admin wrote about whom a token is for).
const SEALED_FIELDS: [&str; 3] = ["personal", "title", "label"];

/// Every report Circle publishes and answers on NATS: `<ns>.reports.<kind>.…` and
/// `<ns>.api.reports.<kind>`. A new report joins here and nowhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    Attendance,
    Retention,
    Outcomes,
    Goals,
    Alerts,
}

impl ReportKind {
    pub const ALL: [ReportKind; 5] = [
        ReportKind::Attendance,
        ReportKind::Retention,
        ReportKind::Outcomes,
        ReportKind::Goals,
        ReportKind::Alerts,
    ];

    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Attendance => "attendance",
            ReportKind::Retention => "retention",
            ReportKind::Outcomes => "outcomes",
            ReportKind::Goals => "goals",
            ReportKind::Alerts => "alerts",
        }
    }
}

#[derive(Clone, Debug)]
pub struct NatsSettings {
    pub url: String,
    /// First subject token and stream-name prefix: `circle` gives `circle.events.>`,
    /// `CIRCLE_EVENTS`, `circle.reports.>`, `CIRCLE_REPORTS`, `circle.api.reports.*`.
    /// Tests use their own so they can share one server.
    pub namespace: String,
    /// At most one report publish per subject per this interval.
    pub coalesce: Duration,
    pub duplicate_window: Duration,
}

/// What still has to be published, saved with the checkpoint so a restart loses
/// nothing: groups whose reports changed since the last report publish.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Pending {
    groups: BTreeSet<String>,
    practice: bool,
    /// Every group's reports: what an unreadable checkpoint leaves pending.
    #[serde(default)]
    all_groups: bool,
}

impl Pending {
    fn everything() -> Pending {
        Pending {
            groups: BTreeSet::new(),
            practice: true,
            all_groups: true,
        }
    }

    fn is_empty(&self) -> bool {
        !self.practice && !self.all_groups && self.groups.is_empty()
    }
}

/// Reads the publisher's saved state. Unreadable means "everything pending", never
/// "nothing": publishing every report again costs little, skipping one loses it.
fn read_pending(state: &str) -> Pending {
    serde_json::from_str(state).unwrap_or_else(|error| {
        tracing::warn!(%error, "the NATS checkpoint's state is unreadable; every report will be published again");
        Pending::everything()
    })
}

/// The NATS tasks, to be run supervised: the publisher ([`Nats::publish`], leader
/// only) and the `circle` micro service ([`Nats::serve`], every instance).
#[derive(Clone)]
pub struct Nats {
    client: async_nats::Client,
    publisher: Arc<Publisher>,
}

/// Connects (retrying in the background when NATS is down: Circle starts and
/// serves without it, and publishes once it appears).
pub async fn start(
    settings: NatsSettings,
    store: Store,
    reports: Arc<LiveReports>,
    reporting: Reporting,
    metrics: Metrics,
) -> anyhow::Result<Nats> {
    let client = async_nats::ConnectOptions::new()
        .name("circle")
        .retry_on_initial_connect()
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS disconnected; publishing will resume from the log")
                }
                other => tracing::info!(event = %other, "NATS"),
            }
        })
        .connect(settings.url.as_str())
        .await?;
    let publisher = Publisher {
        js: jetstream::new(client.clone()),
        store,
        reports,
        reporting,
        metrics,
        settings,
    };
    Ok(Nats {
        client,
        publisher: Arc::new(publisher),
    })
}

impl Nats {
    /// Publishes while this instance leads, until `stop`.
    pub async fn publish(
        &self,
        mut leadership: Leadership,
        committed: watch::Receiver<i64>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let fence = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                fence = leadership.acquired() => fence,
            };
            let Some(fence) = fence else {
                return Ok(());
            };
            // Stop publishing at once when the lease moves on, or when asked to.
            let follower_stop = stop.child_token();
            let lost = {
                let (mut leadership, fence, follower_stop) =
                    (leadership.clone(), fence.clone(), follower_stop.clone());
                async move {
                    leadership.lost(&fence).await;
                    follower_stop.cancel();
                }
            };
            tokio::select! {
                outcome = self.publisher.run(&fence, committed.clone(), follower_stop.clone()) => outcome?,
                _ = lost => {
                    tracing::info!("NATS publishing handed over: this instance no longer leads");
                }
            }
            follower_stop.cancel();
            if stop.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// The `circle` micro service, until `stop`.
    pub async fn serve(&self, stop: CancellationToken) -> anyhow::Result<()> {
        let p = &self.publisher;
        serve_reports(
            &self.client,
            &p.settings.namespace,
            &p.reports,
            &p.reporting,
            stop,
        )
        .await
    }
}

impl Nats {
    /// Publishes each checkpoint the leader signs, as its signed note, on
    /// `<namespace>.audit.checkpoint` (stream `<NAMESPACE>_AUDIT`), message id
    /// `checkpoint@<size>` so a re-publish is de-duplicated. A failed publish is
    /// retried until it succeeds or a newer checkpoint replaces it.
    pub async fn publish_checkpoints(
        &self,
        mut signed: watch::Receiver<Option<crate::store::TreeHead>>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let settings = &self.publisher.settings;
        let js = &self.publisher.js;
        let subject = format!("{}.audit.checkpoint", settings.namespace);
        let mut stream_ready = false;
        loop {
            let next = signed.borrow_and_update().clone();
            if let Some(head) = next {
                let published = async {
                    if !stream_ready {
                        js.get_or_create_stream(stream::Config {
                            name: settings.audit_stream(),
                            subjects: vec![format!("{}.audit.>", settings.namespace)],
                            duplicate_window: settings.duplicate_window,
                            storage: stream::StorageType::File,
                            ..Default::default()
                        })
                        .await?;
                        stream_ready = true;
                    }
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", format!("checkpoint@{}", head.size).as_str());
                    headers.insert("Circle-Tree-Size", head.size.to_string().as_str());
                    js.publish_with_headers(subject.clone(), headers, head.note.clone().into())
                        .await?
                        .await?;
                    anyhow::Ok(())
                }
                .await;
                if let Err(error) = published {
                    tracing::warn!(error = %crate::errors::ErrorChain(error.as_ref()), "publishing a checkpoint; retrying");
                    stream_ready = false;
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    signed.mark_changed();
                    continue;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                changed = signed.changed() => if changed.is_err() { return Ok(()) },
            }
        }
    }
}

impl NatsSettings {
    pub fn audit_stream(&self) -> String {
        format!("{}_AUDIT", self.namespace.to_uppercase())
    }

    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.namespace.to_uppercase())
    }

    pub fn reports_stream(&self) -> String {
        format!("{}_REPORTS", self.namespace.to_uppercase())
    }
}

struct Publisher {
    js: jetstream::Context,
    store: Store,
    reports: Arc<LiveReports>,
    reporting: Reporting,
    metrics: Metrics,
    settings: NatsSettings,
}

impl Publisher {
    /// Publishes from the saved checkpoint under `fence` until `stop`; the page in
    /// flight when `stop` comes is finished, its acks awaited and the checkpoint saved.
    async fn run(
        &self,
        fence: &Fence,
        mut committed: watch::Receiver<i64>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let (mut position, mut pending) = match self.store.load_checkpoint(CHECKPOINT).await? {
            Some((position, state)) => (position, read_pending(&state)),
            None => (0, Pending::default()),
        };
        let mut streams_ready = false;
        let mut last_reports = Instant::now() - self.settings.coalesce;
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let span = tracing::debug_span!("publisher.batch", after = position);
            let outcome = async {
                if !streams_ready {
                    self.ensure_streams().await?;
                    streams_ready = true;
                }
                let published = self
                    .publish_events(fence, &mut position, &mut pending)
                    .await?;
                let reports_due =
                    !pending.is_empty() && last_reports.elapsed() >= self.settings.coalesce;
                if reports_due
                    && self
                        .reports
                        .caught_up(position, Duration::from_secs(5))
                        .await
                {
                    self.publish_reports(&pending).await?;
                    pending = Pending::default();
                    last_reports = Instant::now();
                    self.save(fence, position, &pending).await?;
                }
                anyhow::Ok(published)
            }
            .instrument(span)
            .await;
            match outcome {
                Ok(published) => {
                    backoff = Duration::from_millis(100);
                    if let Ok(head) = self.store.head_position().await {
                        self.metrics
                            .observe_projection(CHECKPOINT, position, head, None);
                    }
                    if published == 0 {
                        if pending.is_empty() {
                            self.metrics.checkpoint_saved(CHECKPOINT);
                        }
                        let wait = if !pending.is_empty() {
                            self.settings
                                .coalesce
                                .saturating_sub(last_reports.elapsed())
                        } else {
                            IDLE_POLL
                        };
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            changed = committed.changed() => {
                                if changed.is_err() {
                                    tokio::time::sleep(wait).await;
                                }
                            }
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
                Err(error) => {
                    if error.downcast_ref::<Fenced>().is_some() {
                        return Err(error);
                    }
                    streams_ready = false;
                    self.metrics.projection_failed(CHECKPOINT);
                    let error: &dyn std::error::Error = error.as_ref();
                    tracing::warn!(error = %ErrorChain(error), position, "publishing to NATS failed; will retry from the checkpoint");
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        Ok(())
    }

    async fn ensure_streams(&self) -> anyhow::Result<()> {
        self.js
            .get_or_create_stream(stream::Config {
                name: self.settings.events_stream(),
                subjects: vec![format!("{}.events.>", self.settings.namespace)],
                duplicate_window: self.settings.duplicate_window,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        self.js
            .get_or_create_stream(stream::Config {
                name: self.settings.reports_stream(),
                subjects: vec![format!("{}.reports.>", self.settings.namespace)],
                duplicate_window: self.settings.duplicate_window,
                max_messages_per_subject: 1,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    async fn save(&self, fence: &Fence, position: i64, pending: &Pending) -> anyhow::Result<()> {
        let state = serde_json::to_string(pending)?;
        let saved = self
            .store
            .save_checkpoint(CHECKPOINT, position, &state, Some(fence))
            .await?;
        if !saved {
            return Err(Fenced.into());
        }
        self.metrics.checkpoint_saved(CHECKPOINT);
        Ok(())
    }

    /// Publishes one page of events, awaiting every ack, then moves the checkpoint.
    async fn publish_events(
        &self,
        fence: &Fence,
        position: &mut i64,
        pending: &mut Pending,
    ) -> anyhow::Result<usize> {
        let page = self.store.read_all(*position, PAGE).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            return Ok(0);
        };
        // Consent and labels from reports that have seen at least this page: a
        // withdrawal later in the page already applies to the events before it.
        if !self.reports.caught_up(last, Duration::from_secs(5)).await {
            anyhow::bail!("the reports projection has not reached position {last} yet");
        }
        let (withdrawn, labels) = self.reports.read(|practice| {
            let labels: std::collections::BTreeMap<&str, Option<Sensitivity>> = page
                .iter()
                .filter(|e| e.aggregate_type == Group::TYPE)
                .map(|e| {
                    let label = reports::group_sensitivity(practice, &e.aggregate_id);
                    (e.aggregate_id.as_str(), label)
                })
                .collect();
            (consent::withdrawn_from_reporting(practice), labels)
        });
        let mut acks = Vec::with_capacity(page.len());
        for event in &page {
            let withheld = client_of(event).is_some_and(|client| withdrawn.contains(client));
            if !withheld {
                let label = labels.get(event.aggregate_id.as_str()).copied().flatten();
                let (subject, headers, body) =
                    event_message(&self.settings.namespace, event, label);
                acks.push(self.js.publish_with_headers(subject, headers, body).await?);
            }
            if event.aggregate_type == Group::TYPE {
                pending.groups.insert(event.aggregate_id.clone());
                pending.practice = true;
            }
        }
        for ack in acks {
            // A duplicate ack means an earlier attempt already stored it: success.
            ack.await?;
        }
        *position = last;
        self.save(fence, *position, pending).await?;
        Ok(page.len())
    }

    async fn publish_reports(&self, pending: &Pending) -> anyhow::Result<()> {
        let k = self.reporting.projection.reporter_min_count;
        let ns = &self.settings.namespace;
        let messages: Vec<(String, i64, Value)> = self.reports.read(|practice| {
            let now = Utc::now();
            let withdrawn = consent::withdrawn_from_reporting(practice);
            let mut messages = Vec::new();
            let groups: Vec<&String> = if pending.all_groups {
                practice.groups.keys().collect()
            } else {
                pending.groups.iter().collect()
            };
            for group_id in groups {
                for kind in ReportKind::ALL {
                    if let Some(body) = group_report(practice, &withdrawn, kind, group_id, k, now) {
                        messages.push((
                            format!("{ns}.reports.{}.group.{group_id}", kind.as_str()),
                            practice.position,
                            body,
                        ));
                    }
                }
            }
            if pending.practice || pending.all_groups {
                let scope = RetentionScope::Practice;
                let retention = consent::reporter_form(practice, &withdrawn, &scope, k, |p| {
                    Some(reports::retention(p, &scope, now))
                });
                messages.push((
                    format!("{ns}.reports.retention.practice"),
                    practice.position,
                    to_json(&retention),
                ));
                messages.push((
                    format!("{ns}.reports.alerts.practice"),
                    practice.position,
                    alert_counts(practice, &withdrawn, None, k),
                ));
            }
            messages
        });
        let mut acks = Vec::with_capacity(messages.len());
        for (subject, position, body) in messages {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{subject}@{position}").as_str());
            headers.insert("Circle-Position", position.to_string().as_str());
            headers.insert("Content-Type", "application/json");
            if let Some(label) = sensitivity_in(&body) {
                headers.insert(SENSITIVITY_HEADER, label.as_str());
            }
            let payload = Bytes::from(serde_json::to_vec(&body)?);
            acks.push(
                self.js
                    .publish_with_headers(subject, headers, payload)
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }
}

/// The lease moved on while publishing: another instance publishes now.
#[derive(Debug, thiserror::Error)]
#[error("the leader lease has moved on; this instance no longer publishes")]
struct Fenced;

fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The client an event is about: the client's own stream, or the member a group
/// event names (each group event about a member names exactly one, `client_id`, in
/// every stored form: `circle_events::stored_forms`).
fn client_of(event: &RecordedEvent) -> Option<&str> {
    if event.aggregate_type == circle_events::client::Client::TYPE {
        return Some(&event.aggregate_id);
    }
    event.payload.get("client_id")?.as_str()
}

/// An event as published: opaque ids and scores, no sealed personal data, no actor
/// id; a group's label (`sensitivity` and `Circle-Sensitivity`) when it has one.
fn event_message(
    namespace: &str,
    event: &RecordedEvent,
    label: Option<Sensitivity>,
) -> (String, HeaderMap, Bytes) {
    let subject = format!(
        "{namespace}.events.{}.{}",
        event.aggregate_type, event.aggregate_id
    );
    let mut data = event.payload.clone();
    if let Some(object) = data.as_object_mut() {
        for field in SEALED_FIELDS {
            object.remove(field);
        }
    }
    let mut body = json!({
        "position": event.position,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "sequence": event.sequence,
        "event_type": event.event_type,
        "event_version": event.event_version,
        "occurred_at": event.occurred_at,
        "recorded_at": event.recorded_at,
        "actor_role": event.actor_role,
        "data": data,
    });
    let id = event.event_id.to_string();
    let mut headers = HeaderMap::new();
    if let Some(label) = label {
        body["sensitivity"] = json!(label);
        headers.insert(SENSITIVITY_HEADER, label.as_str());
    }
    headers.insert("Nats-Msg-Id", id.as_str());
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", id.as_str());
    headers.insert("ce-source", "circle");
    headers.insert(
        "ce-type",
        format!(
            "circle.{}.{}.v{}",
            event.aggregate_type, event.event_type, event.event_version
        )
        .as_str(),
    );
    headers.insert("ce-subject", event.aggregate_id.as_str());
    headers.insert("ce-time", event.recorded_at.to_rfc3339().as_str());
    headers.insert("ce-datacontenttype", "application/json");
    headers.insert("Circle-Position", event.position.to_string().as_str());
    (
        subject,
        headers,
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
    )
}

/// One group's report of one kind, in the reporter form, without the clients in
/// `withdrawn` (see [`consent::reporter_form`]).
fn group_report(
    practice: &Practice,
    withdrawn: &BTreeSet<String>,
    kind: ReportKind,
    group_id: &str,
    k: u32,
    now: chrono::DateTime<Utc>,
) -> Option<Value> {
    let scope = RetentionScope::Group(group_id.to_string());
    match kind {
        ReportKind::Attendance => consent::reporter_form(practice, withdrawn, &scope, k, |p| {
            reports::attendance(p, group_id, now)
        })
        .map(|r| to_json(&r)),
        ReportKind::Retention => consent::reporter_form(practice, withdrawn, &scope, k, |p| {
            Some(reports::retention(p, &scope, now))
        })
        .map(|r| to_json(&r)),
        ReportKind::Outcomes => {
            let group = practice.groups.get(group_id)?;
            let view = consent::for_reporting(practice, withdrawn, &scope);
            let per_instrument: Vec<Value> = group
                .measures
                .keys()
                .filter_map(|instrument| {
                    consent::reporter_form(practice, withdrawn, &scope, k, |p| {
                        reports::outcomes(p, group_id, instrument, now)
                    })
                })
                .map(|r| to_json(&r))
                .collect();
            let mut body = json!({"group_id": group_id, "position": practice.position, "as_of": now,
                "left_out_without_consent": view.left_out_without_consent, "reports": per_instrument});
            label(&mut body, reports::group_sensitivity(practice, group_id));
            Some(body)
        }
        ReportKind::Goals => consent::reporter_form(practice, withdrawn, &scope, k, |p| {
            goals::goals(p, group_id, now)
        })
        .map(|r| to_json(&r)),
        ReportKind::Alerts => Some(alert_counts(practice, withdrawn, Some(group_id), k)),
    }
}

/// Sets a message body's `sensitivity` field (and so its header) to `label`.
fn label(body: &mut Value, label: Option<Sensitivity>) {
    if let Some(label) = label {
        body["sensitivity"] = json!(label);
    }
}

/// Alerts in the reporter form: counts by kind (see [`reports::alert_counts`]),
/// without the clients in `withdrawn`.
fn alert_counts(
    practice: &Practice,
    withdrawn: &BTreeSet<String>,
    group_id: Option<&str>,
    k: u32,
) -> Value {
    let scope = group_id.map_or(RetentionScope::Practice, |g| {
        RetentionScope::Group(g.to_string())
    });
    let view = consent::for_reporting(practice, withdrawn, &scope);
    let counts: serde_json::Map<String, Value> = reports::alert_counts(&view.practice, group_id, k)
        .into_iter()
        .map(|(kind, count)| {
            let name = to_json(&kind).as_str().unwrap_or_default().to_string();
            (name, json!(count))
        })
        .collect();
    let mut body = json!({"scope": scope.label(), "position": practice.position,
        "left_out_without_consent": view.left_out_without_consent, "counts": counts});
    label(&mut body, consent::sensitivity(practice, &scope));
    body
}

#[derive(Deserialize)]
struct ReportRequest {
    group_id: Option<String>,
    focus: Option<String>,
    instrument: Option<String>,
}

fn service_error(code: usize, status: &str) -> async_nats::service::error::Error {
    async_nats::service::error::Error {
        status: status.to_string(),
        code,
    }
}

/// The `circle` micro service: `circle.api.reports.<kind>` answers with the same JSON
/// as HTTP, in the reporter form (NATS callers are reporting jobs).
async fn serve_reports(
    client: &async_nats::Client,
    namespace: &str,
    reports: &LiveReports,
    reporting: &Reporting,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let service = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        service = client
            .service_builder()
            .description("Circle reports in the aggregate (reporter) form")
            .start("circle", env!("CARGO_PKG_VERSION")) => service.map_err(|e| anyhow::anyhow!("starting the NATS micro service: {e}"))?,
    };
    let group = service.group(format!("{namespace}.api.reports"));
    let mut endpoints = Vec::with_capacity(ReportKind::ALL.len());
    for kind in ReportKind::ALL {
        let endpoint = group
            .endpoint(kind.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("adding the NATS endpoint {}: {e}", kind.as_str()))?;
        endpoints.push(endpoint.map(move |request| (kind, request)).boxed());
    }
    let mut requests = futures_util::stream::select_all(endpoints);
    loop {
        let (kind, request) = tokio::select! {
            _ = stop.cancelled() => break,
            next = requests.next() => match next {
                Some(next) => next,
                None => anyhow::bail!("the NATS micro service's endpoints closed"),
            },
        };
        let answer = answer(reports, reporting, kind, &request.message.payload);
        let mut headers = HeaderMap::new();
        if let Some(label) = answer.as_ref().ok().and_then(sensitivity_in) {
            headers.insert(SENSITIVITY_HEADER, label.as_str());
        }
        let response = answer.and_then(|body| {
            serde_json::to_vec(&body)
                .map(Bytes::from)
                .map_err(|_| service_error(500, "report could not be encoded"))
        });
        if let Err(error) = request.respond_with_headers(response, headers).await {
            tracing::warn!(error = %ErrorChain(&error), "answering a NATS report request");
        }
    }
    service
        .stop()
        .await
        .map_err(|e| anyhow::anyhow!("stopping the NATS micro service: {e}"))?;
    Ok(())
}

fn answer(
    reports: &LiveReports,
    reporting: &Reporting,
    kind: ReportKind,
    payload: &[u8],
) -> Result<Value, async_nats::service::error::Error> {
    let request: ReportRequest = if payload.is_empty() {
        ReportRequest {
            group_id: None,
            focus: None,
            instrument: None,
        }
    } else {
        serde_json::from_slice(payload).map_err(|e| service_error(400, &format!("request: {e}")))?
    };
    // NATS carries no token: every requester is a reporting job, and the policy
    // gives reporters the aggregate form, which is the only form built below.
    let requester = crate::auth::Principal {
        role: crate::auth::Role::Reporter,
        clinician_id: None,
        actor_id: "nats".to_string(),
        token_id: String::new(),
    };
    match policy::check(&requester, Action::ReadReport, Resource::Practice) {
        Ok(View::Aggregate) => {}
        Ok(_) => {
            return Err(service_error(
                403,
                "only the aggregate form is served on NATS",
            ))
        }
        Err(denial) => return Err(service_error(403, &denial.reason)),
    }
    let k = reporting.projection.reporter_min_count;
    reports.read(|practice| {
        let now = Utc::now();
        let withdrawn = consent::withdrawn_from_reporting(practice);
        let group = || {
            request
                .group_id
                .clone()
                .ok_or_else(|| service_error(400, "group_id is required"))
        };
        match kind {
            ReportKind::Retention => {
                let scope = match (&request.group_id, &request.focus) {
                    (Some(g), _) => RetentionScope::Group(g.clone()),
                    (None, Some(f)) => RetentionScope::Focus(
                        serde_json::from_value(json!(f))
                            .map_err(|_| service_error(400, "unknown focus"))?,
                    ),
                    (None, None) => RetentionScope::Practice,
                };
                let retention = consent::reporter_form(practice, &withdrawn, &scope, k, |p| {
                    Some(reports::retention(p, &scope, now))
                });
                Ok(to_json(&retention))
            }
            ReportKind::Attendance => {
                let group_id = group()?;
                let scope = RetentionScope::Group(group_id.clone());
                consent::reporter_form(practice, &withdrawn, &scope, k, |p| {
                    reports::attendance(p, &group_id, now)
                })
                .map(|r| to_json(&r))
                .ok_or_else(|| service_error(404, "no group with that id"))
            }
            ReportKind::Outcomes => {
                let instrument = request
                    .instrument
                    .clone()
                    .ok_or_else(|| service_error(400, "instrument is required"))?;
                let group_id = group()?;
                let scope = RetentionScope::Group(group_id.clone());
                consent::reporter_form(practice, &withdrawn, &scope, k, |p| {
                    reports::outcomes(p, &group_id, &instrument, now)
                })
                .map(|r| to_json(&r))
                .ok_or_else(|| service_error(404, "no such group or instrument"))
            }
            ReportKind::Goals => {
                let group_id = group()?;
                let scope = RetentionScope::Group(group_id.clone());
                consent::reporter_form(practice, &withdrawn, &scope, k, |p| {
                    goals::goals(p, &group_id, now)
                })
                .map(|r| to_json(&r))
                .ok_or_else(|| service_error(404, "no group with that id"))
            }
            ReportKind::Alerts => Ok(alert_counts(
                practice,
                &withdrawn,
                request.group_id.as_deref(),
                k,
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The publisher's checkpoint state is a stored contract: this is its form.
    #[test]
    fn the_pending_state_keeps_its_stored_form() {
        let pending = Pending {
            groups: BTreeSet::from(["grp-a".to_string()]),
            practice: true,
            all_groups: false,
        };
        let stored = r#"{"groups":["grp-a"],"practice":true,"all_groups":false}"#;
        assert_eq!(serde_json::to_string(&pending).unwrap(), stored);
        assert_eq!(read_pending(stored), pending);
        // Saved before `all_groups` existed.
        let older = r#"{"groups":["grp-a"],"practice":true}"#;
        assert_eq!(read_pending(older), pending);
    }

    #[test]
    fn an_unreadable_checkpoint_leaves_every_report_pending_never_none() {
        for unreadable in ["", "{", "[]", r#"{"groups":"grp-a"}"#] {
            let pending = read_pending(unreadable);
            assert_eq!(pending, Pending::everything(), "{unreadable:?}");
            assert!(!pending.is_empty());
        }
    }
}
