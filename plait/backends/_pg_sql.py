"""The postgres backend's schema: tables, indexes and PL/pgSQL functions, one string per schema
version (``_pg_schema.MIGRATIONS`` applies them in order).

Each protocol call runs as one statement or one function call, so as one transaction.

Locking discipline (so that concurrent transactions do not deadlock in the common cases): a
transaction that touches a run's rows (inbox, steps, timers, hooks) locks the run's row in
``runs`` first; batches lock all their runs up front, in run id order. Every inbox row of a run
is inserted while holding that lock, so an inbox id a claimer has not seen is always larger
than every id it has seen (``inbox_upto`` is safe). Claims and timer firing skip locked rows.
Two runs delivering to each other in separate batches can still deadlock; PostgreSQL rolls one
back and the client retries it.
"""

from __future__ import annotations

__all__ = ["V1", "V2", "V3", "V4", "V5"]

# -- schema version 1 -----------------------------------------------------------------------
# {s} is the quoted schema, {chan} the NOTIFY channel (a literal; the schema name is
# validated, so it needs no escaping). Never edit a released version; append a new one.

V1 = r"""
CREATE TABLE {s}.schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Enqueue order of workflow tasks, step tasks and timers (ties of ready time break on it),
-- and the lease tokens of step tasks.
CREATE SEQUENCE {s}.task_order;
CREATE SEQUENCE {s}.step_lease;

CREATE TABLE {s}.runs (
    run_id text PRIMARY KEY,
    created_seq bigint GENERATED ALWAYS AS IDENTITY,
    workflow text NOT NULL,
    status text NOT NULL,
    closed boolean GENERATED ALWAYS AS (
        status IN ('completed', 'failed', 'cancelled', 'terminated', 'continued_as_new')
    ) STORED,
    created_at float8 NOT NULL,
    key text,
    parent_run_id text,
    parent_seq integer,
    parent_close text NOT NULL,
    queue text,
    result jsonb,
    error jsonb,
    closed_at float8,
    continued_to text,
    block_reason text,
    fence bigint NOT NULL DEFAULT 0,     -- fencing token: bumped by every claim
    lease_expires float8,                -- NULL: no lease held
    wf_ready_at float8,                  -- NULL: no workflow task queued
    wf_order bigint,
    history_len integer NOT NULL DEFAULT 0
) WITH (fillfactor = 80);
CREATE INDEX runs_created ON {s}.runs (created_seq);
-- Key uniqueness among open runs, by constraint (concurrent starters cannot both win).
CREATE UNIQUE INDEX runs_open_key ON {s}.runs (key) WHERE key IS NOT NULL AND NOT closed;
CREATE INDEX runs_wf_ready ON {s}.runs (wf_ready_at, wf_order) WHERE wf_ready_at IS NOT NULL;
CREATE INDEX runs_status ON {s}.runs (status, created_seq);
CREATE INDEX runs_workflow ON {s}.runs (workflow, created_seq);
CREATE INDEX runs_parent ON {s}.runs (parent_run_id, created_seq)
    WHERE parent_run_id IS NOT NULL;

CREATE TABLE {s}.history (
    run_id text NOT NULL,
    pos integer NOT NULL,
    event jsonb NOT NULL,
    PRIMARY KEY (run_id, pos)
);

CREATE TABLE {s}.inbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id text NOT NULL,
    event jsonb NOT NULL
);
CREATE INDEX inbox_run ON {s}.inbox (run_id, id);

CREATE TABLE {s}.steps (
    run_id text NOT NULL,
    seq integer NOT NULL,
    name text NOT NULL,
    args jsonb NOT NULL,
    attempt integer NOT NULL,
    ready_at float8 NOT NULL,
    lease bigint NOT NULL DEFAULT 0,
    lease_expires float8,
    ord bigint NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITH (fillfactor = 80);
CREATE INDEX steps_ready ON {s}.steps (ready_at, ord);

CREATE TABLE {s}.timers (
    run_id text NOT NULL,
    seq integer NOT NULL,
    fire_at float8 NOT NULL,
    ord bigint NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX timers_due ON {s}.timers (fire_at, ord);

-- Open hooks only (closed and disposed hooks are deleted): the primary key is the
-- uniqueness of tokens among open hooks.
CREATE TABLE {s}.hooks (
    token text PRIMARY KEY,
    run_id text NOT NULL,
    seq integer NOT NULL
);
CREATE INDEX hooks_run ON {s}.hooks (run_id);

-- Backend objects LISTENing on the channel (one row each). A write NOTIFYs only when another
-- one is registered. Registration takes the exclusive advisory lock {lock}; wake() takes it
-- shared until its transaction ends, so a newcomer is registered only after every transaction
-- that may have skipped its NOTIFY has committed (and sees their writes in its first queries).
CREATE TABLE {s}.listeners (
    origin text PRIMARY KEY,
    pid integer NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION {s}.wake(p_flags text, p_origin text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({lock});
    PERFORM pg_notify('{chan}', p_flags || ':' || p_origin)
       FROM {s}.listeners WHERE origin <> p_origin LIMIT 1;
END $$;

CREATE FUNCTION {s}.register_listener(p_origin text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({lock});
    DELETE FROM {s}.listeners l
     WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.pid);
    INSERT INTO {s}.listeners (origin, pid) VALUES (p_origin, pg_backend_pid())
    ON CONFLICT (origin) DO UPDATE SET pid = excluded.pid, since = now();
END $$;

-- Append p_event to an open run's inbox; queue its workflow task unless queued (or unless the
-- run is p_hold: a committing run requeues itself at the end of its commit).
-- 0: dropped (run missing or closed), 1: appended, 2: appended and queued.
CREATE FUNCTION {s}.deliver(p_run text, p_event jsonb, p_now float8, p_hold text)
RETURNS integer LANGUAGE plpgsql AS $$
-- Every caller holds p_run's row lock already (taken up front, in run id order).
DECLARE
    v_idle boolean;
    v_out integer := 1;
BEGIN
    SELECT wf_ready_at IS NULL INTO v_idle FROM {s}.runs WHERE run_id = p_run AND NOT closed;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    IF v_idle AND p_run IS DISTINCT FROM p_hold THEN
        UPDATE {s}.runs SET wf_ready_at = p_now, wf_order = nextval('{s}.task_order')
         WHERE run_id = p_run;
        v_out := 2;
    END IF;
    INSERT INTO {s}.inbox (run_id, event) VALUES (p_run, p_event);
    RETURN v_out;
END $$;

-- A Delivery is [run_id, event] or null. (Helpers are PL/pgSQL, not SQL functions: PL/pgSQL
-- caches its plans per session, a non-inlined SQL function is planned on every call.)
CREATE FUNCTION {s}.deliver_d(d jsonb, p_now float8, p_hold text)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    IF d IS NULL OR jsonb_typeof(d) = 'null' THEN
        RETURN 0;
    END IF;
    RETURN {s}.deliver(d->>0, d->1, p_now, p_hold);
END $$;

-- Deliver HookReceived to the run holding open hook p_token, then on_delivered; or only
-- on_missing. Returns [run_id or null, queued?].
CREATE FUNCTION {s}.resume(p_token text, p_payload jsonb, p_now float8, p_on_delivered jsonb,
                           p_on_missing jsonb, p_hold text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_run text;
    v_seq integer;
    v_again text;
    v_q integer := 0;
BEGIN
    LOOP
        SELECT run_id, seq INTO v_run, v_seq FROM {s}.hooks WHERE token = p_token;
        IF NOT FOUND THEN
            v_q := {s}.deliver_d(p_on_missing, p_now, p_hold);
            RETURN jsonb_build_array(NULL, v_q = 2);
        END IF;
        -- Hooks of a run change only under its row lock: take it, then look again.
        PERFORM 1 FROM {s}.runs WHERE run_id = v_run FOR NO KEY UPDATE;
        SELECT run_id, seq INTO v_again, v_seq FROM {s}.hooks WHERE token = p_token;
        EXIT WHEN v_again = v_run;
    END LOOP;
    v_q := {s}.deliver(v_run, jsonb_build_object('type', 'HookReceived', 'seq', v_seq,
                                                 'payload', p_payload), p_now, p_hold);
    v_q := greatest(v_q, {s}.deliver_d(p_on_delivered, p_now, p_hold));
    RETURN jsonb_build_array(v_run, v_q = 2);
END $$;

-- create_run: [run_id, created, queued]
CREATE FUNCTION {s}.create_run(r jsonb, p_inbox jsonb, p_now float8, p_origin text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_run text := r->>'run_id';
    v_key text := r->>'key';
    v_other text;
    v_n integer := jsonb_array_length(p_inbox);
BEGIN
    LOOP
        INSERT INTO {s}.runs (run_id, workflow, status, created_at, key, parent_run_id,
                              parent_seq, parent_close, queue, result, error, closed_at,
                              continued_to, block_reason, wf_ready_at, wf_order)
        VALUES (v_run, r->>'workflow', r->>'status', (r->>'created_at')::float8, v_key,
                r->>'parent_run_id', (r->>'parent_seq')::integer, r->>'parent_close',
                r->>'queue', nullif(r->'result', 'null'), nullif(r->'error', 'null'),
                (r->>'closed_at')::float8, r->>'continued_to', r->>'block_reason',
                CASE WHEN v_n > 0 THEN p_now END,
                CASE WHEN v_n > 0 THEN nextval('{s}.task_order') END)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            INSERT INTO {s}.inbox (run_id, event)
            SELECT v_run, e FROM jsonb_array_elements(p_inbox) WITH ORDINALITY AS t(e, o)
             ORDER BY o;
            IF v_n > 0 THEN
                PERFORM {s}.wake('w', p_origin);
            END IF;
            RETURN jsonb_build_array(v_run, true, v_n > 0);
        END IF;
        IF v_key IS NOT NULL THEN
            SELECT run_id INTO v_other FROM {s}.runs WHERE key = v_key AND NOT closed;
            IF FOUND THEN
                RETURN jsonb_build_array(v_other, false, false);
            END IF;
        END IF;
        IF EXISTS (SELECT 1 FROM {s}.runs WHERE run_id = v_run) THEN
            RETURN jsonb_build_array(v_run, false, false);
        END IF;
        -- the key holder closed in between: try again
    END LOOP;
END $$;

-- append_inbox: 0 run missing or closed, 1 appended, 2 appended and queued
CREATE FUNCTION {s}.append_inbox(p_run text, p_events jsonb, p_now float8, p_origin text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    e jsonb;
    v_q integer := 1;
BEGIN
    PERFORM 1 FROM {s}.runs WHERE run_id = p_run AND NOT closed FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    FOR e IN SELECT x FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(x, o) ORDER BY o
    LOOP
        v_q := greatest(v_q, {s}.deliver(p_run, e, p_now, NULL));
    END LOOP;
    IF v_q = 2 THEN
        PERFORM {s}.wake('w', p_origin);
    END IF;
    RETURN v_q;
END $$;

CREATE FUNCTION {s}.requeue(p_run text, p_now float8, p_origin text)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {s}.runs SET wf_ready_at = p_now, wf_order = nextval('{s}.task_order')
     WHERE run_id = p_run AND NOT closed AND wf_ready_at IS NULL;
    IF FOUND THEN
        PERFORM {s}.wake('w', p_origin);
        RETURN 2;
    END IF;
    RETURN CASE WHEN EXISTS (SELECT 1 FROM {s}.runs WHERE run_id = p_run AND NOT closed)
                THEN 1 ELSE 0 END;
END $$;

-- Queue info: NULL when a task of the kind may be claimable now, else [next, count]: the
-- earliest time one becomes claimable (a future ready time or a lease expiry; NULL: never
-- without a new write) and how many are leased (timers: how many exist, -1 for "many"). The
-- client keeps it to answer claims and state() without a round trip until a write or a NOTIFY
-- says otherwise. Each walks at most 501 entries of an index (never a whole churned table):
-- with nothing claimable, the rows ready by p_now are exactly the leased ones ("many": NULL).
CREATE FUNCTION {s}.wf_info(p_now float8)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v jsonb;
BEGIN
    SELECT CASE WHEN bool_or(lease_expires IS NULL OR lease_expires <= p_now) OR count(*) > 500
                THEN NULL
                ELSE jsonb_build_array(
                         least(min(lease_expires),
                               (SELECT wf_ready_at FROM {s}.runs WHERE wf_ready_at > p_now
                                 ORDER BY wf_ready_at LIMIT 1)),
                         count(*)) END
      INTO v
      FROM (SELECT lease_expires FROM {s}.runs WHERE wf_ready_at <= p_now
             ORDER BY wf_ready_at LIMIT 501) t;
    RETURN v;
END $$;

CREATE FUNCTION {s}.step_info(p_now float8)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v jsonb;
BEGIN
    SELECT CASE WHEN bool_or(lease_expires IS NULL OR lease_expires <= p_now) OR count(*) > 500
                THEN NULL
                ELSE jsonb_build_array(
                         least(min(lease_expires),
                               (SELECT ready_at FROM {s}.steps WHERE ready_at > p_now
                                 ORDER BY ready_at LIMIT 1)),
                         count(*)) END
      INTO v
      FROM (SELECT lease_expires FROM {s}.steps WHERE ready_at <= p_now
             ORDER BY ready_at LIMIT 501) t;
    RETURN v;
END $$;

CREATE FUNCTION {s}.timer_info(p_now float8)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_first float8;
    v_n bigint;
BEGIN
    SELECT fire_at INTO v_first FROM {s}.timers ORDER BY fire_at LIMIT 1;
    IF v_first <= p_now THEN
        RETURN NULL;
    END IF;
    SELECT count(*) INTO v_n FROM (SELECT 1 FROM {s}.timers LIMIT 1001) t;
    RETURN jsonb_build_array(v_first, CASE WHEN v_n > 1000 THEN -1 ELSE v_n END);
END $$;

-- claim_wfs: [[[run, [[inbox id, event]...]]...], wf_info]: up to p_n workflow tasks, in
-- claim order (ready time, then enqueue order); run = [RUN_COLS..., fence, history_len,
-- has children].
CREATE FUNCTION {s}.claim_wfs(p_now float8, p_secs float8, p_n integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_runs jsonb;
    v_out jsonb;
BEGIN
    WITH c AS (
        SELECT run_id FROM {s}.runs
         WHERE wf_ready_at <= p_now AND (lease_expires IS NULL OR lease_expires <= p_now)
         ORDER BY wf_ready_at, wf_order LIMIT p_n FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE {s}.runs r SET fence = fence + 1, lease_expires = p_now + p_secs
          FROM c WHERE r.run_id = c.run_id
        RETURNING r.*
    )
    SELECT jsonb_agg(jsonb_build_array(
               u.run_id, u.workflow, u.status, u.created_at, u.key, u.parent_run_id,
               u.parent_seq, u.parent_close, u.queue, u.result, u.error, u.closed_at,
               u.continued_to, u.block_reason, u.fence, u.history_len,
               EXISTS (SELECT 1 FROM {s}.runs k WHERE k.parent_run_id = u.run_id))
               ORDER BY u.wf_ready_at, u.wf_order)
      INTO v_runs FROM u;
    IF v_runs IS NULL THEN
        RETURN jsonb_build_array('[]'::jsonb, {s}.wf_info(p_now));
    END IF;
    -- A new statement, so a new snapshot: every inbox row of these runs committed before
    -- their locks were taken is visible.
    SELECT jsonb_agg(jsonb_build_array(r.value,
               coalesce((SELECT jsonb_agg(jsonb_build_array(i.id, i.event) ORDER BY i.id)
                           FROM {s}.inbox i WHERE i.run_id = r.value->>0), '[]'))
               ORDER BY r.ordinality)
      INTO v_out FROM jsonb_array_elements(v_runs) WITH ORDINALITY AS r;
    RETURN jsonb_build_array(v_out, {s}.wf_info(p_now));
END $$;

-- claim_steps: [[[run_id, seq, name, args, attempt, ready_at, lease]...], step_info]
CREATE FUNCTION {s}.claim_steps(p_now float8, p_limit integer, p_secs float8)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_tasks jsonb;
BEGIN
    WITH c AS (
        SELECT run_id, seq FROM {s}.steps
         WHERE ready_at <= p_now AND (lease_expires IS NULL OR lease_expires <= p_now)
         ORDER BY ready_at, ord LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE {s}.steps s SET lease = nextval('{s}.step_lease'), lease_expires = p_now + p_secs
          FROM c WHERE s.run_id = c.run_id AND s.seq = c.seq
        RETURNING s.run_id, s.seq, s.name, s.args, s.attempt, s.ready_at, s.lease, s.ord
    )
    SELECT coalesce(jsonb_agg(jsonb_build_array(run_id, seq, name, args, attempt, ready_at,
                                                lease) ORDER BY ready_at, ord), '[]')
      INTO v_tasks FROM u;
    RETURN jsonb_build_array(v_tasks, {s}.step_info(p_now));
END $$;

-- finish_steps: items [[run_id, seq, lease, event, now]...], p_lock the items' run ids sorted
-- (locked first, in that order). Returns [[0 stale | 1 delivered | 2 delivered and queued...],
-- step_info at the latest now].
CREATE FUNCTION {s}.finish_steps(p_items jsonb, p_lock text[], p_origin text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    x jsonb;
    v_out integer[] := '{{}}';
    v_q integer;
    v_woke boolean := false;
    v_now float8;
BEGIN
    PERFORM 1 FROM {s}.runs WHERE run_id = ANY(p_lock) ORDER BY run_id FOR NO KEY UPDATE;
    FOR x IN SELECT e FROM jsonb_array_elements(p_items) WITH ORDINALITY AS t(e, o) ORDER BY o
    LOOP
        v_now := greatest(v_now, (x->>4)::float8);
        DELETE FROM {s}.steps
         WHERE run_id = x->>0 AND seq = (x->>1)::integer AND lease = (x->>2)::bigint;
        IF FOUND THEN
            v_q := {s}.deliver(x->>0, x->3, (x->>4)::float8, NULL);
            v_woke := v_woke OR v_q = 2;
            v_out := v_out || (1 + (v_q = 2)::integer);
        ELSE
            v_out := v_out || 0;
        END IF;
    END LOOP;
    IF v_woke THEN
        PERFORM {s}.wake('w', p_origin);
    END IF;
    RETURN jsonb_build_array(to_jsonb(v_out), {s}.step_info(v_now));
END $$;

CREATE FUNCTION {s}.retry_step(p_run text, p_seq integer, p_lease bigint, p_attempt integer,
                               p_ready float8, p_origin text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {s}.steps SET attempt = p_attempt, ready_at = p_ready, lease = 0,
                         lease_expires = NULL, ord = nextval('{s}.task_order')
     WHERE run_id = p_run AND seq = p_seq AND lease = p_lease;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM {s}.wake('s', p_origin);
    RETURN true;
END $$;

-- fire_timers: [fired, queued?, timer_info]. A timer whose run row is locked (its run is
-- committing) is skipped this time; timer_info is then NULL, so the caller asks again.
CREATE FUNCTION {s}.fire_timers(p_now float8, p_limit integer, p_origin text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    t record;
    v_n integer := 0;
    v_q integer := 0;
BEGIN
    FOR t IN
        SELECT tm.run_id, tm.seq FROM {s}.timers tm JOIN {s}.runs r ON r.run_id = tm.run_id
         WHERE tm.fire_at <= p_now
         ORDER BY tm.fire_at, tm.ord LIMIT p_limit
           FOR UPDATE OF tm, r SKIP LOCKED
    LOOP
        DELETE FROM {s}.timers WHERE run_id = t.run_id AND seq = t.seq;
        v_q := greatest(v_q, {s}.deliver(t.run_id,
                                         jsonb_build_object('type', 'TimerFired', 'seq', t.seq),
                                         p_now, NULL));
        v_n := v_n + 1;
    END LOOP;
    IF v_q = 2 THEN
        PERFORM {s}.wake('w', p_origin);
    END IF;
    RETURN jsonb_build_array(v_n, v_q = 2, {s}.timer_info(p_now));
END $$;

CREATE FUNCTION {s}.resume_hook(p_token text, p_payload jsonb, p_now float8, p_origin text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v jsonb;
BEGIN
    v := {s}.resume(p_token, p_payload, p_now, NULL, NULL, NULL);
    IF (v->>1)::boolean THEN
        PERFORM {s}.wake('w', p_origin);
    END IF;
    RETURN v->>0;
END $$;

-- commit_one: NULL when fenced out, else the wake-up flags it raised ('' or some of w s t).
CREATE FUNCTION {s}.commit_one(c jsonb)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_run text := c->>'run_id';
    v_now float8 := (c->>'now')::float8;
    v_lease bigint := (c->>'lease')::bigint;
    v_nev integer := coalesce(jsonb_array_length(c->'events'), 0);
    v_base integer;
    v_closing boolean;
    v_q integer := 0;
    v_flags text := '';
    v_x jsonb;
    v_r jsonb;
    v_ib jsonb;
BEGIN
    -- Fencing first: nothing below runs unless this matches.
    UPDATE {s}.runs SET
        fence = CASE WHEN v_lease IS NULL THEN fence + 1 ELSE fence END,
        status = coalesce(c->>'status', status),
        result = coalesce(nullif(c->'result', 'null'), result),
        error = coalesce(nullif(c->'error', 'null'), error),
        continued_to = coalesce(c->>'continued_to', continued_to),
        block_reason = c->>'block_reason',
        history_len = history_len + v_nev,
        closed_at = CASE WHEN coalesce(c->>'status', status) IN
                              ('completed', 'failed', 'cancelled', 'terminated',
                               'continued_as_new')
                         THEN v_now ELSE closed_at END,
        lease_expires = NULL,
        wf_ready_at = NULL,
        wf_order = NULL
     WHERE run_id = v_run AND NOT closed
       AND (v_lease IS NULL OR (fence = v_lease AND lease_expires IS NOT NULL))
    RETURNING history_len - v_nev, closed INTO v_base, v_closing;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    IF v_nev > 0 THEN
        INSERT INTO {s}.history (run_id, pos, event)
        SELECT v_run, v_base + o - 1, e
          FROM jsonb_array_elements(c->'events') WITH ORDINALITY AS t(e, o);
    END IF;
    IF v_closing THEN
        DELETE FROM {s}.inbox WHERE run_id = v_run;
    ELSIF (c->>'inbox_upto')::bigint > 0 THEN
        DELETE FROM {s}.inbox WHERE run_id = v_run AND id <= (c->>'inbox_upto')::bigint;
    END IF;

    IF c ? 'steps' THEN
        INSERT INTO {s}.steps AS s (run_id, seq, name, args, attempt, ready_at, lease,
                                    lease_expires, ord)
        SELECT j->>0, (j->>1)::integer, j->>2, j->3, (j->>4)::integer, (j->>5)::float8, 0,
               NULL, nextval('{s}.task_order')
          FROM jsonb_array_elements(c->'steps') WITH ORDINALITY AS t(j, o)
        ON CONFLICT (run_id, seq) DO UPDATE SET
            name = excluded.name, args = excluded.args, attempt = excluded.attempt,
            ready_at = excluded.ready_at, lease = 0, lease_expires = NULL, ord = excluded.ord;
        v_flags := v_flags || 's';
    END IF;
    IF c ? 'timers' THEN
        INSERT INTO {s}.timers AS tm (run_id, seq, fire_at, ord)
        SELECT j->>0, (j->>1)::integer, (j->>2)::float8, nextval('{s}.task_order')
          FROM jsonb_array_elements(c->'timers') WITH ORDINALITY AS t(j, o)
        ON CONFLICT (run_id, seq) DO UPDATE SET fire_at = excluded.fire_at, ord = excluded.ord;
        v_flags := v_flags || 't';
    END IF;
    IF c ? 'cancel_timers' THEN
        DELETE FROM {s}.timers WHERE run_id = v_run AND seq IN
            (SELECT (jsonb_array_elements_text(c->'cancel_timers'))::integer);
    END IF;
    -- Disposals before registrations: a token closed and reopened in one activation moves.
    IF c ? 'dispose_hooks' THEN
        DELETE FROM {s}.hooks WHERE run_id = v_run AND token IN
            (SELECT jsonb_array_elements_text(c->'dispose_hooks'));
    END IF;
    IF c ? 'hooks' THEN
        FOR v_x IN SELECT e FROM jsonb_array_elements(c->'hooks') WITH ORDINALITY AS t(e, o)
                  ORDER BY o
        LOOP
            INSERT INTO {s}.hooks (token, run_id, seq) VALUES (v_x->>0, v_run, (v_x->>1)::integer)
            ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
                v_q := greatest(v_q, {s}.deliver_d(v_x->2, v_now, v_run));
            END IF;
        END LOOP;
    END IF;
    IF v_closing THEN
        -- Closing releases the key (the partial unique index), hooks, and pending work.
        DELETE FROM {s}.hooks WHERE run_id = v_run;
        DELETE FROM {s}.steps WHERE run_id = v_run;
        DELETE FROM {s}.timers WHERE run_id = v_run;
        v_flags := '';
    END IF;

    IF c ? 'new_runs' THEN
        FOR v_x IN SELECT e FROM jsonb_array_elements(c->'new_runs') WITH ORDINALITY AS t(e, o)
                  ORDER BY o
        LOOP
            v_r := v_x->0;
            v_ib := v_x->1;
            INSERT INTO {s}.runs (run_id, workflow, status, created_at, key, parent_run_id,
                                  parent_seq, parent_close, queue, result, error, closed_at,
                                  continued_to, block_reason, wf_ready_at, wf_order)
            VALUES (v_r->>'run_id', v_r->>'workflow', v_r->>'status', (v_r->>'created_at')::float8,
                    v_r->>'key', v_r->>'parent_run_id', (v_r->>'parent_seq')::integer,
                    v_r->>'parent_close', v_r->>'queue', nullif(v_r->'result', 'null'),
                    nullif(v_r->'error', 'null'), (v_r->>'closed_at')::float8,
                    v_r->>'continued_to', v_r->>'block_reason',
                    CASE WHEN jsonb_array_length(v_ib) > 0 THEN v_now END,
                    CASE WHEN jsonb_array_length(v_ib) > 0
                         THEN nextval('{s}.task_order') END)
            ON CONFLICT DO NOTHING;
            IF FOUND THEN
                INSERT INTO {s}.inbox (run_id, event)
                SELECT v_r->>'run_id', e FROM jsonb_array_elements(v_ib) WITH ORDINALITY AS t(e, o)
                 ORDER BY o;
                IF jsonb_array_length(v_ib) > 0 THEN
                    v_q := 2;
                END IF;
                v_q := greatest(v_q, {s}.deliver_d(v_x->2, v_now, v_run));
            ELSIF NOT EXISTS (SELECT 1 FROM {s}.runs WHERE run_id = v_r->>'run_id') THEN
                -- an open run holds the key
                v_q := greatest(v_q, {s}.deliver_d(v_x->3, v_now, v_run));
            END IF;
        END LOOP;
    END IF;
    IF c ? 'hook_resumes' THEN
        FOR v_x IN SELECT e FROM jsonb_array_elements(c->'hook_resumes') WITH ORDINALITY AS t(e, o)
                  ORDER BY o
        LOOP
            v_r := {s}.resume(v_x->>0, v_x->1, v_now, v_x->2, v_x->3, v_run);
            IF (v_r->>1)::boolean THEN
                v_q := 2;
            END IF;
        END LOOP;
    END IF;
    IF c ? 'deliveries' THEN
        FOR v_x IN SELECT e FROM jsonb_array_elements(c->'deliveries') WITH ORDINALITY AS t(e, o)
                  ORDER BY o
        LOOP
            v_q := greatest(v_q, {s}.deliver_d(v_x, v_now, v_run));
        END LOOP;
    END IF;

    -- Release done above; queue again (with a fresh enqueue order) if the inbox is not empty.
    IF NOT v_closing AND coalesce((c->>'requeue')::boolean, true)
       AND EXISTS (SELECT 1 FROM {s}.inbox WHERE run_id = v_run) THEN
        UPDATE {s}.runs SET wf_ready_at = v_now, wf_order = nextval('{s}.task_order')
         WHERE run_id = v_run;
        v_q := 2;
    END IF;
    IF v_q = 2 THEN
        v_flags := v_flags || 'w';
    END IF;
    RETURN v_flags;
END $$;

-- apply_commits: p_docs [commit...], p_lock the run ids they touch, sorted (locked first, in
-- that order, so two batches touching the same runs wait instead of deadlocking). Returns
-- [[flags or null (fenced out)...], wf_info at the latest commit time].
CREATE FUNCTION {s}.apply_commits(p_docs jsonb, p_lock text[], p_origin text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    c jsonb;
    v_f text;
    v_out jsonb := '[]';
    v_flags text := 'r';
    v_now float8;
BEGIN
    PERFORM 1 FROM {s}.runs WHERE run_id = ANY(p_lock) ORDER BY run_id FOR NO KEY UPDATE;
    FOR c IN SELECT e FROM jsonb_array_elements(p_docs) WITH ORDINALITY AS t(e, o) ORDER BY o
    LOOP
        v_now := greatest(v_now, (c->>'now')::float8);
        v_f := {s}.commit_one(c);
        v_out := v_out || jsonb_build_array(v_f);
        v_flags := v_flags || coalesce(v_f, '');
    END LOOP;
    PERFORM {s}.wake(v_flags, p_origin);
    RETURN jsonb_build_array(v_out, {s}.wf_info(v_now));
END $$;

-- state: [wf ready, wf leased, wf due, steps ready, steps leased, steps due,
--         timers, timers due now, earliest timer]; "due" is the earliest future time.
CREATE FUNCTION {s}.state(p_now float8)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    w_ready bigint;
    w_leased bigint;
    w_lease float8;
    w_next float8;
    s_ready bigint;
    s_leased bigint;
    s_lease float8;
    s_next float8;
    t_n bigint;
    t_now bigint;
    t_next float8;
BEGIN
    SELECT count(*) FILTER (WHERE lease_expires IS NULL OR lease_expires <= p_now),
           count(*) FILTER (WHERE lease_expires > p_now),
           min(lease_expires) FILTER (WHERE lease_expires > p_now)
      INTO w_ready, w_leased, w_lease FROM {s}.runs WHERE wf_ready_at <= p_now;
    SELECT wf_ready_at INTO w_next FROM {s}.runs WHERE wf_ready_at > p_now
     ORDER BY wf_ready_at LIMIT 1;
    SELECT count(*) FILTER (WHERE lease_expires IS NULL OR lease_expires <= p_now),
           count(*) FILTER (WHERE lease_expires > p_now),
           min(lease_expires) FILTER (WHERE lease_expires > p_now)
      INTO s_ready, s_leased, s_lease FROM {s}.steps WHERE ready_at <= p_now;
    SELECT ready_at INTO s_next FROM {s}.steps WHERE ready_at > p_now
     ORDER BY ready_at LIMIT 1;
    SELECT count(*), count(*) FILTER (WHERE fire_at <= p_now) INTO t_n, t_now FROM {s}.timers;
    SELECT fire_at INTO t_next FROM {s}.timers WHERE fire_at > p_now ORDER BY fire_at LIMIT 1;
    RETURN jsonb_build_array(w_ready, w_leased, least(w_lease, w_next),
                             s_ready, s_leased, least(s_lease, s_next),
                             t_n, t_now, t_next);
END $$;
"""

