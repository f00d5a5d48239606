//! Running an import: files in the layout's order, rows streamed (never a whole
//! file in memory), each row sent through the command path as the command it stands
//! for. Rows for one aggregate run in file order on one worker; a worker's queued
//! rows for one group run as one chain (one commit for all of them, see
//! [`CommandService::execute_chain`](crate::commands::CommandService::execute_chain)).
//! Different aggregates run on many workers at once and meet in the appender, which
//! commits them together (the same group commit that gives the API its throughput).

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use circle_events::client::{Client, ClientCommand};
use circle_events::group::{Group, GroupCommand};
use circle_events::{Rejection, RejectionKind};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::layout::{Header, Kind};
use super::rows::{plan, Planned, Row};
use crate::auth::Principal;
use crate::commands::{CommandContext, CommandError, IdempotencyRequest, Link, Repository, Step};
use crate::http::AppState;
use crate::store::{KeyAction, StoredResponse};

/// A physical line longer than this ends the file's import: a file without line
/// breaks (or a runaway quote) must not be read into memory whole.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Rows queued per worker (bounded, so memory stays flat whatever the file's size).
const WORKER_QUEUE: usize = 1024;

/// Rows a worker takes from its queue at once and looks up in one query.
const LOOKUP_BATCH: usize = 256;

#[derive(Clone, Debug)]
pub struct Options {
    /// Check every row against the store as it stands (and the rows before it),
    /// write nothing.
    pub dry_run: bool,
    /// Aggregates written at once.
    pub workers: usize,
    /// Refused rows printed; the rest are counted.
    pub max_errors: u64,
    /// A counter line on stderr.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            workers: 256,
            max_errors: 1000,
            progress: true,
        }
    }
}

/// What happened to one file's rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileSummary {
    pub file: String,
    pub rows: u64,
    /// Appended now (or, in a dry run, accepted by the domain).
    pub written: u64,
    /// Found by their idempotency key: imported by an earlier run.
    pub already: u64,
    pub refused: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub files: Vec<FileSummary>,
    pub elapsed: Duration,
    pub dry_run: bool,
    /// Refused rows not printed (past `max_errors`).
    pub unprinted: u64,
}

impl Summary {
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    pub fn refused(&self) -> u64 {
        self.files.iter().map(|f| f.refused).sum()
    }

    /// The summary printed at the end, one line per file and a total.
    pub fn lines(&self) -> Vec<String> {
        let verb = if self.dry_run {
            "would write"
        } else {
            "written"
        };
        let mut lines: Vec<String> = self
            .files
            .iter()
            .map(|f| {
                format!(
                    "{}: {} rows, {} {verb}, {} already imported, {} refused",
                    f.file, f.rows, f.written, f.already, f.refused
                )
            })
            .collect();
        if self.unprinted > 0 {
            lines.push(format!("({} more refused rows not shown)", self.unprinted));
        }
        let seconds = self.elapsed.as_secs_f64().max(1e-3);
        lines.push(format!(
            "{} {} rows in {:.1}s ({:.0} rows/s): {} {verb}, {} already imported, {} refused",
            if self.dry_run { "checked" } else { "imported" },
            self.rows(),
            seconds,
            self.rows() as f64 / seconds,
            self.files.iter().map(|f| f.written).sum::<u64>(),
            self.files.iter().map(|f| f.already).sum::<u64>(),
            self.refused(),
        ));
        lines
    }
}

/// A row refused: where, and why. Printed as `file:line: column: reason`.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub file: String,
    pub line: u64,
    pub column: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(column) => write!(f, "{}:{}: {column}: {}", self.file, self.line, self.reason),
            None => write!(f, "{}:{}: {}", self.file, self.line, self.reason),
        }
    }
}

