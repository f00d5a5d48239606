-- Nothing in the log is changed or removed: any UPDATE, DELETE or TRUNCATE of events
-- is refused, whoever runs it. The table's owner or a superuser can still disable the
-- trigger; that is what the hash chain and the signed checkpoints detect
-- (ARCHITECTURE.md, "Append-only").
CREATE FUNCTION circle_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % refused: the log is append-only', TG_OP, TG_TABLE_NAME;
END $$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION circle_refuse_change();
