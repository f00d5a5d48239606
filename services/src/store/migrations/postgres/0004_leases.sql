-- Leases: which instance does the work only one may do (the persisted projection
-- checkpoints, the NATS publisher). `epoch` grows each time the lease changes hands;
-- writes made under a lease carry it and are refused once it has moved on (fencing).
CREATE TABLE leases (
    name       text        PRIMARY KEY,
    holder     uuid        NOT NULL,
    epoch      bigint      NOT NULL,
    expires_at timestamptz NOT NULL
);