/// The files a path names, in the layout's order.
pub fn files_of(path: &Path) -> anyhow::Result<Vec<(Kind, PathBuf)>> {
    if path.is_dir() {
        let mut found = Vec::new();
        for kind in Kind::ORDER {
            let file = path.join(kind.file_name());
            if file.is_file() {
                found.push((kind, file));
            }
        }
        anyhow::ensure!(
            !found.is_empty(),
            "{} holds none of the layout's files ({})",
            path.display(),
            Kind::ORDER.map(|k| k.file_name()).join(", ")
        );
        return Ok(found);
    }
    let kind = Kind::of_file(path).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the file's name says what it holds: one of {}",
            path.display(),
            Kind::ORDER.map(|k| k.file_name()).join(", ")
        )
    })?;
    Ok(vec![(kind, path.to_path_buf())])
}

enum Outcome {
    Written,
    Already,
    Refused(Refusal),
    /// The store failed: the import stops (a re-run resumes it).
    Fatal(String),
}

struct Job {
    line: u64,
    key: String,
    request_hash: Vec<u8>,
    planned: Planned,
}

/// State a dry run decides against: what the store holds, advanced by the rows
/// accepted so far (nothing is appended).
#[derive(Default)]
struct DryRun {
    groups: Mutex<HashMap<String, Group>>,
    clients: Mutex<HashMap<String, Client>>,
    keys: Mutex<HashMap<String, u64>>,
}

struct Shared {
    state: AppState,
    dry_run: Option<Arc<DryRun>>,
    head_at_start: i64,
    file: String,
    principal: Principal,
}

/// Imports `path` (a file or a directory in the layout). Refused rows are printed on
/// stdout as they are found; the summary is returned.
pub async fn import(state: &AppState, path: &Path, options: &Options) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let files = files_of(path)?;
    let mut summary = Summary {
        dry_run: options.dry_run,
        ..Summary::default()
    };
    let printed = Arc::new(AtomicU64::new(0));
    // One dry run's state across its files: a membership row sees the clients row.
    let dry_run = options.dry_run.then(|| Arc::new(DryRun::default()));
    for (kind, file) in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("input.csv")
            .to_string();
        let shared = Arc::new(Shared {
            state: state.clone(),
            dry_run: dry_run.clone(),
            head_at_start: state.store.head_position().await?,
            principal: Principal::system(format!("import:{name}")),
            file: name.clone(),
        });
        let file_summary = import_file(shared, kind, &file, options, printed.clone()).await?;
        // Erased keys leave the table's files too (as after the API's erasure), once.
        if kind == Kind::Erasures && file_summary.written > 0 && !options.dry_run {
            if let Err(error) = state.store.compact_keys().await {
                tracing::warn!(error = %crate::errors::ErrorChain(&error), "the key table was not compacted after imported erasures");
            }
        }
        summary.files.push(file_summary);
    }
    summary.unprinted = printed
        .load(Ordering::Relaxed)
        .saturating_sub(options.max_errors);
    summary.elapsed = started.elapsed();
    Ok(summary)
}

#[derive(Default)]
struct Counters {
    rows: AtomicU64,
    written: AtomicU64,
    already: AtomicU64,
    refused: AtomicU64,
}

