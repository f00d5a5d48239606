-- The append's live-clients check ("no named client erased") asks client_keys for
-- rows with wrapped_key IS NULL among the clients an append names. Through the
-- primary key PostgreSQL judged a scan of the whole table cheaper for a table of a
-- few hundred rows, and ran that scan once per append, inside the batch's lock on
-- log_head: at 640 clients a batch of 30 appends spent about 3 ms scanning, and
-- every writer waited behind it. Erased clients are few, so an index of them alone
-- is small, and both forms of the check (the fast path's join and the loop's
-- = ANY) read it instead.
CREATE INDEX IF NOT EXISTS client_keys_erased ON client_keys (client_id)
    WHERE wrapped_key IS NULL;