# -- schema version 2: eager dispatch and fast paths ------------------------------------------
# No table changes. Steps may arrive pre-leased in a commit (step doc [run_id, seq, name, args,
# attempt, ready_at, lease, lease_expires]); fin / finish1 / finish_claim finish steps and may
# claim their runs' workflow tasks in the same transaction; commit_run / commit1 /
# commit_batch apply commits in fewer statements; queue info is computed only when asked for.
# Version 1's functions keep their arguments and results, so a plait of version 1 still running
# against a migrated store keeps working until it is restarted.

V2 = r"""
CREATE OR REPLACE FUNCTION {s}.commit_one(c jsonb)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_run text := c->>'run_id';
    v_now float8 := (c->>'now')::float8;
    v_lease bigint := (c->>'lease')::bigint;
    v_nev integer := coalesce(jsonb_array_length(c->'events'), 0);
    v_base integer;
    v_closing boolean;
    v_q integer := 0;
    v_flags text := '';
    v_x jsonb;
    v_r jsonb;
    v_ib jsonb;
BEGIN
    -- Fencing first: nothing below runs unless this matches.
    UPDATE {s}.runs SET
        fence = CASE WHEN v_lease IS NULL THEN fence + 1 ELSE fence END,
        status = coalesce(c->>'status', status),
        result = coalesce(nullif(c->'result', 'null'), result),
        error = coalesce(nullif(c->'error', 'null'), error),
        continued_to = coalesce(c->>'continued_to', continued_to),
        block_reason = c->>'block_reason',
        history_len = history_len + v_nev,
        closed_at = CASE WHEN coalesce(c->>'status', status) IN
                              ('completed', 'failed', 'cancelled', 'terminated',
                               'continued_as_new')
                         THEN v_now ELSE closed_at END,
        lease_expires = NULL,
        wf_ready_at = NULL,
        wf_order = NULL
     WHERE run_id = v_run AND NOT closed
       AND (v_lease IS NULL OR (fence = v_lease AND lease_expires IS NOT NULL))
    RETURNING history_len - v_nev, closed INTO v_base, v_closing;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    IF v_nev > 0 THEN
        INSERT INTO {s}.history (run_id, pos, event)
        SELECT v_run, v_base + o - 1, e
          FROM jsonb_array_elements(c->'events') WITH ORDINALITY AS t(e, o);
    END IF;
    IF v_closing THEN
        DELETE FROM {s}.inbox WHERE run_id = v_run;
    ELSIF (c->>'inbox_upto')::bigint > 0 THEN
        DELETE FROM {s}.inbox WHERE run_id = v_run AND id <= (c->>'inbox_upto')::bigint;
    END IF;

    IF c ? 'steps' THEN
        -- A step with a lease token and expiry is stored leased to the committer (eager
        -- dispatch): not claimable before its lease expires.
        INSERT INTO {s}.steps AS s (run_id, seq, name, args, attempt, ready_at, lease,
                                    lease_expires, ord)
        SELECT j->>0, (j->>1)::integer, j->>2, j->3, (j->>4)::integer, (j->>5)::float8,
               coalesce((j->>6)::bigint, 0), (j->>7)::float8, nextval('{s}.task_order')
          FROM jsonb_array_elements(c->'steps') WITH ORDINALITY AS t(j, o)
        ON CONFLICT (run_id, seq) DO UPDATE SET
            name = excluded.name, args = excluded.args, attempt = excluded.attempt,
            ready_at = excluded.ready_at, lease = excluded.lease,
            lease_expires = excluded.lease_expires, ord = excluded.ord;
        v_flags := v_flags || 's';
    END IF;
    IF c ? 'timers' THEN
        INSERT INTO {s}.timers AS tm (run_id, seq, fire_at, ord)
        SELECT j->>0, (j->>1)::integer, (j->>2)::float8, nextval('{s}.task_order')
          FROM jsonb_array_elements(c->'timers') WITH ORDINALITY AS t(j, o)
        ON CONFLICT (run_id, seq) DO UPDATE SET fire_at = excluded.fire_at, ord = excluded.ord;
        v_flags := v_flags || 't';
    END IF;
    IF c ? 'cancel_timers' THEN
        DELETE FROM {s}.timers WHERE run_id = v_run AND seq IN
            (SELECT (jsonb_array_elements_text(c->'cancel_timers'))::integer);
    END IF;
    -- Disposals before registrations: a token closed and reopened in one activation moves.
    IF c ? 'dispose_hooks' THEN
        DELETE FROM {s}.hooks WHERE run_id = v_run AND token IN
            (SELECT jsonb_array_elements_text(c->'dispose_hooks'));
    END IF;
    IF c ? 'hooks' THEN
        FOR v_x IN SELECT e FROM jsonb_array_elements(c->'hooks') WITH ORDINALITY AS t(e, o)
                  ORDER BY o
        LOOP
            INSERT INTO {s}.hooks (token, run_id, seq) VALUES (v_x->>0, v_run, (v_x->>1)::integer)
            ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
                v_q := greatest(v_q, {s}.deliver_d(v_x->2, v_now, v_run));
            END IF;
        END LOOP;
    END IF;
    IF v_closing THEN
        -- Closing releases the key (the partial unique index), hooks, and pending work.
        DELETE FROM {s}.hooks WHERE run_id = v_run;
        DELETE FROM {s}.steps WHERE run_id = v_run;
        DELETE FROM {s}.timers WHERE run_id = v_run;
        v_flags := '';
    END IF;

    IF c ? 'new_runs' THEN
        FOR v_x IN SELECT e FROM jsonb_array_elements(c->'new_runs') WITH ORDINALITY AS t(e, o)
                  ORDER BY o
        LOOP
            v_r := v_x->0;
            v_ib := v_x->1;
            INSERT INTO {s}.runs (run_id, workflow, status, created_at, key, parent_run_id,
                                  parent_seq, parent_close, queue, result, error, closed_at,
                                  continued_to, block_reason, wf_ready_at, wf_order)
            VALUES (v_r->>'run_id', v_r->>'workflow', v_r->>'status', (v_r->>'created_at')::float8,
                    v_r->>'key', v_r->>'parent_run_id', (v_r->>'parent_seq')::integer,
                    v_r->>'parent_close', v_r->>'queue', nullif(v_r->'result', 'null'),
                    nullif(v_r->'error', 'null'), (v_r->>'closed_at')::float8,
                    v_r->>'continued_to', v_r->>'block_reason',
                    CASE WHEN jsonb_array_length(v_ib) > 0 THEN v_now END,
                    CASE WHEN jsonb_array_length(v_ib) > 0
                         THEN nextval('{s}.task_order') END)
            ON CONFLICT DO NOTHING;
            IF FOUND THEN
                INSERT INTO {s}.inbox (run_id, event)
                SELECT v_r->>'run_id', e FROM jsonb_array_elements(v_ib) WITH ORDINALITY AS t(e, o)
                 ORDER BY o;
                IF jsonb_array_length(v_ib) > 0 THEN
                    v_q := 2;
                END IF;
                v_q := greatest(v_q, {s}.deliver_d(v_x->2, v_now, v_run));
            ELSIF NOT EXISTS (SELECT 1 FROM {s}.runs WHERE run_id = v_r->>'run_id') THEN
                -- an open run holds the key
                v_q := greatest(v_q, {s}.deliver_d(v_x->3, v_now, v_run));
            END IF;
        END LOOP;
    END IF;
    IF c ? 'hook_resumes' THEN
        FOR v_x IN SELECT e FROM jsonb_array_elements(c->'hook_resumes') WITH ORDINALITY AS t(e, o)
                  ORDER BY o
        LOOP
            v_r := {s}.resume(v_x->>0, v_x->1, v_now, v_x->2, v_x->3, v_run);
            IF (v_r->>1)::boolean THEN
                v_q := 2;
            END IF;
        END LOOP;
    END IF;
    IF c ? 'deliveries' THEN
        FOR v_x IN SELECT e FROM jsonb_array_elements(c->'deliveries') WITH ORDINALITY AS t(e, o)
                  ORDER BY o
        LOOP
            v_q := greatest(v_q, {s}.deliver_d(v_x, v_now, v_run));
        END LOOP;
    END IF;

    -- Release done above; queue again (with a fresh enqueue order) if the inbox is not empty.
    IF NOT v_closing AND coalesce((c->>'requeue')::boolean, true)
       AND EXISTS (SELECT 1 FROM {s}.inbox WHERE run_id = v_run) THEN
        UPDATE {s}.runs SET wf_ready_at = v_now, wf_order = nextval('{s}.task_order')
         WHERE run_id = v_run;
        v_q := 2;
    END IF;
    IF v_q = 2 THEN
        v_flags := v_flags || 'w';
    END IF;
    RETURN v_flags;
END $$;

-- The V2 entry points and their helpers: same semantics as the V1 functions in fewer
-- statements (each costs executor setup however little it does), and the queue info only
-- when the client asks for it (it can often work out a queue's new state itself).

-- fin: one step result. Deletes the step task if p_lease holds it and delivers p_event to its
-- run (queuing the run's workflow task); with p_secs, then claims that task as claim_wfs
-- would, if it is ready and has no live lease. code: 0 stale (nothing changed), 1 delivered,
-- 2 delivered and queued; run and inbox (as in claim_wfs) when it claimed. Takes the run's
-- row lock first (a batch holds it already).
CREATE FUNCTION {s}.fin(p_run text, p_seq integer, p_lease bigint, p_event jsonb,
                        p_now float8, p_secs float8,
                        OUT code integer, OUT run jsonb, OUT inbox jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_open boolean;
    v_ready float8;
    v_free boolean;
    v_claim boolean;
    v_n integer;
BEGIN
    SELECT NOT closed, wf_ready_at, lease_expires IS NULL OR lease_expires <= p_now
      INTO v_open, v_ready, v_free
      FROM {s}.runs WHERE run_id = p_run FOR NO KEY UPDATE;
    -- Steps of a closed run are dropped when it closes (under this lock): a step found here
    -- belongs to an open run.
    WITH d AS (
        DELETE FROM {s}.steps WHERE run_id = p_run AND seq = p_seq AND lease = p_lease
        RETURNING 1
    ), i AS (
        INSERT INTO {s}.inbox (run_id, event) SELECT p_run, p_event FROM d WHERE v_open
    )
    SELECT count(*) INTO v_n FROM d;
    IF v_n = 0 THEN
        code := 0;
        RETURN;
    END IF;
    code := 1 + (v_ready IS NULL)::integer;
    v_claim := p_secs IS NOT NULL AND v_free AND coalesce(v_ready <= p_now, true);
    IF v_ready IS NULL OR v_claim THEN
        -- Queue the workflow task (as deliver) and claim it (as claim_wfs), in one update; the
        -- inbox is read in it, after the lock (so it holds every entry of the run).
        UPDATE {s}.runs r SET
            wf_ready_at = coalesce(wf_ready_at, p_now),
            wf_order = CASE WHEN wf_ready_at IS NULL THEN nextval('{s}.task_order')
                            ELSE wf_order END,
            fence = CASE WHEN v_claim THEN fence + 1 ELSE fence END,
            lease_expires = CASE WHEN v_claim THEN p_now + p_secs ELSE lease_expires END
         WHERE run_id = p_run
        RETURNING
            CASE WHEN v_claim THEN jsonb_build_array(
                r.run_id, r.workflow, r.status, r.created_at, r.key, r.parent_run_id,
                r.parent_seq, r.parent_close, r.queue, r.result, r.error, r.closed_at,
                r.continued_to, r.block_reason, r.fence, r.history_len,
                EXISTS (SELECT 1 FROM {s}.runs k WHERE k.parent_run_id = r.run_id)) END,
            CASE WHEN v_claim THEN
                (SELECT jsonb_agg(jsonb_build_array(b.id, b.event) ORDER BY b.id)
                   FROM {s}.inbox b WHERE b.run_id = p_run) END
          INTO run, inbox;
    END IF;
END $$;

-- commit_run: commit_one for a commit whose effects stay within its run (no timers,
-- cancelled timers, hooks, disposed hooks, new runs, hook resumes or deliveries: the client
-- checks). flags NULL when fenced out; steps_new: step rows inserted (not counting ones that
-- replaced a row), steps_gone: step rows dropped (closing).
CREATE FUNCTION {s}.commit_run(c jsonb, OUT flags text, OUT steps_new integer,
                               OUT steps_gone integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_run text := c->>'run_id';
    v_now float8 := (c->>'now')::float8;
    v_lease bigint := (c->>'lease')::bigint;
    v_upto bigint := coalesce((c->>'inbox_upto')::bigint, 0);
    v_nev integer := coalesce(jsonb_array_length(c->'events'), 0);
    v_base integer;
    v_closing boolean;
    v_more boolean;
BEGIN
    -- Fencing first, as commit_one; this also takes the run's row lock.
    UPDATE {s}.runs SET
        fence = CASE WHEN v_lease IS NULL THEN fence + 1 ELSE fence END,
        status = coalesce(c->>'status', status),
        result = coalesce(nullif(c->'result', 'null'), result),
        error = coalesce(nullif(c->'error', 'null'), error),
        continued_to = coalesce(c->>'continued_to', continued_to),
        block_reason = c->>'block_reason',
        history_len = history_len + v_nev,
        closed_at = CASE WHEN coalesce(c->>'status', status) IN
                              ('completed', 'failed', 'cancelled', 'terminated',
                               'continued_as_new')
                         THEN v_now ELSE closed_at END,
        lease_expires = NULL,
        wf_ready_at = NULL,
        wf_order = NULL
     WHERE run_id = v_run AND NOT closed
       AND (v_lease IS NULL OR (fence = v_lease AND lease_expires IS NOT NULL))
    RETURNING history_len - v_nev, closed INTO v_base, v_closing;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- One statement for the run's own rows, under the lock taken above (so its snapshot sees
    -- every inbox row of the run).
    IF v_closing THEN
        -- Closing: events appended; the inbox, pending steps, timers and hooks dropped (the
        -- key is released by the index on open runs).
        WITH h AS (
            INSERT INTO {s}.history (run_id, pos, event)
            SELECT v_run, v_base + o - 1, e
              FROM jsonb_array_elements(c->'events') WITH ORDINALITY AS t(e, o)
        ), i AS (
            DELETE FROM {s}.inbox WHERE run_id = v_run
        ), ds AS (
            DELETE FROM {s}.steps WHERE run_id = v_run RETURNING 1
        ), dt AS (
            DELETE FROM {s}.timers WHERE run_id = v_run
        ), dh AS (
            DELETE FROM {s}.hooks WHERE run_id = v_run
        )
        SELECT 0, count(*) INTO steps_new, steps_gone FROM ds;
        flags := '';
        RETURN;
    END IF;
    -- Events appended, inbox consumed, steps added (leased ones stored leased), and whether
    -- inbox entries the activation did not see remain (then the run is queued again).
    WITH h AS (
        INSERT INTO {s}.history (run_id, pos, event)
        SELECT v_run, v_base + o - 1, e
          FROM jsonb_array_elements(c->'events') WITH ORDINALITY AS t(e, o)
    ), i AS (
        DELETE FROM {s}.inbox WHERE run_id = v_run AND id <= v_upto
    ), st AS (
        INSERT INTO {s}.steps AS s (run_id, seq, name, args, attempt, ready_at, lease,
                                    lease_expires, ord)
        SELECT j->>0, (j->>1)::integer, j->>2, j->3, (j->>4)::integer, (j->>5)::float8,
               coalesce((j->>6)::bigint, 0), (j->>7)::float8, nextval('{s}.task_order')
          FROM jsonb_array_elements(c->'steps') WITH ORDINALITY AS t(j, o)
        ON CONFLICT (run_id, seq) DO UPDATE SET
            name = excluded.name, args = excluded.args, attempt = excluded.attempt,
            ready_at = excluded.ready_at, lease = excluded.lease,
            lease_expires = excluded.lease_expires, ord = excluded.ord
        RETURNING s.xmax = 0 AS fresh
    )
    SELECT coalesce((c->>'requeue')::boolean, true)
           AND EXISTS (SELECT 1 FROM {s}.inbox WHERE run_id = v_run AND id > v_upto),
           (SELECT count(*) FILTER (WHERE fresh) FROM st)
      INTO v_more, steps_new;
    steps_gone := 0;
    flags := CASE WHEN c ? 'steps' THEN 's' ELSE '' END;
    IF v_more THEN
        UPDATE {s}.runs SET wf_ready_at = v_now, wf_order = nextval('{s}.task_order')
         WHERE run_id = v_run;
        flags := flags || 'w';
    END IF;
END $$;

-- finish_claim: items [[run_id, seq, lease, event, now, lease seconds or null]...], p_lock the
-- items' run ids sorted (locked first, in that order). Each item is fin's. Returns
-- [[result...], step_info at the latest now if p_info]; a result is 0 stale, 1 delivered,
-- 2 delivered and queued, or [1 or 2, run, inbox] when it claimed.
CREATE FUNCTION {s}.finish_claim(p_items jsonb, p_lock text[], p_origin text, p_info boolean)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    x jsonb;
    v_out jsonb := '[]';
    v_woke boolean := false;
    v_now float8;
    v record;
    v_info jsonb;
BEGIN
    PERFORM 1 FROM {s}.runs WHERE run_id = ANY(p_lock) ORDER BY run_id FOR NO KEY UPDATE;
    FOR x IN SELECT e FROM jsonb_array_elements(p_items) WITH ORDINALITY AS t(e, o) ORDER BY o
    LOOP
        v_now := greatest(v_now, (x->>4)::float8);
        -- (A plain call, not SELECT ... FROM: no executor setup for it.)
        v := {s}.fin(x->>0, (x->>1)::integer, (x->>2)::bigint, x->3, (x->>4)::float8,
                     (x->>5)::float8);
        v_woke := v_woke OR v.code = 2;
        v_out := v_out || CASE WHEN v.run IS NULL THEN to_jsonb(v.code)
                               ELSE jsonb_build_array(jsonb_build_array(v.code, v.run, v.inbox))
                          END;
    END LOOP;
    IF v_woke THEN
        PERFORM {s}.wake('w', p_origin);
    END IF;
    IF p_info THEN
        v_info := {s}.step_info(v_now);
    END IF;
    RETURN jsonb_build_array(v_out, v_info);
END $$;

-- finish1: finish_claim of one item, with typed arguments: fin's code, run and inbox, and
-- step_info at p_now if p_info (the client skips it when it can work out the queue's new
-- state itself).
CREATE FUNCTION {s}.finish1(p_run text, p_seq integer, p_lease bigint, p_event jsonb,
                            p_now float8, p_secs float8, p_origin text, p_info boolean,
                            OUT code integer, OUT run jsonb, OUT inbox jsonb, OUT info jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v record;
BEGIN
    v := {s}.fin(p_run, p_seq, p_lease, p_event, p_now, p_secs);
    code := v.code;
    run := v.run;
    inbox := v.inbox;
    IF code = 2 THEN
        PERFORM pg_advisory_xact_lock_shared({lock});
        PERFORM pg_notify('{chan}', 'w:' || p_origin)
           FROM {s}.listeners WHERE origin <> p_origin LIMIT 1;
    END IF;
    IF p_info THEN
        info := {s}.step_info(p_now);
    END IF;
END $$;

-- commit1: one commit that stays within its run (commit_run), with the wake-up and, if
-- p_info, wf_info at the commit's time.
CREATE FUNCTION {s}.commit1(c jsonb, p_origin text, p_info boolean, OUT flags text,
                            OUT info jsonb, OUT steps_new integer, OUT steps_gone integer)
LANGUAGE plpgsql AS $$
DECLARE
    v record;
BEGIN
    v := {s}.commit_run(c);
    flags := v.flags;
    steps_new := v.steps_new;
    steps_gone := v.steps_gone;
    IF flags IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock_shared({lock});
        PERFORM pg_notify('{chan}', 'r' || flags || ':' || p_origin)
           FROM {s}.listeners WHERE origin <> p_origin LIMIT 1;
    END IF;
    IF p_info THEN
        info := {s}.wf_info((c->>'now')::float8);
    END IF;
END $$;

-- commit_batch: apply_commits with commit_run for the commits that stay within their run
-- (marked by the client with "own": true). Returns [[null (fenced out) or [flags, steps_new,
-- steps_gone] (both null from commit_one)...], wf_info at the latest commit time if p_info].
CREATE FUNCTION {s}.commit_batch(p_docs jsonb, p_lock text[], p_origin text, p_info boolean)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    c jsonb;
    v record;
    v_f text;
    v_new integer;
    v_gone integer;
    v_out jsonb := '[]';
    v_flags text := 'r';
    v_now float8;
    v_info jsonb;
BEGIN
    PERFORM 1 FROM {s}.runs WHERE run_id = ANY(p_lock) ORDER BY run_id FOR NO KEY UPDATE;
    FOR c IN SELECT e FROM jsonb_array_elements(p_docs) WITH ORDINALITY AS t(e, o) ORDER BY o
    LOOP
        v_now := greatest(v_now, (c->>'now')::float8);
        IF c ? 'own' THEN
            v := {s}.commit_run(c);
            v_f := v.flags;
            v_new := v.steps_new;
            v_gone := v.steps_gone;
        ELSE
            v_f := {s}.commit_one(c);
            v_new := NULL;
            v_gone := NULL;
        END IF;
        v_out := v_out || CASE WHEN v_f IS NULL THEN 'null'::jsonb
                               ELSE jsonb_build_array(jsonb_build_array(v_f, v_new, v_gone))
                          END;
        v_flags := v_flags || coalesce(v_f, '');
    END LOOP;
    PERFORM {s}.wake(v_flags, p_origin);
    IF p_info THEN
        v_info := {s}.wf_info(v_now);
    END IF;
    RETURN jsonb_build_array(v_out, v_info);
END $$;

-- claim_wfs2: claim_wfs, plus step_info at p_now when p_sinfo (a worker claims steps right
-- after workflow tasks: this answers that claim too when no step is claimable).
CREATE FUNCTION {s}.claim_wfs2(p_now float8, p_secs float8, p_n integer, p_sinfo boolean)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RETURN {s}.claim_wfs(p_now, p_secs, p_n)
           || jsonb_build_array(CASE WHEN p_sinfo THEN {s}.step_info(p_now) END);
END $$;

-- wf_info / step_info (same answers as version 1's): first look for one claimable task, so a
-- busy queue (one with many tasks ready) answers at once instead of counting up to 501 rows.
CREATE OR REPLACE FUNCTION {s}.wf_info(p_now float8)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v jsonb;
BEGIN
    IF EXISTS (SELECT 1 FROM {s}.runs WHERE wf_ready_at <= p_now
                  AND (lease_expires IS NULL OR lease_expires <= p_now)) THEN
        RETURN NULL;
    END IF;
    SELECT CASE WHEN count(*) > 500 THEN NULL
                ELSE jsonb_build_array(
                         least(min(lease_expires),
                               (SELECT wf_ready_at FROM {s}.runs WHERE wf_ready_at > p_now
                                 ORDER BY wf_ready_at LIMIT 1)),
                         count(*)) END
      INTO v
      FROM (SELECT lease_expires FROM {s}.runs WHERE wf_ready_at <= p_now
             ORDER BY wf_ready_at LIMIT 501) t;
    RETURN v;
END $$;

CREATE OR REPLACE FUNCTION {s}.step_info(p_now float8)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v jsonb;
BEGIN
    IF EXISTS (SELECT 1 FROM {s}.steps WHERE ready_at <= p_now
                  AND (lease_expires IS NULL OR lease_expires <= p_now)) THEN
        RETURN NULL;
    END IF;
    SELECT CASE WHEN count(*) > 500 THEN NULL
                ELSE jsonb_build_array(
                         least(min(lease_expires),
                               (SELECT ready_at FROM {s}.steps WHERE ready_at > p_now
                                 ORDER BY ready_at LIMIT 1)),
                         count(*)) END
      INTO v
      FROM (SELECT lease_expires FROM {s}.steps WHERE ready_at <= p_now
             ORDER BY ready_at LIMIT 501) t;
    RETURN v;
END $$;

-- Plans: every entry point runs with generic plans (planned once per session, not on every
-- call) and without sequential scans. The queue tables stay small but churn, so a planner
-- that sees few pages picks a sequential scan, which then reads every dead row until the next
-- vacuum, and a cached plan keeps doing so as the table grows.
DO $do$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'create_run(jsonb, jsonb, float8, text)', 'append_inbox(text, jsonb, float8, text)',
        'requeue(text, float8, text)', 'claim_wfs(float8, float8, integer)',
        'claim_wfs2(float8, float8, integer, boolean)',
        'claim_steps(float8, integer, float8)', 'finish_steps(jsonb, text[], text)',
        'finish_claim(jsonb, text[], text, boolean)', 'commit_batch(jsonb, text[], text, boolean)',
        'retry_step(text, integer, bigint, integer, float8, text)',
        'fire_timers(float8, integer, text)', 'resume_hook(text, jsonb, float8, text)',
        'apply_commits(jsonb, text[], text)', 'state(float8)', 'commit1(jsonb, text, boolean)',
        'finish1(text, integer, bigint, jsonb, float8, float8, text, boolean)']
    LOOP
        EXECUTE format('ALTER FUNCTION {s}.%s SET enable_seqscan = off', f);
        EXECUTE format('ALTER FUNCTION {s}.%s SET plan_cache_mode = force_generic_plan', f);
    END LOOP;
END $do$;
"""