async fn import_file(
    shared: Arc<Shared>,
    kind: Kind,
    path: &Path,
    options: &Options,
    printed: Arc<AtomicU64>,
) -> anyhow::Result<FileSummary> {
    let workers = options.workers.max(1);
    let (outcomes_tx, mut outcomes) = mpsc::channel::<(u64, Outcome)>(4096);
    let mut senders = Vec::with_capacity(workers);
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        // Room for a whole group's rows: files are usually sorted by group, and a
        // reader blocked on one full queue would leave the other workers idle.
        let (tx, mut rx) = mpsc::channel::<Job>(WORKER_QUEUE);
        senders.push(tx);
        let (shared, outcomes_tx) = (shared.clone(), outcomes_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut jobs = Vec::with_capacity(LOOKUP_BATCH);
            while rx.recv_many(&mut jobs, LOOKUP_BATCH).await > 0 {
                let mut stored = match stored_answers(&shared, &jobs).await {
                    Ok(stored) => stored,
                    Err(error) => {
                        let line = jobs.first().map_or(0, |job| job.line);
                        let _ = outcomes_tx.send((line, Outcome::Fatal(error))).await;
                        break;
                    }
                };
                for (line, outcome) in run_batch(&shared, jobs.drain(..), stored.as_mut()).await {
                    if outcomes_tx.send((line, outcome)).await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, file, stop) = (path.to_path_buf(), shared.file.clone(), stop.clone());
        let outcomes_tx = outcomes_tx.clone();
        tokio::task::spawn_blocking(move || {
            read_file(kind, &path, &file, senders, outcomes_tx, &stop)
        })
    };
    drop(outcomes_tx);

    let counters = Arc::new(Counters::default());
    let ticker = options.progress.then(|| {
        let (counters, file) = (counters.clone(), shared.file.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                progress_line(&file, &counters, started.elapsed());
            }
        })
    });
    let mut fatal = None;
    while let Some((_line, outcome)) = outcomes.recv().await {
        counters.rows.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Written => {
                counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Already => {
                counters.already.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Refused(refusal) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                if printed.fetch_add(1, Ordering::Relaxed) < options.max_errors {
                    println!("{refusal}");
                }
            }
            Outcome::Fatal(error) => {
                stop.store(true, Ordering::Relaxed);
                fatal.get_or_insert(error);
            }
        }
    }
    let read = reader.await;
    for task in tasks {
        let _ = task.await;
    }
    if let Some(ticker) = ticker {
        ticker.abort();
        progress_line(&shared.file, &counters, Duration::ZERO);
        eprintln!();
    }
    if let Some(error) = fatal {
        anyhow::bail!(
            "{}: the import stopped (run it again to finish): {error}",
            shared.file
        );
    }
    read.map_err(|e| anyhow::anyhow!("reading {}: {e}", shared.file))?
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", shared.file))?;
    Ok(FileSummary {
        file: shared.file.clone(),
        rows: counters.rows.load(Ordering::Relaxed),
        written: counters.written.load(Ordering::Relaxed),
        already: counters.already.load(Ordering::Relaxed),
        refused: counters.refused.load(Ordering::Relaxed),
    })
}

fn progress_line(file: &str, counters: &Counters, elapsed: Duration) {
    use std::io::Write;
    let rows = counters.rows.load(Ordering::Relaxed);
    let rate = if elapsed.is_zero() {
        String::new()
    } else {
        format!(" ({:.0}/s)", rows as f64 / elapsed.as_secs_f64())
    };
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r{file}: {rows} rows{rate}, {} written, {} already imported, {} refused",
        counters.written.load(Ordering::Relaxed),
        counters.already.load(Ordering::Relaxed),
        counters.refused.load(Ordering::Relaxed),
    );
    let _ = err.flush();
}

