//! The Client aggregate: a pseudonymous person in care. Personal fields arrive sealed
//! (encrypted by `services` with the client's own key), so the log never holds them in
//! plain text and erasure only has to destroy that key.

mod commands;
mod errors;
mod events;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

pub use commands::*;
pub use errors::ClientError;
pub use events::*;

use crate::calendar;
use crate::group::Measure;
use crate::ids::{is_valid_id, INVALID_ID};
use crate::instruments::Catalogue;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Client {
    pub client_id: Option<String>,
    pub personal: Option<SealedPersonalData>,
    /// The scopes given now: reporting from registration until withdrawn (see
    /// [`ConsentScope::given_until_decided`]), the others once granted.
    pub consents: BTreeSet<ConsentScope>,
    pub erased: Option<ErasureReason>,
    pub measures_recorded: u32,
    pub sequence: u64,
}

impl Client {
    pub fn exists(&self) -> bool {
        self.client_id.is_some()
    }

    fn require_active(&self) -> Result<(), ClientError> {
        if !self.exists() {
            return Err(ClientError::NotFound);
        }
        if self.erased.is_some() {
            return Err(ClientError::Erased);
        }
        Ok(())
    }

    pub fn decide(&self, command: ClientCommand) -> Result<Vec<ClientEvent>, ClientError> {
        match command {
            ClientCommand::RegisterClient {
                client_id,
                personal,
            } => {
                if self.exists() {
                    return Err(ClientError::AlreadyExists);
                }
                if !is_valid_id(&client_id) {
                    return Err(ClientError::invalid("client_id", INVALID_ID));
                }
                Ok(vec![ClientEvent::ClientRegistered {
                    client_id,
                    personal,
                }])
            }
            ClientCommand::GrantConsent { scope } => {
                self.require_active()?;
                if self.consents.contains(&scope) {
                    return Err(ClientError::ConsentAlreadyGranted(scope));
                }
                Ok(vec![ClientEvent::ConsentGranted { scope }])
            }
            ClientCommand::WithdrawConsent { scope } => {
                self.require_active()?;
                if !self.consents.contains(&scope) {
                    return Err(ClientError::ConsentNotGranted(scope));
                }
                Ok(vec![ClientEvent::ConsentWithdrawn { scope }])
            }
            ClientCommand::EraseClient { reason } => {
                self.require_active()?;
                Ok(vec![ClientEvent::ClientErased { reason }])
            }
            ClientCommand::RecordMeasure {
                instrument,
                items,
                administered_at,
            } => {
                self.require_active()?;
                let definition = Catalogue::builtin()
                    .current(&instrument)
                    .ok_or_else(|| ClientError::UnknownInstrument(instrument.clone()))?;
                definition
                    .check_items(&items)
                    .map_err(ClientError::InvalidItems)?;
                calendar::check_time(&administered_at)
                    .map_err(|reason| ClientError::invalid("administered_at", reason))?;
                let total = definition.total(&items);
                Ok(vec![ClientEvent::MeasureRecorded {
                    measure: Measure {
                        instrument,
                        reference_version: definition.version.clone(),
                        items,
                        total,
                        administered_at,
                    },
                }])
            }
        }
    }
}

impl Aggregate for Client {
    const TYPE: &'static str = "client";
    type Command = ClientCommand;
    type Event = ClientEvent;
    type Error = ClientError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ClientCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ClientError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: ClientEvent) {
        self.sequence += 1;
        match event {
            ClientEvent::ClientRegistered {
                client_id,
                personal,
            } => {
                self.client_id = Some(client_id);
                self.personal = personal;
                self.consents = ConsentScope::ALL
                    .into_iter()
                    .filter(|scope| scope.given_until_decided())
                    .collect();
            }
            ClientEvent::ConsentGranted { scope } => {
                self.consents.insert(scope);
            }
            ClientEvent::ConsentWithdrawn { scope } => {
                self.consents.remove(&scope);
            }
            ClientEvent::ClientErased { reason } => {
                self.erased = Some(reason);
                self.consents.clear();
            }
            ClientEvent::MeasureRecorded { .. } => self.measures_recorded += 1,
        }
    }
}
