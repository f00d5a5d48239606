//! Circle's store behind cqrs-es's own `EventStore` trait, so a stock
//! `CqrsFramework` can run on it unchanged (used by tests to prove compatibility).
//!
//! No snapshots and no second apply: `load_aggregate` replays the stream once, cqrs-es
//! applies new events in `handle`, and `commit` only writes them.

use std::collections::HashMap;
use std::marker::PhantomData;

use chrono::Utc;
use circle_events::upcast;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventEnvelope, EventStore};
use uuid::Uuid;

use super::{Append, AppendResult, EventMetadata, NewEvent, Store};

pub struct CqrsStore<A> {
    store: Store,
    aggregate: PhantomData<fn() -> A>,
}

impl<A> CqrsStore<A> {
    pub fn new(store: Store) -> Self {
        CqrsStore {
            store,
            aggregate: PhantomData,
        }
    }
}

pub struct CircleContext<A> {
    pub aggregate_id: String,
    pub aggregate: A,
    pub version: u64,
}

impl<A: Aggregate> AggregateContext<A> for CircleContext<A> {
    fn aggregate(&mut self) -> &mut A {
        &mut self.aggregate
    }
}

fn boxed<E: std::error::Error>(
    e: impl std::error::Error + Send + Sync + 'static,
) -> AggregateError<E> {
    AggregateError::DatabaseConnectionError(Box::new(e))
}

impl<A: Aggregate> CqrsStore<A> {
    async fn envelopes(&self, id: &str) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let recorded = self
            .store
            .load_stream(A::TYPE, id, 0)
            .await
            .map_err(boxed)?;
        recorded
            .into_iter()
            .map(|r| {
                let payload = upcast::decode::<A::Event>(&r.event_type, r.event_version, r.payload)
                    .map_err(|e| AggregateError::DeserializationError(Box::new(e)))?;
                let metadata = HashMap::from([
                    ("event_id".to_string(), r.event_id.to_string()),
                    ("actor_id".to_string(), r.actor_id),
                    ("position".to_string(), r.position.to_string()),
                ]);
                Ok(EventEnvelope {
                    aggregate_id: r.aggregate_id,
                    sequence: r.sequence as usize,
                    payload,
                    metadata,
                })
            })
            .collect()
    }
}

impl<A: Aggregate> EventStore<A> for CqrsStore<A> {
    type AC = CircleContext<A>;

    async fn load_events(
        &self,
        id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        self.envelopes(id).await
    }

    async fn load_aggregate(&self, id: &str) -> Result<CircleContext<A>, AggregateError<A::Error>> {
        let mut aggregate = A::default();
        let mut version = 0;
        for envelope in self.envelopes(id).await? {
            version = envelope.sequence as u64;
            aggregate.apply(envelope.payload);
        }
        Ok(CircleContext {
            aggregate_id: id.to_string(),
            aggregate,
            version,
        })
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: CircleContext<A>,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let correlation_id = metadata
            .get("correlation_id")
            .and_then(|c| Uuid::parse_str(c).ok())
            .unwrap_or_else(Uuid::new_v4);
        let new_events = events
            .iter()
            .map(|event| {
                let metadata = EventMetadata {
                    event_id: Uuid::new_v4(),
                    occurred_at: Utc::now(),
                    actor_id: metadata
                        .get("actor_id")
                        .cloned()
                        .unwrap_or_else(|| "cqrs-es".into()),
                    actor_role: metadata
                        .get("actor_role")
                        .cloned()
                        .unwrap_or_else(|| "system".into()),
                    correlation_id,
                    causation_id: None,
                };
                NewEvent::encode(event, metadata)
            })
            .collect();
        let append = Append {
            aggregate_type: A::TYPE,
            aggregate_id: context.aggregate_id.clone(),
            expected_version: context.version,
            events: new_events,
            idempotency: None,
            key_action: None,
            chained: false,
            token_hash: None,
        };
        let results = self.store.commit_batch(&[append]).await.map_err(boxed)?;
        match results.first() {
            Some(AppendResult::Committed { .. }) => Ok(events
                .into_iter()
                .enumerate()
                .map(|(i, payload)| EventEnvelope {
                    aggregate_id: context.aggregate_id.clone(),
                    sequence: context.version as usize + i + 1,
                    payload,
                    metadata: metadata.clone(),
                })
                .collect()),
            _ => Err(AggregateError::AggregateConflict),
        }
    }
}
