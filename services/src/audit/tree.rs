//! The Merkle tree kept in the store, and the leader's checkpoints of it.
//!
//! The leader extends the tree from its latest checkpoint to the head of the log:
//! it re-checks the chain of every new event (so rows changed since their append are
//! never signed), stores each completed perfect subtree of 16 leaves and up, signs
//! a checkpoint of the new size and stores it. A tree size is signed at most once:
//! the table refuses a second row, and a size already signed with another root is an
//! alarm, never a new signature. Proofs read the stored subtrees through
//! [`merkle::NodeMap`], in two or three small queries at any size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::chain::{Hash, GENESIS};
use super::merkle::{self, CompactRange, NodeMap, STORED_FROM_LEVEL};
use super::note::{Checkpoint, Signer};
use super::verify::{BadPosition, LogCheck};
use crate::errors::ErrorChain;
use crate::leader::Leadership;
use crate::store::{AuditFilter, Fence, NodeKey, Store, StoreError, TreeHead};

/// Events read per page while extending or verifying.
const PAGE: i64 = 10_000;
/// Events per page while verifying: one binary COPY each.
pub const VERIFY_PAGE: i64 = 25_000;
/// Pages read and hashed ahead while verifying.
const READ_AHEAD: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the log does not match what was signed: {0}")]
    Tampered(String),
    #[error("the log fails its chain check at {0}")]
    Chain(#[from] BadPosition),
}

/// Runs `compute` over the stored tree until it has every subtree it reads.
pub async fn resolve<T>(
    store: &Store,
    mut compute: impl FnMut(&mut NodeMap) -> T,
) -> Result<T, StoreError> {
    let mut map = NodeMap::default();
    loop {
        let out = compute(&mut map);
        let (nodes, leaves) = map.wanted();
        if nodes.is_empty() && leaves.is_empty() {
            return Ok(out);
        }
        if !nodes.is_empty() {
            let found = store.merkle_nodes(&nodes).await?;
            for (key, hash) in &found {
                map.nodes.insert(*key, *hash);
            }
            for key in nodes {
                if !map.nodes.contains_key(&key) {
                    map.absent.insert(key);
                }
            }
        }
        if !leaves.is_empty() {
            let positions: Vec<i64> = leaves.iter().map(|i| *i as i64 + 1).collect();
            let found = store.chain_hashes(&positions).await?;
            if found.len() != positions.len() {
                return Err(StoreError::Corrupt(
                    "the log is shorter than the tree asked of it".into(),
                ));
            }
            for (position, hash) in found {
                map.leaves.insert(position as u64 - 1, hash);
            }
        }
    }
}

pub async fn root(store: &Store, size: u64) -> Result<Hash, StoreError> {
    resolve(store, |map| merkle::root(map, size)).await
}

pub async fn inclusion_proof(
    store: &Store,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, StoreError> {
    resolve(store, |map| merkle::inclusion_proof(map, index, size)).await
}

pub async fn consistency_proof(store: &Store, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
    resolve(store, |map| merkle::consistency_proof(map, old, new)).await
}

/// Extends the stored tree from the checkpoint `from` (none: the empty tree) over
/// every event up to `to`, checking their chain; returns the root at `to`.
pub async fn extend(store: &Store, from: Option<&TreeHead>, to: i64) -> Result<Hash, TreeError> {
    let start = from.map_or(0, |h| h.size);
    let mut range = resolve(store, |map| CompactRange::at(start as u64, map)).await?;
    if let Some(head) = from {
        if range.root() != head.root {
            return Err(TreeError::Tampered(format!(
                "the tree of the first {start} events no longer has the signed root"
            )));
        }
    }
    let mut previous = match start {
        0 => GENESIS,
        n => store
            .chain_hashes(&[n])
            .await?
            .first()
            .map(|(_, h)| *h)
            .ok_or_else(|| TreeError::Tampered(format!("position {n} is missing")))?,
    };
    let mut after = start;
    while after < to {
        let page = store
            .read_audit(after, PAGE.min(to - after), &AuditFilter::default())
            .await?;
        if page.is_empty() {
            return Err(TreeError::Tampered(format!(
                "position {} is missing",
                after + 1
            )));
        }
        let mut nodes: Vec<(NodeKey, Hash)> = Vec::new();
        for event in &page {
            after += 1;
            if event.position != after {
                return Err(BadPosition::new(after, "missing").into());
            }
            if event.expected_hash(&previous) != event.hash {
                return Err(BadPosition::new(
                    after,
                    "the hash does not match the event's contents and the hash before it",
                )
                .into());
            }
            previous = event.hash;
            range.push(&event.hash, |level, index, hash| {
                if level >= STORED_FROM_LEVEL {
                    nodes.push(((level, index), *hash));
                }
            });
        }
        store.save_merkle_nodes(&nodes).await?;
    }
    Ok(range.root())
}

/// Checkpoints the head of the log now, if it grew: extends the tree, signs, stores.
/// Returns the checkpoint stored for the head (which may be an earlier signature of
/// the same root), or `None` when fenced out or there is nothing new.
pub async fn checkpoint(
    store: &Store,
    signer: &Signer,
    fence: &Fence,
) -> Result<Option<TreeHead>, TreeError> {
    let latest = store.tree_head(None).await?;
    let head = store.head_position().await?;
    if latest.as_ref().is_some_and(|l| l.size >= head) {
        return Ok(None);
    }
    let root = extend(store, latest.as_ref(), head).await?;
    let note = signer.sign(
        &Checkpoint {
            origin: signer.name().to_string(),
            size: head as u64,
            root,
        }
        .text(),
    );
    let proposed = TreeHead {
        size: head,
        root,
        note,
    };
    match store.save_tree_head(&proposed, fence).await? {
        Some(stored) if stored.root != root => Err(TreeError::Tampered(format!(
            "size {head} was signed with another root; not signing it again"
        ))),
        stored => Ok(stored),
    }
}

/// How often the leader checkpoints.
#[derive(Clone, Debug)]
pub struct CheckpointPolicy {
    pub every_events: i64,
    pub every: Duration,
}

/// The leader's checkpoint task: every `every_events` new events or `every`,
/// whichever comes first; followers wait. `published` sees each new checkpoint.
pub struct Checkpointer {
    pub store: Store,
    pub signer: Arc<Signer>,
    pub policy: CheckpointPolicy,
}

impl Checkpointer {
    pub async fn run(
        &self,
        leadership: Leadership,
        published: tokio::sync::watch::Sender<Option<TreeHead>>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let poll = self.policy.every.min(Duration::from_millis(500));
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(poll) => {}
            }
            let Some(fence) = leadership.fence() else {
                continue;
            };
            let signed = self.store.tree_head(None).await?.map_or(0, |h| h.size);
            let head = self.store.head_position().await?;
            let due = head - signed >= self.policy.every_events
                || (head > signed && last.elapsed() >= self.policy.every);
            if !due {
                continue;
            }
            match checkpoint(&self.store, &self.signer, &fence).await {
                Ok(Some(head)) => {
                    tracing::info!(tree_size = head.size, "signed a checkpoint");
                    published.send_replace(Some(head));
                }
                Ok(None) => {}
                Err(TreeError::Store(error)) => return Err(error.into()),
                // Never sign over a log that fails its checks; say so every time.
                Err(error) => tracing::error!(error = %ErrorChain(&error), "not checkpointing"),
            }
            last = Instant::now();
        }
    }
}

