-- Tokens you can manage: an id to name a token by (the secret's hash is not one),
-- a label, an optional expiry and the time it was revoked. Rows from before get a
-- fresh id. Issuing and revoking are also events in the log (aggregate `token`),
-- written in the same transaction as the row.
ALTER TABLE api_tokens ADD COLUMN token_id text;
ALTER TABLE api_tokens ADD COLUMN label text NOT NULL DEFAULT '';
ALTER TABLE api_tokens ADD COLUMN expires_at timestamptz;
ALTER TABLE api_tokens ADD COLUMN revoked_at timestamptz;
UPDATE api_tokens SET token_id = 'tok_' || replace(gen_random_uuid()::text, '-', '');
ALTER TABLE api_tokens ALTER COLUMN token_id SET NOT NULL;
CREATE UNIQUE INDEX api_tokens_token_id ON api_tokens (token_id);
