//! Audit: the hash chain, the Merkle tree, signed checkpoints and proofs, on both
//! backends; tampering by a database superuser, on PostgreSQL.

use std::time::Duration;

use circle_services::audit::chain::to_hex;
use circle_services::audit::merkle::{self, leaf_hash};
use circle_services::audit::note::{Checkpoint, Signer, Verifier};
use circle_services::audit::tree::{self, TreeError};
use circle_services::store::{
    Append, AuditFilter, EventMetadata, Fence, NewEvent, Store, TreeHead,
};
use serde_json::json;

fn append(id: &str, expected_version: u64, events: u64) -> Append {
    Append {
        aggregate_type: "group",
        aggregate_id: id.into(),
        expected_version,
        events: (0..events)
            .map(|n| NewEvent {
                event_type: "SessionCancelled".into(),
                event_version: 1,
                payload: json!({"session_id": format!("s{n}"), "reason": "snow"}),
                metadata: EventMetadata::system("dr_a", "clinician"),
            })
            .collect(),
        idempotency: None,
        key_action: None,
    }
}

/// Appends `count` events in batches of a few streams each.
async fn fill(store: &Store, count: u64) {
    let head = store.head_position().await.unwrap() as u64;
    let mut written = 0;
    while written < count {
        let n = (count - written).min(7);
        let id = format!("g{}", head + written);
        store.commit_batch(&[append(&id, 0, n)]).await.unwrap();
        written += n;
    }
}

async fn lead(store: &Store) -> Fence {
    let holder = uuid::Uuid::new_v4();
    let epoch = store
        .acquire_lease("leader", holder, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the lease is free");
    Fence {
        lease: "leader".into(),
        holder,
        epoch,
    }
}

fn signer() -> Signer {
    Signer::parse(&Signer::generate("circle.test/log").unwrap()).unwrap()
}

async fn checkpoints_are_signed_once_per_size_and_proofs_verify(store: Store) {
    let signer = signer();
    let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
    let fence = lead(&store).await;
    fill(&store, 100).await;
    let first = tree::checkpoint(&store, &signer, &fence)
        .await
        .unwrap()
        .unwrap();
    let opened = Checkpoint::open(&first.note, &verifier).unwrap();
    assert_eq!((opened.size, opened.root), (100, first.root));
    let verdict = tree::verify_store(&store, |_, _| {}).await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(verdict.root, to_hex(&first.root));
    // Nothing new: nothing signed.
    assert_eq!(
        tree::checkpoint(&store, &signer, &fence).await.unwrap(),
        None
    );

    fill(&store, 37).await;
    let second = tree::checkpoint(&store, &signer, &fence)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.size, 137);
    let proof = tree::consistency_proof(&store, 100, 137).await.unwrap();
    assert!(merkle::verify_consistency(
        100,
        137,
        &first.root,
        &second.root,
        &proof
    ));
    let events = store
        .read_audit(0, 200, &AuditFilter::default())
        .await
        .unwrap();
    for position in [1u64, 16, 17, 64, 100, 137] {
        for (size, root) in [(100, first.root), (137, second.root)] {
            if position > size {
                continue;
            }
            let proof = tree::inclusion_proof(&store, position - 1, size)
                .await
                .unwrap();
            let leaf = leaf_hash(&events[position as usize - 1].hash);
            assert!(
                merkle::verify_inclusion(position - 1, size, &leaf, &proof, &root),
                "{position} in {size}"
            );
        }
    }
    // The proofs also hold for sizes nobody checkpointed, from the same nodes.
    let root_120 = tree::root(&store, 120).await.unwrap();
    let proof = tree::consistency_proof(&store, 120, 137).await.unwrap();
    assert!(merkle::verify_consistency(
        120,
        137,
        &root_120,
        &second.root,
        &proof
    ));

    // A second root for a size already signed is never stored, nor signed.
    let forged = TreeHead {
        size: 100,
        root: [9; 32],
        note: signer.sign(&format!(
            "circle.test/log\n100\n{}\n",
            "CQ".repeat(21) + "k="
        )),
    };
    let kept = store
        .save_tree_head(&forged, &fence)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept, first);
    assert_eq!(store.tree_heads().await.unwrap().len(), 2);
}

/// A checkpoint signed over a log that no longer has its root (here: a forged one at
/// the head) stops the leader: it signs nothing on top of it.
async fn the_leader_refuses_to_extend_a_tree_whose_signed_root_it_cannot_reproduce(store: Store) {
    let signer = signer();
    let fence = lead(&store).await;
    fill(&store, 20).await;
    let forged = TreeHead {
        size: 20,
        root: [9; 32],
        note: "forged".into(),
    };
    store.save_tree_head(&forged, &fence).await.unwrap();
    fill(&store, 5).await;
    let refused = tree::checkpoint(&store, &signer, &fence).await;
    assert!(
        matches!(refused, Err(TreeError::Tampered(_))),
        "{refused:?}"
    );
    assert_eq!(store.tree_heads().await.unwrap().len(), 1);
    let verdict = tree::verify_store(&store, |_, _| {}).await.unwrap();
    assert_eq!(
        (verdict.ok, verdict.first_bad_position),
        (false, Some(20)),
        "{verdict:?}"
    );
}

/// Only the current lease holder stores checkpoints.
async fn a_deposed_leader_stores_no_checkpoint(store: Store) {
    let signer = signer();
    let fence = lead(&store).await;
    fill(&store, 3).await;
    let stale = Fence {
        epoch: fence.epoch - 1,
        ..fence
    };
    assert_eq!(
        tree::checkpoint(&store, &signer, &stale).await.unwrap(),
        None
    );
    assert!(store.tree_heads().await.unwrap().is_empty());
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(circle_tests::postgres_store().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(circle_tests::sqlite_store().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    checkpoints_are_signed_once_per_size_and_proofs_verify,
    the_leader_refuses_to_extend_a_tree_whose_signed_root_it_cannot_reproduce,
    a_deposed_leader_stores_no_checkpoint,
);
