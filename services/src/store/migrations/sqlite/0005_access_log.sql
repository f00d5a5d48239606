-- The access log; same shape and rules as PostgreSQL's 0006_access_log.sql.
CREATE TABLE access_log (
    seq        INTEGER PRIMARY KEY,
    recorded   TEXT    NOT NULL,
    agent_who  TEXT    NOT NULL,
    entry      TEXT    NOT NULL,
    prev_hash  BLOB    NOT NULL,
    hash       BLOB    NOT NULL
);
CREATE INDEX access_log_agent ON access_log (agent_who, seq);
CREATE INDEX access_log_recorded ON access_log (recorded);

CREATE TABLE access_log_clients (
    client_id TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (client_id, seq)
);

CREATE TABLE access_log_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB    NOT NULL
);
INSERT INTO access_log_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

CREATE TRIGGER access_log_no_update BEFORE UPDATE ON access_log
BEGIN SELECT RAISE(ABORT, 'the access log is append-only'); END;
CREATE TRIGGER access_log_no_delete BEFORE DELETE ON access_log
BEGIN SELECT RAISE(ABORT, 'the access log is append-only'); END;
CREATE TRIGGER access_log_clients_no_update BEFORE UPDATE ON access_log_clients
BEGIN SELECT RAISE(ABORT, 'the access log is append-only'); END;
CREATE TRIGGER access_log_clients_no_delete BEFORE DELETE ON access_log_clients
BEGIN SELECT RAISE(ABORT, 'the access log is append-only'); END;