/// Streams one file's records to the workers (blocking: runs on its own thread).
fn read_file(
    kind: Kind,
    path: &Path,
    file: &str,
    senders: Vec<mpsc::Sender<Job>>,
    outcomes: mpsc::Sender<(u64, Outcome)>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let refuse = |line: u64, column: Option<&str>, reason: String| {
        let refusal = Refusal {
            file: file.to_string(),
            line,
            column: column.map(str::to_string),
            reason,
        };
        outcomes
            .blocking_send((line, Outcome::Refused(refusal)))
            .is_ok()
    };
    let input = LineLimit::new(std::fs::File::open(path)?);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 16, input));
    let mut record = csv::StringRecord::new();
    let header = match reader.read_record(&mut record) {
        Ok(true) => {
            let names: Vec<&str> = record.iter().collect();
            match Header::check(kind, &names) {
                Ok(header) => header,
                Err(error) => {
                    refuse(1, error.column.as_deref(), error.reason);
                    return Ok(());
                }
            }
        }
        Ok(false) => {
            refuse(1, None, "the file is empty: no header row".into());
            return Ok(());
        }
        Err(error) => {
            refuse(1, None, read_error(&error));
            return Ok(());
        }
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let line = reader.position().line() + 1;
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(error) => {
                let line = error.position().map_or(line, |p| p.line());
                // Bad UTF-8 spoils one record; anything else (an over-long line) the file.
                let go_on = matches!(error.kind(), csv::ErrorKind::Utf8 { .. });
                refuse(line, None, read_error(&error));
                if go_on {
                    continue;
                }
                return Ok(());
            }
        }
        let line = record.position().map_or(line, |p| p.line());
        let fields: Vec<&str> = record.iter().collect();
        if fields.len() != header.fields {
            let reason = format!(
                "{} fields where the header has {}",
                fields.len(),
                header.fields
            );
            if !refuse(line, None, reason) {
                return Ok(());
            }
            continue;
        }
        let row = Row {
            kind,
            header: &header,
            fields: &fields,
        };
        let planned = match plan(&row) {
            Ok(planned) => planned,
            Err(error) => {
                if !refuse(line, Some(&error.column), error.reason) {
                    return Ok(());
                }
                continue;
            }
        };
        let mut content = Sha256::new();
        for (column, value) in header.canonical(kind, &fields) {
            content.update(column.as_bytes());
            content.update([0x1f]);
            content.update(value.as_bytes());
            content.update([0x1e]);
        }
        let content = content.finalize();
        let key = format!("import:{}:{}", kind.name(), hex(&content));
        let mut request = Sha256::new();
        request.update(content);
        request.update(line.to_be_bytes());
        let (aggregate_type, aggregate_id) = planned.aggregate();
        let worker = worker_of(aggregate_type, aggregate_id, senders.len());
        let job = Job {
            line,
            key,
            request_hash: request.finalize().to_vec(),
            planned,
        };
        if senders[worker].blocking_send(job).is_err() {
            return Ok(());
        }
    }
}

fn read_error(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::Utf8 { .. } => "not UTF-8 text".into(),
        csv::ErrorKind::Io(io) => format!("cannot read on: {io}"),
        _ => format!("not CSV: {error}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a: the same aggregate always goes to the same worker, in file order.
fn worker_of(aggregate_type: &str, id: &str, workers: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in aggregate_type.bytes().chain([0]).chain(id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % workers as u64) as usize
}

/// Fails the read when a physical line runs past [`MAX_LINE_BYTES`].
struct LineLimit<R> {
    inner: R,
    since_newline: usize,
}

impl<R> LineLimit<R> {
    fn new(inner: R) -> Self {
        LineLimit {
            inner,
            since_newline: 0,
        }
    }
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for byte in &buf[..n] {
            if *byte == b'\n' {
                self.since_newline = 0;
            } else {
                self.since_newline += 1;
                if self.since_newline > MAX_LINE_BYTES {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("a line longer than {MAX_LINE_BYTES} bytes"),
                    ));
                }
            }
        }
        Ok(n)
    }
}

/// What an earlier import stored for a row's key, as far as the worker's batched
/// lookup knows.
enum Earlier {
    Stored(StoredResponse),
    Nothing,
    /// The key came twice in one batch: its first row may have stored it since.
    Unknown,
}

/// The answers stored for a batch of jobs' keys, one query; `None` in a dry run,
/// which looks each row up itself.
async fn stored_answers(
    shared: &Shared,
    jobs: &[Job],
) -> Result<Option<HashMap<String, Option<StoredResponse>>>, String> {
    if shared.dry_run.is_some() {
        return Ok(None);
    }
    let keys: Vec<String> = jobs.iter().map(|job| job.key.clone()).collect();
    let mut stored = shared
        .state
        .store
        .find_responses(&keys)
        .await
        .map_err(|e| crate::errors::ErrorChain(&e).to_string())?;
    Ok(Some(
        keys.into_iter()
            .map(|key| {
                let found = stored.remove(&key);
                (key, found)
            })
            .collect(),
    ))
}

