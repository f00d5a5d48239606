-- See the PostgreSQL migration 0008: token ids, labels, expiry and revocation.
ALTER TABLE api_tokens ADD COLUMN token_id TEXT;
ALTER TABLE api_tokens ADD COLUMN label TEXT NOT NULL DEFAULT '';
ALTER TABLE api_tokens ADD COLUMN expires_at TEXT;
ALTER TABLE api_tokens ADD COLUMN revoked_at TEXT;
UPDATE api_tokens SET token_id = 'tok_' || lower(hex(randomblob(16)));
CREATE UNIQUE INDEX api_tokens_token_id ON api_tokens (token_id);