# -- schema version 3: speculative activation -------------------------------------------------
# No table changes. A step's finish and the activation its outcome causes applied in one
# transaction (``finish_step_and_commit``): spec1 for one call, commit_batch2 for a batch (it is
# commit_batch whose items may also be speculations, and which can return step queue info as
# well). Versions 1 and 2 keep their functions, arguments and results.

V3 = r"""
-- spec: the check and the step finish of a speculative activation. Takes the run's row lock
-- (a batch holds it already). When the run is quiet at p_now -- open, its history p_len events
-- long, its workflow task under no live lease, its inbox empty -- and p_lease holds step
-- (p_run, p_seq), deletes that step task. 0: refused (nothing changed); 1: deleted; 2: deleted,
-- and the run has a workflow task queued (an expired lease's, or one not ready yet), which the
-- commit that follows drops.
CREATE FUNCTION {s}.spec(p_run text, p_seq integer, p_lease bigint, p_len integer,
                         p_now float8)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_queued boolean;
BEGIN
    SELECT wf_ready_at IS NOT NULL INTO v_queued FROM {s}.runs
     WHERE run_id = p_run AND NOT closed AND history_len = p_len
       AND (lease_expires IS NULL OR lease_expires <= p_now)
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    -- A new statement, so a snapshot taken under the lock: it sees every inbox row of the run
    -- (inbox rows are inserted under that lock).
    DELETE FROM {s}.steps
     WHERE run_id = p_run AND seq = p_seq AND lease = p_lease
       AND NOT EXISTS (SELECT 1 FROM {s}.inbox WHERE run_id = p_run);
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    RETURN 1 + v_queued::integer;
END $$;

-- spec_run: a speculative activation whose commit c stays within its run (as commit_run's;
-- c's lease is null and its inbox_upto 0: the client sends it so, and schedules no step of
-- seq p_seq in it). flags NULL when refused (nothing changed), else commit_run's, plus 'q'
-- when a queued workflow task was dropped (spec's 2); steps_new and steps_gone as commit_run's.
-- A commit that does not close the run takes two statements after the lock: the run is quiet,
-- so its inbox is empty and stays so (an inbox row is inserted under the lock we hold).
CREATE FUNCTION {s}.spec_run(c jsonb, p_seq integer, p_lease bigint, p_len integer,
                             OUT flags text, OUT steps_new integer, OUT steps_gone integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_run text := c->>'run_id';
    v_now float8 := (c->>'now')::float8;
    v_nev integer := coalesce(jsonb_array_length(c->'events'), 0);
    v_queued boolean;
    v_done boolean;
    v_q integer;
    v record;
BEGIN
    IF c->>'status' IN ('completed', 'failed', 'cancelled', 'terminated', 'continued_as_new')
    THEN
        -- Closing (once per run): spec, then commit_run, which drops the run's pending work.
        v_q := {s}.spec(v_run, p_seq, p_lease, p_len, v_now);
        IF v_q > 0 THEN
            v := {s}.commit_run(c);
            flags := v.flags || CASE WHEN v_q = 2 THEN 'q' ELSE '' END;
            steps_new := v.steps_new;
            steps_gone := v.steps_gone;
        END IF;
        RETURN;
    END IF;
    SELECT wf_ready_at IS NOT NULL INTO v_queued FROM {s}.runs
     WHERE run_id = v_run AND NOT closed AND history_len = p_len
       AND (lease_expires IS NULL OR lease_expires <= v_now)
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- Under the lock (a new snapshot): the step finished if held and the inbox empty, and only
    -- then the commit applied as commit_run applies it with no lease (fence bumped, lease and
    -- queued task dropped; no inbox to consume, nothing to requeue).
    WITH d AS (
        DELETE FROM {s}.steps
         WHERE run_id = v_run AND seq = p_seq AND lease = p_lease
           AND NOT EXISTS (SELECT 1 FROM {s}.inbox WHERE run_id = v_run)
        RETURNING 1
    ), u AS (
        UPDATE {s}.runs SET
            fence = fence + 1,
            status = coalesce(c->>'status', status),
            result = coalesce(nullif(c->'result', 'null'), result),
            error = coalesce(nullif(c->'error', 'null'), error),
            continued_to = coalesce(c->>'continued_to', continued_to),
            block_reason = c->>'block_reason',
            history_len = history_len + v_nev,
            lease_expires = NULL,
            wf_ready_at = NULL,
            wf_order = NULL
         WHERE run_id = v_run AND EXISTS (SELECT 1 FROM d)
        RETURNING history_len - v_nev AS base
    ), h AS (
        INSERT INTO {s}.history (run_id, pos, event)
        SELECT v_run, u.base + o - 1, e
          FROM u, jsonb_array_elements(c->'events') WITH ORDINALITY AS t(e, o)
    ), st AS (
        INSERT INTO {s}.steps AS s (run_id, seq, name, args, attempt, ready_at, lease,
                                    lease_expires, ord)
        SELECT j->>0, (j->>1)::integer, j->>2, j->3, (j->>4)::integer, (j->>5)::float8,
               coalesce((j->>6)::bigint, 0), (j->>7)::float8, nextval('{s}.task_order')
          FROM u, jsonb_array_elements(c->'steps') WITH ORDINALITY AS t(j, o)
        ON CONFLICT (run_id, seq) DO UPDATE SET
            name = excluded.name, args = excluded.args, attempt = excluded.attempt,
            ready_at = excluded.ready_at, lease = excluded.lease,
            lease_expires = excluded.lease_expires, ord = excluded.ord
        RETURNING s.xmax = 0 AS fresh
    )
    SELECT EXISTS (SELECT 1 FROM u), (SELECT count(*) FILTER (WHERE fresh) FROM st)
      INTO v_done, steps_new;
    IF NOT v_done THEN
        steps_new := NULL;
        RETURN;
    END IF;
    steps_gone := 0;
    flags := CASE WHEN c ? 'steps' THEN 's' ELSE '' END || CASE WHEN v_queued THEN 'q' ELSE '' END;
END $$;

-- spec_one: a speculative activation in a batch, c a commit doc with "spec": [seq, lease,
-- history length]: spec_run if c has "own", else spec and then commit_one (flags as there,
-- plus 'q' as spec_run's; steps_new and steps_gone NULL).
CREATE FUNCTION {s}.spec_one(c jsonb, OUT flags text, OUT steps_new integer,
                             OUT steps_gone integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_q integer;
    v record;
BEGIN
    IF c ? 'own' THEN
        v := {s}.spec_run(c, (c#>>'{{spec,0}}')::integer, (c#>>'{{spec,1}}')::bigint,
                          (c#>>'{{spec,2}}')::integer);
        flags := v.flags;
        steps_new := v.steps_new;
        steps_gone := v.steps_gone;
        RETURN;
    END IF;
    v_q := {s}.spec(c->>'run_id', (c#>>'{{spec,0}}')::integer, (c#>>'{{spec,1}}')::bigint,
                    (c#>>'{{spec,2}}')::integer, (c->>'now')::float8);
    IF v_q > 0 THEN
        flags := {s}.commit_one(c) || CASE WHEN v_q = 2 THEN 'q' ELSE '' END;
    END IF;
END $$;

-- spec1: spec_run with typed arguments, the wake-up as commit1's, and if asked wf_info
-- (p_winfo) and step_info (p_sinfo) at the commit's time, as info [wf_info, step_info].
CREATE FUNCTION {s}.spec1(c jsonb, p_seq integer, p_lease bigint, p_len integer,
                          p_origin text, p_winfo boolean, p_sinfo boolean,
                          OUT flags text, OUT info jsonb, OUT steps_new integer,
                          OUT steps_gone integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_now float8 := (c->>'now')::float8;
    v record;
BEGIN
    v := {s}.spec_run(c, p_seq, p_lease, p_len);
    flags := v.flags;
    steps_new := v.steps_new;
    steps_gone := v.steps_gone;
    IF flags IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock_shared({lock});
        PERFORM pg_notify('{chan}', 'r' || replace(flags, 'q', '') || ':' || p_origin)
           FROM {s}.listeners WHERE origin <> p_origin LIMIT 1;
    END IF;
    IF p_winfo OR p_sinfo THEN
        info := jsonb_build_array(CASE WHEN p_winfo THEN {s}.wf_info(v_now) END,
                                  CASE WHEN p_sinfo THEN {s}.step_info(v_now) END);
    END IF;
END $$;

-- commit_batch2: commit_batch whose docs may be speculations (a doc with "spec", applied by
-- spec_one). Returns [[null (fenced out or refused) or [flags, steps_new, steps_gone]...],
-- wf_info if p_winfo, step_info if p_sinfo], both at the latest commit time.
CREATE FUNCTION {s}.commit_batch2(p_docs jsonb, p_lock text[], p_origin text,
                                  p_winfo boolean, p_sinfo boolean)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    c jsonb;
    v record;
    v_f text;
    v_new integer;
    v_gone integer;
    v_out jsonb := '[]';
    v_flags text := 'r';
    v_now float8;
BEGIN
    PERFORM 1 FROM {s}.runs WHERE run_id = ANY(p_lock) ORDER BY run_id FOR NO KEY UPDATE;
    FOR c IN SELECT e FROM jsonb_array_elements(p_docs) WITH ORDINALITY AS t(e, o) ORDER BY o
    LOOP
        v_now := greatest(v_now, (c->>'now')::float8);
        IF c ? 'spec' THEN
            v := {s}.spec_one(c);
            v_f := v.flags;
            v_new := v.steps_new;
            v_gone := v.steps_gone;
        ELSIF c ? 'own' THEN
            v := {s}.commit_run(c);
            v_f := v.flags;
            v_new := v.steps_new;
            v_gone := v.steps_gone;
        ELSE
            v_f := {s}.commit_one(c);
            v_new := NULL;
            v_gone := NULL;
        END IF;
        v_out := v_out || CASE WHEN v_f IS NULL THEN 'null'::jsonb
                               ELSE jsonb_build_array(jsonb_build_array(v_f, v_new, v_gone))
                          END;
        v_flags := v_flags || replace(coalesce(v_f, ''), 'q', '');
    END LOOP;
    PERFORM {s}.wake(v_flags, p_origin);
    RETURN jsonb_build_array(v_out, CASE WHEN p_winfo THEN {s}.wf_info(v_now) END,
                             CASE WHEN p_sinfo THEN {s}.step_info(v_now) END);
END $$;

DO $do$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'spec1(jsonb, integer, bigint, integer, text, boolean, boolean)',
        'commit_batch2(jsonb, text[], text, boolean, boolean)']
    LOOP
        EXECUTE format('ALTER FUNCTION {s}.%s SET enable_seqscan = off', f);
        EXECUTE format('ALTER FUNCTION {s}.%s SET plan_cache_mode = force_generic_plan', f);
    END LOOP;
END $do$;
"""

