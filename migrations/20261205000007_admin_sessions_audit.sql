-- The admin UI (DESIGN.md, "Admin UI"): sign-in sessions and the audit log.
--
-- A session is a random token in an HttpOnly cookie; only its SHA-256 is kept, with the
-- user and role it signed in as and the CSRF token every change must echo in a header. Kept
-- here, not in a process, so any replica answers it.
CREATE TABLE admin_sessions (
    token_hash bytea       PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    user_name  text        NOT NULL,
    role       text        NOT NULL CONSTRAINT admin_sessions_role_known CHECK (role IN ('viewer', 'editor')),
    csrf_token text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX admin_sessions_expires_idx ON admin_sessions (expires_at);

-- Every change made through the admin API (rules, partners, dead letters), by whom and when:
-- written by the admin middleware after the change answered 2xx.
CREATE TABLE audit_log (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    actor         text        NOT NULL,
    role          text        NOT NULL,
    method        text        NOT NULL,
    path          text        NOT NULL,
    -- what was changed: `rules`, `partners`, `dlq`, `sessions`...
    target        text        NOT NULL,
    status        integer     NOT NULL,
    -- the rules version after a rules change
    rules_version bigint,
    -- the JSON body of the change (when small), or its size and digest
    detail        jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_target_idx ON audit_log (target, at DESC);
