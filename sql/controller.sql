-- LLMSafeSpace controller schema (PostgreSQL 15): sandbox records, their
-- lifecycle history and warm pool definitions.
--
-- Idempotent: llmsafespace-controller applies it on every start (and
-- `psql -f` may apply it again); it never drops or rewrites data.  It is
-- separate from the gateway's sql/schema.sql and has no foreign key into
-- it: a sandbox record outlives the user or key that created it.

-- One row per sandbox and per warm pod (a warm pod is a sandbox with a
-- pool and, until claimed, no owner).  The gateway may insert a row in
-- phase Pending; the controller inserts it itself from the create request
-- otherwise, and alone advances phase.
CREATE TABLE IF NOT EXISTS sandboxes (
    id              text PRIMARY KEY
                    CHECK (id ~ '^sb-[0-9a-z]{8,40}$'),
    owner           text,
    runtime         text NOT NULL,
    security_level  text NOT NULL DEFAULT 'standard'
                    CHECK (security_level IN ('standard', 'high', 'custom')),
    pool            text,
    timeout_s       integer,
    resources       jsonb NOT NULL DEFAULT '{}',
    network_access  jsonb NOT NULL DEFAULT '{}',
    labels          jsonb NOT NULL DEFAULT '{}',
    phase           text NOT NULL DEFAULT 'Pending'
                    CHECK (phase IN ('Pending', 'Creating', 'Running',
                                     'Terminating', 'Terminated', 'Failed')),
    -- the terminal phase a Terminating record ends in
    final_phase     text CHECK (final_phase IN ('Terminated', 'Failed')),
    reason          text,
    message         text,
    delete_requested_at timestamptz,
    slot            integer,
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    ready_at        timestamptz,
    claimed_at      timestamptz,
    expires_at      timestamptz,
    terminated_at   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS sandboxes_live
    ON sandboxes (phase) WHERE phase NOT IN ('Terminated', 'Failed');
CREATE INDEX IF NOT EXISTS sandboxes_owner ON sandboxes (owner);
CREATE INDEX IF NOT EXISTS sandboxes_pool ON sandboxes (pool);

-- Every phase change, with its reason: the lifecycle history.
CREATE TABLE IF NOT EXISTS sandbox_events (
    seq         bigserial PRIMARY KEY,
    sandbox_id  text NOT NULL,
    phase       text NOT NULL,
    reason      text,
    message     text,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS sandbox_events_sandbox
    ON sandbox_events (sandbox_id, seq);

-- Warm pools.  source 'manifest': mirrored by the controller from
-- conf/warmpools/*.yaml (the files win); source 'api': written by the REST
-- API.  status is written by the controller only.
CREATE TABLE IF NOT EXISTS warm_pools (
    id                text PRIMARY KEY
                      DEFAULT 'wp-' || substr(md5(gen_random_uuid()::text),
                                              1, 16),
    name              text NOT NULL UNIQUE
                      CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$'),
    runtime           text NOT NULL,
    min_size          integer NOT NULL DEFAULT 0
                      CHECK (min_size >= 0),
    max_size          integer NOT NULL DEFAULT 0
                      CHECK (max_size >= 0),
    security_level    text NOT NULL DEFAULT 'standard'
                      CHECK (security_level IN ('standard', 'high')),
    preload_packages  jsonb NOT NULL DEFAULT '[]',
    preload_scripts   jsonb NOT NULL DEFAULT '[]',
    auto_scaling      jsonb NOT NULL DEFAULT '{}',
    source            text NOT NULL DEFAULT 'api'
                      CHECK (source IN ('api', 'manifest')),
    status            jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- What each warm sandbox of the pool is given, the keys of a sandbox's
-- resources as numbers: cpu in cores, memory and ephemeralStorage in
-- bytes (both writers store them so; absent keys are the controller's
-- defaults).  Numbers only, because the gateway compares them with a
-- create's in its plan query: a string there would fail every create.
ALTER TABLE warm_pools ADD COLUMN IF NOT EXISTS
    resources jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(resources) = 'object'
           AND coalesce(jsonb_typeof(resources->'cpu'), 'number') = 'number'
           AND coalesce(jsonb_typeof(resources->'memory'), 'number')
               = 'number'
           AND coalesce(jsonb_typeof(resources->'ephemeralStorage'),
                        'number') = 'number');

-- Seconds an unclaimed warm sandbox may live before it is replaced by a
-- fresh one; NULL: no limit.
ALTER TABLE warm_pools ADD COLUMN IF NOT EXISTS
    ttl_s integer CHECK (ttl_s > 0);