/// Takes the batch's answer for `key`: a second row with the same key in the batch
/// is `Unknown`, as its first row may store the key before it runs.
fn earlier_answer(stored: &mut HashMap<String, Option<StoredResponse>>, key: &str) -> Earlier {
    match stored.get_mut(key) {
        Some(found) => {
            let earlier = match found.take() {
                Some(answer) => Earlier::Stored(answer),
                None => Earlier::Nothing,
            };
            // What the next row with this key will find.
            stored.remove(key);
            earlier
        }
        None => Earlier::Unknown,
    }
}

/// Runs a worker's batch of rows; the outcomes come back in the batch's order. Each
/// group's rows run as one chain (decided in file order, each with its own
/// idempotency record, one wait for the store for all of them: an aggregate's rows
/// would otherwise take one commit each); other rows run one at a time. `stored` is
/// the batch lookup's answers (`None` in a dry run).
async fn run_batch(
    shared: &Shared,
    jobs: impl Iterator<Item = Job>,
    mut stored: Option<&mut HashMap<String, Option<StoredResponse>>>,
) -> Vec<(u64, Outcome)> {
    let mut outcomes: Vec<(u64, Option<Outcome>)> = Vec::new();
    // Each group's links with the batch index of their rows, groups in order of arrival.
    let mut chains: Vec<(String, Vec<(usize, GroupLink)>)> = Vec::new();
    let mut chain_of: HashMap<String, usize> = HashMap::new();
    let mut clients = HashMap::new();
    for job in jobs {
        let index = outcomes.len();
        outcomes.push((job.line, None));
        let earlier = stored
            .as_mut()
            .map(|stored| earlier_answer(stored, &job.key));
        let outcome = if shared.dry_run.is_some() || !matches!(job.planned, Planned::Group { .. }) {
            run_job(shared, job, earlier).await
        } else {
            match group_link(shared, job, earlier, &mut clients).await {
                Ok((group_id, link)) => {
                    let chain = *chain_of.entry(group_id.clone()).or_insert_with(|| {
                        chains.push((group_id, Vec::new()));
                        chains.len() - 1
                    });
                    chains[chain].1.push((index, link));
                    continue;
                }
                Err(outcome) => outcome,
            }
        };
        outcomes[index].1 = Some(outcome);
    }
    for (group_id, links) in chains {
        let (indices, links): (Vec<usize>, Vec<_>) = links.into_iter().unzip();
        let lines = indices.iter().map(|&index| outcomes[index].0).collect();
        for (index, outcome) in indices
            .into_iter()
            .zip(run_group_rows(shared, &group_id, lines, links).await)
        {
            outcomes[index].1 = Some(outcome);
        }
    }
    outcomes
        .into_iter()
        .map(|(line, outcome)| {
            let unanswered = || Outcome::Fatal(format!("line {line} was not run"));
            (line, outcome.unwrap_or_else(unanswered))
        })
        .collect()
}

type GroupLink = Link<GroupCommand>;

/// One group's rows (their lines and links, in file order) as one chain; an outcome
/// per row.
async fn run_group_rows(
    shared: &Shared,
    group_id: &str,
    lines: Vec<u64>,
    links: Vec<GroupLink>,
) -> Vec<Outcome> {
    let state = &shared.state;
    let results = state
        .commands
        .execute_chain(&state.groups, group_id, links, |_| true)
        .await;
    lines
        .into_iter()
        .zip(results)
        .map(|(line, result)| row_outcome(shared, line, receipt_or_refusal(result, "group_id")))
        .collect()
}

/// The command context of an imported row.
fn row_context(shared: &Shared, job: &Job, earlier: &Option<Earlier>) -> CommandContext {
    CommandContext {
        idempotency: Some(IdempotencyRequest {
            key: job.key.clone(),
            request_hash: job.request_hash.clone(),
            found_absent: matches!(earlier, Some(Earlier::Nothing)),
        }),
        ..CommandContext::new(shared.principal.clone())
    }
}

