-- LLMSafeSpace gateway schema (PostgreSQL 15).
--
-- Idempotent: applying it again to a database that already has it changes
-- nothing, so `llmsafespace-admin init` may run on every deployment.
-- Tables of later components (sandboxes, warm pools) are added by them.

-- Users.  Deleting a user only sets deleted_at: audit rows and keys keep
-- pointing at it.  The gateway and llmsafespace-admin choose the id; the
-- default serves manual inserts.  The name is unique among live users, so a deleted user's
-- name can be given again.
CREATE TABLE IF NOT EXISTS users (
    id          text PRIMARY KEY
                DEFAULT 'usr-' || substr(md5(gen_random_uuid()::text), 1, 16)
                CHECK (id ~ '^usr-[0-9a-z]{16}$'),
    name        text NOT NULL
                CHECK (name ~ '^[A-Za-z0-9._@-]{1,64}$'),
    role        text NOT NULL
                CHECK (role IN ('admin', 'user')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

CREATE UNIQUE INDEX IF NOT EXISTS users_name_live
    ON users (name) WHERE deleted_at IS NULL;

-- API keys: lsp_<id>_<secret>.  Only the SHA-256 of the secret is stored,
-- as 64 lowercase hex digits.  The role comes from the key's user, never
-- from the key.
CREATE TABLE IF NOT EXISTS api_keys (
    id            text PRIMARY KEY
                  CHECK (id ~ '^[0-9a-z]{16}$'),
    user_id       text NOT NULL REFERENCES users (id),
    secret_hash   text NOT NULL
                  CHECK (secret_hash ~ '^[0-9a-f]{64}$'),
    name          text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

CREATE INDEX IF NOT EXISTS api_keys_user_id ON api_keys (user_id);

-- One row per authenticated mutating request, written by the gateway in
-- batches.  No foreign keys: a record outlives what it names, and writing
-- it must not depend on other rows.
CREATE TABLE IF NOT EXISTS audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    key_id       text,
    user_id      text,
    method       text,
    action       text,
    object       text,
    status       integer,
    request_id   text,
    remote_addr  text
);

CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at);
CREATE INDEX IF NOT EXISTS audit_log_user_id_at ON audit_log (user_id, at);

-- Counted limits (live sandboxes, active API keys per user) are checked
-- in the statement that adds a row, atomically: these functions take a
-- transaction-level advisory lock for the owner, then count with a
-- snapshot taken after it (a volatile function's queries each take their
-- own), so concurrent adds of one owner queue here and each one counts the
-- rows the others committed.  The lock is held until the calling statement
-- commits.  "except_id" leaves out the row being bound.
CREATE OR REPLACE FUNCTION lss_live_sandboxes(owner_id text, except_id text)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('sandboxes:' || owner_id,
                                                   0));
    RETURN (SELECT count(*) FROM sandboxes
            WHERE owner = owner_id AND id IS DISTINCT FROM except_id
            AND phase NOT IN ('Terminated', 'Failed')
            AND delete_requested_at IS NULL);
END $$;

CREATE OR REPLACE FUNCTION lss_live_keys(owner_id text)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('api_keys:' || owner_id,
                                                   0));
    RETURN (SELECT count(*) FROM api_keys
            WHERE user_id = owner_id AND revoked_at IS NULL);
END $$;