# -- schema version 4: eager start ------------------------------------------------------------
# No table changes. ``create_run_and_claim``: a run created with its workflow task already
# claimed, in one statement (create_claim). Versions 1 to 3 keep their functions, arguments and
# results.

V4 = r"""
-- create_claim: create_run, and when it created the run, its workflow task claimed as
-- claim_wfs would, in the same INSERT: fence 1 (0 bumped once), leased until p_now + p_secs.
-- actual and created as create_run's; when created, run (as claim_wfs's: [RUN_COLS..., fence,
-- history_len, has children]) and inbox ([[id, event]...], the rows just inserted). The task is
-- leased to the caller, so no listener is woken for it; but what they remember of the
-- workflow queue (leased tasks, when one becomes claimable) moved: NOTIFY 'l' makes them forget
-- it without waking anyone.
CREATE FUNCTION {s}.create_claim(r jsonb, p_inbox jsonb, p_now float8, p_secs float8,
                                 p_origin text, OUT actual text, OUT created boolean,
                                 OUT run jsonb, OUT inbox jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_run text := r->>'run_id';
    v_key text := r->>'key';
    v_n integer := jsonb_array_length(p_inbox);
BEGIN
    created := false;
    LOOP
        INSERT INTO {s}.runs AS n (run_id, workflow, status, created_at, key, parent_run_id,
                                   parent_seq, parent_close, queue, result, error, closed_at,
                                   continued_to, block_reason, wf_ready_at, wf_order, fence,
                                   lease_expires)
        VALUES (v_run, r->>'workflow', r->>'status', (r->>'created_at')::float8, v_key,
                r->>'parent_run_id', (r->>'parent_seq')::integer, r->>'parent_close',
                r->>'queue', nullif(r->'result', 'null'), nullif(r->'error', 'null'),
                (r->>'closed_at')::float8, r->>'continued_to', r->>'block_reason',
                CASE WHEN v_n > 0 THEN p_now END,
                CASE WHEN v_n > 0 THEN nextval('{s}.task_order') END,
                1, p_now + p_secs)
        ON CONFLICT DO NOTHING
        -- A new run has no children: they are made by its commits, which need its lease.
        RETURNING jsonb_build_array(
            n.run_id, n.workflow, n.status, n.created_at, n.key, n.parent_run_id, n.parent_seq,
            n.parent_close, n.queue, n.result, n.error, n.closed_at, n.continued_to,
            n.block_reason, n.fence, n.history_len, false)
        INTO run;
        IF FOUND THEN
            actual := v_run;
            created := true;
            WITH i AS (
                INSERT INTO {s}.inbox (run_id, event)
                SELECT v_run, e FROM jsonb_array_elements(p_inbox) WITH ORDINALITY AS t(e, o)
                 ORDER BY o
                RETURNING id, event
            )
            SELECT coalesce(jsonb_agg(jsonb_build_array(i.id, i.event) ORDER BY i.id), '[]')
              INTO inbox FROM i;
            IF v_n > 0 THEN
                PERFORM pg_advisory_xact_lock_shared({lock});
                PERFORM pg_notify('{chan}', 'l:' || p_origin)
                   FROM {s}.listeners WHERE origin <> p_origin LIMIT 1;
            END IF;
            RETURN;
        END IF;
        IF v_key IS NOT NULL THEN
            SELECT n.run_id INTO actual FROM {s}.runs n WHERE n.key = v_key AND NOT n.closed;
            IF FOUND THEN
                RETURN;
            END IF;
        END IF;
        IF EXISTS (SELECT 1 FROM {s}.runs n WHERE n.run_id = v_run) THEN
            actual := v_run;
            RETURN;
        END IF;
        -- the key holder closed in between: try again
    END LOOP;
END $$;

ALTER FUNCTION {s}.create_claim(jsonb, jsonb, float8, float8, text) SET enable_seqscan = off;
ALTER FUNCTION {s}.create_claim(jsonb, jsonb, float8, float8, text)
    SET plan_cache_mode = force_generic_plan;
"""