fn refusal_at(shared: &Shared, line: u64, column: Option<String>, reason: String) -> Outcome {
    Outcome::Refused(Refusal {
        file: shared.file.clone(),
        line,
        column,
        reason,
    })
}

/// A row found among an earlier import's answers: the same row again, or another
/// row reusing its key.
fn earlier_outcome(shared: &Shared, job: &Job, stored: &StoredResponse) -> Outcome {
    if stored.request_hash == job.request_hash {
        Outcome::Already
    } else {
        refusal_at(shared, job.line, None, DUPLICATE.into())
    }
}

/// A group row as a link of its group's chain, or its outcome when it need not (or
/// may not) run. `clients` holds this batch's answers about the clients rows bring in.
async fn group_link(
    shared: &Shared,
    job: Job,
    earlier: Option<Earlier>,
    clients: &mut HashMap<String, Option<String>>,
) -> Result<(String, GroupLink), Outcome> {
    if let Some(Earlier::Stored(stored)) = &earlier {
        return Err(earlier_outcome(shared, &job, stored));
    }
    let mut ctx = row_context(shared, &job, &earlier);
    let Planned::Group {
        group_id,
        steps,
        requires_client,
    } = job.planned
    else {
        return Err(Outcome::Fatal(format!(
            "line {}: not a group row",
            job.line
        )));
    };
    if let Some(client_id) = requires_client {
        let refused = match clients.get(&client_id) {
            Some(known) => known.clone(),
            None => {
                let found = live_client(shared, &client_id)
                    .await
                    .map_err(Outcome::Fatal)?;
                clients.insert(client_id, found.clone());
                found
            }
        };
        if let Some(reason) = refused {
            // A row imported before the client's erasure is not refused now.
            return Err(match shared.state.store.find_response(&job.key).await {
                Ok(Some(stored)) if stored.request_hash == job.request_hash => Outcome::Already,
                Ok(_) => refusal_at(shared, job.line, Some("client_id".into()), reason),
                Err(error) => Outcome::Fatal(crate::errors::ErrorChain(&error).to_string()),
            });
        }
    }
    let named: Vec<String> = steps
        .iter()
        .flat_map(|s| s.command.clients_named())
        .map(String::from)
        .collect();
    if !named.is_empty() {
        ctx.key_action = Some(KeyAction::RequireLive { client_ids: named });
    }
    Ok((group_id, Link { steps, ctx }))
}

/// Runs one row on its own: a client's row, or any row in a dry run (`run_batch`
/// chains a group's rows); `earlier` is the batch lookup's answer for its key (`None`
/// in a dry run).
async fn run_job(shared: &Shared, job: Job, earlier: Option<Earlier>) -> Outcome {
    let state = &shared.state;
    if let Some(dry) = &shared.dry_run {
        match dry_check(shared, dry, &job).await {
            Ok(outcome) => return outcome,
            Err(error) => return Outcome::Fatal(error),
        }
    }
    if let Some(Earlier::Stored(stored)) = &earlier {
        return earlier_outcome(shared, &job, stored);
    }
    let mut ctx = row_context(shared, &job, &earlier);
    let line = job.line;
    let receipt = match job.planned {
        Planned::Group { .. } => {
            let mut clients = HashMap::new();
            return match group_link(shared, job, earlier, &mut clients).await {
                Ok((group_id, link)) => run_group_rows(shared, &group_id, vec![line], vec![link])
                    .await
                    .pop()
                    .unwrap_or_else(|| Outcome::Fatal(format!("line {line} was not run"))),
                Err(outcome) => outcome,
            };
        }
        Planned::Register {
            client_id,
            personal,
            at,
        } => {
            let key = state.vault.new_client_key(&client_id);
            let sealed =
                (!personal.is_empty()).then(|| state.vault.seal(&key, &client_id, &personal));
            ctx.key_action = Some(KeyAction::Store {
                client_id: client_id.clone(),
                wrapped_key: key.wrapped.clone(),
            });
            let step = Step {
                command: ClientCommand::RegisterClient {
                    client_id: client_id.clone(),
                    personal: sealed,
                },
                occurred_at: at,
            };
            let result = state
                .commands
                .execute_steps(&state.clients, &client_id, vec![step], &ctx, |_| true)
                .await;
            receipt_or_refusal(result, "client_id")
        }
        Planned::Client { client_id, steps } => {
            // An erasure destroys the client's key in its own transaction, as the API's.
            if steps
                .iter()
                .any(|s| matches!(s.command, ClientCommand::EraseClient { .. }))
            {
                ctx.key_action = Some(KeyAction::Destroy {
                    client_id: client_id.clone(),
                });
            }
            let result = state
                .commands
                .execute_steps(&state.clients, &client_id, steps, &ctx, |_| true)
                .await;
            receipt_or_refusal(result, "client_id")
        }
    };
    row_outcome(shared, line, receipt)
}

