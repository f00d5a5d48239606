-- Events are never changed or removed (the chain back-fill ran just before this, see
-- sqlite.rs). `hash` chains every event to the one before (ARCHITECTURE.md, "The
-- audit chain"); `payload` already holds the exact text that was hashed.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