# -- schema version 5: start with commit ------------------------------------------------------
# No table changes. ``create_run_and_commit``: a run created with its first activation's commit
# already applied, in one call (create_commit). Versions 1 to 4 keep their functions, arguments
# and results.

V5 = r"""
-- create_commit: create_run with an empty inbox and, when it created the run, c applied to it
-- in the same transaction as a forced commit is applied (the client sends c with a null lease
-- and inbox_upto 0): its first, so the fence goes from 0 to 1. commit_run applies c when it has
-- "own" (it writes to its run only); otherwise commit_one does, after p_lock (the other
-- existing runs c writes to, sorted) are locked, in that order, as a batch locks its runs. The
-- new run's row is the transaction's own until it commits: nobody else can lock or claim it.
-- actual and created as create_run's; when created, flags, steps_new and steps_gone as
-- commit_run's (from commit_one: its flags, both counts null). When nothing was created (the
-- key is held, the id exists) nothing is written, not even c's steps, deliveries or new runs,
-- and flags is null. The run has no workflow task queued unless c delivers to it (then flags
-- has 'w'). NOTIFY: c's flags, when there are any, as a commit raises them but without 'r':
-- nobody remembers the record of a run that did not exist.
CREATE FUNCTION {s}.create_commit(r jsonb, c jsonb, p_lock text[], p_origin text,
                                  OUT actual text, OUT created boolean, OUT flags text,
                                  OUT steps_new integer, OUT steps_gone integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_run text := r->>'run_id';
    v_key text := r->>'key';
    v record;
BEGIN
    created := false;
    IF cardinality(p_lock) > 0 THEN
        PERFORM 1 FROM {s}.runs WHERE run_id = ANY(p_lock) ORDER BY run_id FOR NO KEY UPDATE;
    END IF;
    LOOP
        INSERT INTO {s}.runs (run_id, workflow, status, created_at, key, parent_run_id,
                              parent_seq, parent_close, queue, result, error, closed_at,
                              continued_to, block_reason)
        VALUES (v_run, r->>'workflow', r->>'status', (r->>'created_at')::float8, v_key,
                r->>'parent_run_id', (r->>'parent_seq')::integer, r->>'parent_close',
                r->>'queue', nullif(r->'result', 'null'), nullif(r->'error', 'null'),
                (r->>'closed_at')::float8, r->>'continued_to', r->>'block_reason')
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            actual := v_run;
            created := true;
            IF c ? 'own' THEN
                v := {s}.commit_run(c);
                flags := v.flags;
                steps_new := v.steps_new;
                steps_gone := v.steps_gone;
            ELSE
                flags := {s}.commit_one(c);
            END IF;
            IF flags <> '' THEN
                PERFORM {s}.wake(flags, p_origin);
            END IF;
            RETURN;
        END IF;
        IF v_key IS NOT NULL THEN
            SELECT n.run_id INTO actual FROM {s}.runs n WHERE n.key = v_key AND NOT n.closed;
            IF FOUND THEN
                RETURN;
            END IF;
        END IF;
        IF EXISTS (SELECT 1 FROM {s}.runs n WHERE n.run_id = v_run) THEN
            actual := v_run;
            RETURN;
        END IF;
        -- the key holder closed in between: try again
    END LOOP;
END $$;

ALTER FUNCTION {s}.create_commit(jsonb, jsonb, text[], text) SET enable_seqscan = off;
ALTER FUNCTION {s}.create_commit(jsonb, jsonb, text[], text)
    SET plan_cache_mode = force_generic_plan;
"""