fn row_outcome(shared: &Shared, line: u64, row: RowResult) -> Outcome {
    match row {
        Ok(position) if position <= shared.head_at_start => Outcome::Already,
        Ok(_) => Outcome::Written,
        Err(Ok((column, reason))) => refusal_at(shared, line, column, reason),
        Err(Err(fatal)) => Outcome::Fatal(fatal),
    }
}

/// The position the row's last event took, a refusal (column, reason), or a store
/// failure that ends the import.
type RowResult = Result<i64, Result<(Option<String>, String), String>>;

fn receipt_or_refusal<E: Rejection>(
    result: Result<crate::commands::Receipt, CommandError<E>>,
    id_column: &str,
) -> RowResult {
    match result {
        Ok(receipt) => Ok(receipt.body["position"].as_i64().unwrap_or(i64::MAX)),
        Err(CommandError::Rejected(error)) => {
            Err(Ok((column_of(&error, id_column), error.to_string())))
        }
        Err(CommandError::IdempotencyKeyReused) => Err(Ok((None, DUPLICATE.into()))),
        Err(CommandError::ClientErased { client_id }) => Err(Ok((
            Some("client_id".into()),
            format!("client {client_id}'s data has been erased"),
        ))),
        Err(CommandError::Contended) => Err(Ok((
            None,
            "too many concurrent changes to this record; run the import again".into(),
        ))),
        Err(
            error @ (CommandError::Forbidden
            | CommandError::VersionMismatch { .. }
            | CommandError::TokenNotLive),
        ) => Err(Ok((None, error.to_string()))),
        Err(error @ (CommandError::Store(_) | CommandError::Load(_))) => {
            Err(Err(crate::errors::ErrorChain(&error).to_string()))
        }
    }
}

const DUPLICATE: &str =
    "duplicate row: the same row was already imported from another line (of this file or an earlier import)";

/// The column a domain refusal is about: the field it names, else the row's id.
fn column_of<E: Rejection>(error: &E, id_column: &str) -> Option<String> {
    match error.kind() {
        RejectionKind::Invalid { field } => Some(field),
        RejectionKind::Rule { field } => field,
        RejectionKind::NotFound | RejectionKind::Conflict => Some(id_column.to_string()),
    }
}

/// `None` when the client is registered and not erased, else why not.
async fn live_client(shared: &Shared, client_id: &str) -> Result<Option<String>, String> {
    if let Some(dry) = &shared.dry_run {
        if let Some(client) = lock(&dry.clients).get(client_id) {
            return Ok(client_refusal(client_id, client));
        }
    }
    let client = shared
        .state
        .clients
        .load(client_id)
        .await
        .map_err(|e| crate::errors::ErrorChain(&e).to_string())?
        .aggregate;
    Ok(client_refusal(client_id, &client))
}