/// The outcome of checking a whole store: `GET /api/v1/audit/verify`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Verdict {
    pub ok: bool,
    /// Events that passed, from position 1.
    pub checked: u64,
    /// RFC 6962 root of the events that passed, hex.
    pub root: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_position: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Checks the whole log in the store: the chain from position 1, and the root at
/// every stored checkpoint (and that the log still reaches it). `progress` sees
/// (checked, head) after every page.
pub async fn verify_store(
    store: &Store,
    mut progress: impl FnMut(u64, i64),
) -> Result<Verdict, StoreError> {
    let heads = store.tree_heads().await?;
    let head = store.head_position().await?;
    let mut pending = heads.iter().peekable();
    let mut check = LogCheck::default();
    let verdict = |check: &LogCheck, bad: Option<BadPosition>| Verdict {
        ok: bad.is_none(),
        checked: check.checked(),
        root: super::chain::to_hex(&check.root()),
        first_bad_position: bad.as_ref().map(|b| b.position),
        reason: bad.map(|b| b.reason),
    };
    let mut compare = |check: &LogCheck| -> Option<BadPosition> {
        while let Some(signed) = pending.next_if(|h| h.size as u64 <= check.checked()) {
            if signed.size as u64 == check.checked() && signed.root != check.root() {
                return Some(BadPosition::new(
                    signed.size,
                    format!(
                        "the first {} events do not have the root signed in the checkpoint of that size",
                        signed.size
                    ),
                ));
            }
        }
        None
    };
    if let Some(bad) = compare(&check) {
        return Ok(verdict(&check, Some(bad)));
    }
    // Pages up to the head are read ahead (PostgreSQL: binary COPY, straight into
    // canonical tails) on other connections and hashed on blocking threads, while
    // this task checks them in order. Each page also reads the event before it, so
    // its hashes are computed from the stored hash they must follow, and keeps only
    // its own range, so a missing row still shows as missing.
    let pages = (0..head.max(0)).step_by(VERIFY_PAGE as usize).map(|start| {
        let store = store.clone();
        tokio::spawn(async move {
            let rows = store
                .chain_rows((start - 1).max(0), VERIFY_PAGE + 1)
                .await?;
            let hashed = tokio::task::spawn_blocking(move || {
                let before = start > 0 && rows.first_position() == Some(start);
                let (previous, mut rows) = if before {
                    rows.split_first()
                        .map(|((_, hash), rest)| (hash, rest))
                        .unwrap_or_default()
                } else {
                    (GENESIS, rows)
                };
                rows.keep_to(start + VERIFY_PAGE);
                let hashed = rows.expected_hashes(previous);
                (rows, hashed)
            });
            hashed
                .await
                .map_err(|e| StoreError::Corrupt(format!("hashing a verify page: {e}")))
        })
    });
    let mut pages = futures_util::stream::iter(pages).buffered(READ_AHEAD);
    while let Some(page) = pages.next().await {
        let (rows, hashed) =
            page.map_err(|e| StoreError::Corrupt(format!("a verify page: {e}")))??;
        for ((position, stored, tail), hashed) in rows.iter().zip(hashed) {
            if let Err(bad) = check.push_row(position, stored, tail, Some(hashed)) {
                return Ok(verdict(&check, Some(bad)));
            }
            if let Some(bad) = compare(&check) {
                return Ok(verdict(&check, Some(bad)));
            }
        }
        progress(check.checked(), head);
    }
    // Then anything past the head, one page at a time (normally nothing).
    let mut after = check.checked() as i64;
    loop {
        let page = store
            .read_audit(after, PAGE, &AuditFilter::default())
            .await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in &page {
            if let Err(bad) = check.push(event) {
                return Ok(verdict(&check, Some(bad)));
            }
            if let Some(bad) = compare(&check) {
                return Ok(verdict(&check, Some(bad)));
            }
        }
    }
    let signed = heads.last().map_or(0, |h| h.size as u64);
    let bad = check.ends_at_or_after(signed.max(head as u64)).err();
    Ok(verdict(&check, bad))
}