fn client_refusal(client_id: &str, client: &Client) -> Option<String> {
    if !client.exists() {
        Some(format!("no client is registered with id {client_id:?}"))
    } else if client.erased.is_some() {
        Some(format!("client {client_id}'s data has been erased"))
    } else {
        None
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A dry run: the same checks, decided on state that is never appended.
async fn dry_check(shared: &Shared, dry: &DryRun, job: &Job) -> Result<Outcome, String> {
    let refusal = |column: Option<String>, reason: String| {
        Outcome::Refused(Refusal {
            file: shared.file.clone(),
            line: job.line,
            column,
            reason,
        })
    };
    let store_error = |e: &dyn std::error::Error| crate::errors::ErrorChain(e).to_string();
    if let Some(stored) = shared
        .state
        .store
        .find_response(&job.key)
        .await
        .map_err(|e| store_error(&e))?
    {
        return Ok(if stored.request_hash == job.request_hash {
            Outcome::Already
        } else {
            refusal(None, DUPLICATE.into())
        });
    }
    if lock(&dry.keys).insert(job.key.clone(), job.line).is_some() {
        return Ok(refusal(None, DUPLICATE.into()));
    }
    let decided = match &job.planned {
        Planned::Group {
            group_id,
            steps,
            requires_client,
        } => {
            if let Some(client_id) = requires_client {
                if let Some(reason) = live_client(shared, client_id).await? {
                    return Ok(refusal(Some("client_id".into()), reason));
                }
            }
            decide_on(
                &shared.state.groups,
                &dry.groups,
                group_id,
                steps,
                "group_id",
            )
            .await
            .map_err(|e| store_error(&e))?
        }
        Planned::Register { client_id, .. } => {
            let step = Step {
                command: ClientCommand::RegisterClient {
                    client_id: client_id.clone(),
                    personal: None,
                },
                occurred_at: None,
            };
            decide_on(
                &shared.state.clients,
                &dry.clients,
                client_id,
                &[step],
                "client_id",
            )
            .await
            .map_err(|e| store_error(&e))?
        }
        Planned::Client { client_id, steps } => decide_on(
            &shared.state.clients,
            &dry.clients,
            client_id,
            steps,
            "client_id",
        )
        .await
        .map_err(|e| store_error(&e))?,
    };
    Ok(match decided {
        Ok(()) => Outcome::Written,
        Err((column, reason)) => refusal(column, reason),
    })
}

async fn decide_on<A>(
    repository: &Repository<A>,
    overlay: &Mutex<HashMap<String, A>>,
    id: &str,
    steps: &[Step<A::Command>],
    id_column: &str,
) -> Result<Result<(), (Option<String>, String)>, crate::commands::LoadError>
where
    A: Aggregate<Services = (), Error: Rejection> + Clone,
    A::Command: Clone,
{
    let known = lock(overlay).get(id).cloned();
    let mut next = match known {
        Some(state) => state,
        None => repository.load(id).await?.aggregate,
    };
    for step in steps {
        let sink = EventSink::default();
        if let Err(error) = next.handle(step.command.clone(), &(), &sink).await {
            return Ok(Err((column_of(&error, id_column), error.to_string())));
        }
    }
    lock(overlay).insert(id.to_string(), next);
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn one_aggregate_always_goes_to_one_worker() {
        let a = worker_of("group", "grp-1", 64);
        assert_eq!(a, worker_of("group", "grp-1", 64));
        assert!(a < 64);
        let spread: HashSet<usize> = (0..200)
            .map(|i| worker_of("group", &format!("grp-{i}"), 64))
            .collect();
        assert!(spread.len() > 40, "{}", spread.len());
    }

    #[test]
    fn a_line_without_end_stops_the_read() {
        let long = vec![b'a'; MAX_LINE_BYTES + 10];
        let mut limited = LineLimit::new(&long[..]);
        let mut sink = Vec::new();
        assert!(limited.read_to_end(&mut sink).is_err());
        let mut lines = b"a,b\n".repeat(MAX_LINE_BYTES);
        lines.truncate(MAX_LINE_BYTES * 2);
        let mut limited = LineLimit::new(&lines[..]);
        assert!(limited.read_to_end(&mut Vec::new()).is_ok());
    }
}
