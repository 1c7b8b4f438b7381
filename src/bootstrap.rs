//! Schema objects created by `CREATE EXTENSION pg_trickle`, before (bootstrap) and
//! after (finalize) the SQL functions pgrx generates from `#[pg_extern]`s.
//!
//! The catalog lives in schema `pgtrickle`; change buffers in `pgtrickle_changes`.
//! Both are created here and so belong to the extension. Everyone may read the
//! catalog; only pg_trickle's own code writes it (as the extension owner).

pgrx::extension_sql!(
    r#"
-- The API and catalog schema. Created here (not through the control file's
-- "schema" key, which creates it before the extension exists) so that it is a
-- member of the extension and DROP EXTENSION removes it. Readable by everyone:
-- users call the API and read the catalog.
CREATE SCHEMA pgtrickle;
GRANT USAGE ON SCHEMA pgtrickle TO PUBLIC;

-- Change buffers and capture functions: pg_trickle's alone.
CREATE SCHEMA pgtrickle_changes;
REVOKE ALL ON SCHEMA pgtrickle_changes FROM PUBLIC;
-- Owners of DIFFERENTIAL stream tables are granted SELECT on the buffers of
-- their sources; they need USAGE to reach them. Nobody else has any privilege
-- on the buffers themselves.
GRANT USAGE ON SCHEMA pgtrickle_changes TO PUBLIC;

-- Intermediate state of stream tables whose operators keep one (an aggregate
-- in a subquery: src/storage.rs, pgt_delta::node): pg_trickle's tables; the
-- owner of each stream table is granted what its refreshes need on its own.
CREATE SCHEMA pgtrickle_state;
REVOKE ALL ON SCHEMA pgtrickle_state FROM PUBLIC;
GRANT USAGE ON SCHEMA pgtrickle_state TO PUBLIC;

-- One row per stream table.
CREATE TABLE pgtrickle.pgt_stream_tables (
    pgt_id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pgt_relid                 oid NOT NULL UNIQUE,
    defining_query            text NOT NULL,
    original_query            text NOT NULL,
    schedule                  text NOT NULL,
    refresh_mode              text NOT NULL
        CHECK (refresh_mode IN ('AUTO', 'FULL', 'DIFFERENTIAL', 'IMMEDIATE')),
    effective_refresh_mode    text NOT NULL
        CHECK (effective_refresh_mode IN ('FULL', 'DIFFERENTIAL', 'IMMEDIATE')),
    status                    text NOT NULL DEFAULT 'ACTIVE'
        CHECK (status IN ('ACTIVE', 'SUSPENDED')),
    is_populated              boolean NOT NULL DEFAULT false,
    diamond_consistency       text NOT NULL DEFAULT 'atomic'
        CHECK (diamond_consistency IN ('atomic', 'none')),
    diamond_schedule_policy   text NOT NULL DEFAULT 'fastest'
        CHECK (diamond_schedule_policy IN ('fastest', 'slowest')),
    cdc_mode                  text CHECK (cdc_mode IN ('auto', 'trigger', 'wal')),
    append_only               boolean NOT NULL DEFAULT false,
    pooler_compatibility_mode boolean NOT NULL DEFAULT false,
    delta_plan                text,
    query_tree                text,
    needs_reinit              boolean NOT NULL DEFAULT false,
    differential_blocker      text,
    frontier                  pg_catalog.pg_snapshot,
    frontier_xid              pg_catalog.xid8,
    frontier_cid              bigint,
    data_timestamp            timestamptz,
    last_refresh_at           timestamptz,
    consecutive_errors        integer NOT NULL DEFAULT 0,
    -- Measured costs AUTO chooses between DIFFERENTIAL and FULL by
    -- (crate::refresh::differential): the last full recomputation, ms; the
    -- differential refreshes' time per changed row (moving average), ms.
    full_refresh_ms           double precision,
    differential_ms_per_change double precision,
    created_at                timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at                timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- The format of the stored state (delta_plan, row identities, state
    -- tables) of the build that wrote it (crate::refresh::STATE_FORMAT): a
    -- refresh by a build of a newer format reinitializes the stream table.
    -- Rows from before 0.2.0 have 1 (sql/pg_trickle--0.1.0--0.2.0.sql).
    state_format              integer NOT NULL DEFAULT 2
);
COMMENT ON TABLE pgtrickle.pgt_stream_tables IS 'pg_trickle: one row per stream table';
COMMENT ON COLUMN pgtrickle.pgt_stream_tables.delta_plan IS
    'The DIFFERENTIAL operator tree (JSON), rebuilt with every full recomputation';
COMMENT ON COLUMN pgtrickle.pgt_stream_tables.query_tree IS
    'The analysed defining query (nodeToString): deparsed again after a source is renamed';
COMMENT ON COLUMN pgtrickle.pgt_stream_tables.needs_reinit IS
    'DDL changed something the query reads: the next refresh re-derives the query, plan and storage types and recomputes';
COMMENT ON COLUMN pgtrickle.pgt_stream_tables.differential_blocker IS
    'Why AUTO refreshes FULL although the query is differentiable: what the owner may not do (read a source in full, bypass its row-level security, start capture); checked again at every refresh';
COMMENT ON COLUMN pgtrickle.pgt_stream_tables.frontier IS
    'Snapshot the contents reflect: changes by transactions visible in it are applied';
COMMENT ON COLUMN pgtrickle.pgt_stream_tables.frontier_xid IS
    'The refreshing transaction''s own xid: its changes with command id < frontier_cid are applied too';

-- Relations each stream table reads (views and the base tables beneath them).
CREATE TABLE pgtrickle.pgt_dependencies (
    pgt_id       bigint NOT NULL REFERENCES pgtrickle.pgt_stream_tables ON DELETE CASCADE,
    source_relid oid NOT NULL,
    source_kind  text NOT NULL
        CHECK (source_kind IN ('TABLE', 'PARTITIONED_TABLE', 'VIEW', 'STREAM_TABLE')),
    is_direct    boolean NOT NULL,
    columns_read smallint[],
    source_signature text,
    PRIMARY KEY (pgt_id, source_relid)
);
COMMENT ON COLUMN pgtrickle.pgt_dependencies.columns_read IS
    'Attribute numbers of the columns the stream table relies on (read by the query, or its key); NULL: the whole row';
COMMENT ON COLUMN pgtrickle.pgt_dependencies.source_signature IS
    'pgtrickle._source_signature(source_relid, columns_read) when recorded: DDL that changes it concerns the stream table';
CREATE INDEX ON pgtrickle.pgt_dependencies (source_relid);

-- Sources whose changes are captured, with their change buffer.
CREATE TABLE pgtrickle.pgt_change_tracking (
    source_relid     oid PRIMARY KEY,
    source_name      text NOT NULL,
    buffer_relid     oid NOT NULL,
    capture_function oid NOT NULL,
    column_signature text NOT NULL,
    captured_attnums smallint[],
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- One row per IMMEDIATE stream table: the statements maintaining it update
-- its row first (refresh/immediate.rs), so concurrent writers of its sources
-- serialize on the row lock, and a REPEATABLE READ or SERIALIZABLE writer
-- whose snapshot misses a concurrent maintenance fails with a serialization
-- error instead of applying a delta to stale contents.
CREATE TABLE pgtrickle.pgt_immediate_sync (
    pgt_id        bigint PRIMARY KEY REFERENCES pgtrickle.pgt_stream_tables ON DELETE CASCADE,
    maintained_by xid8
) WITH (fillfactor = 50);

-- Every refresh.
CREATE TABLE pgtrickle.pgt_refresh_history (
    refresh_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pgt_id        bigint NOT NULL REFERENCES pgtrickle.pgt_stream_tables ON DELETE CASCADE,
    start_time    timestamptz NOT NULL,
    end_time      timestamptz,
    action        text NOT NULL CHECK (action IN ('FULL', 'DIFFERENTIAL', 'IMMEDIATE', 'SKIP')),
    rows_inserted bigint,
    rows_deleted  bigint,
    status        text NOT NULL CHECK (status IN ('SUCCESS', 'FAILED', 'SKIPPED')),
    error_message text,
    initiated_by  text NOT NULL CHECK (initiated_by IN ('MANUAL', 'SCHEDULER', 'INITIAL')),
    frontier      pg_catalog.pg_snapshot
);
CREATE INDEX ON pgtrickle.pgt_refresh_history (pgt_id, start_time);

-- Cumulative refresh counters per stream table, refresh mode, initiator and
-- outcome, since the stream table was created: what the metrics report as
-- counters (pgtrickle.metrics_refreshes). Unlike the history, never pruned.
CREATE TABLE pgtrickle.pgt_refresh_stats (
    pgt_id        bigint NOT NULL REFERENCES pgtrickle.pgt_stream_tables ON DELETE CASCADE,
    action        text NOT NULL,
    initiated_by  text NOT NULL,
    status        text NOT NULL,
    refreshes     bigint NOT NULL,
    rows_inserted bigint NOT NULL,
    rows_deleted  bigint NOT NULL,
    seconds       double precision NOT NULL,
    PRIMARY KEY (pgt_id, action, initiated_by, status)
);

-- What a stream table relies on in relation `relid` when it reads `columns`
-- (attribute numbers; NULL: every column): the relation's name, and each of
-- those columns' number, name, type (OID and modifier: renaming a type changes
-- nothing) and collation; for a view, its definition.
-- A stream table is concerned by DDL on a source exactly when this changes
-- (docs/SQL_REFERENCE.md, "Source DDL"). Names are quoted and schema-qualified
-- under a pinned search_path, so the text is stable.
CREATE FUNCTION pgtrickle._source_signature(relid oid, columns smallint[]) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
        || coalesce((SELECT pg_catalog.string_agg('|' || a.attnum || ':' || pg_catalog.quote_ident(a.attname) || ':'
                                                  || a.atttypid || ':' || a.atttypmod || ':' || a.attcollation,
                                                  '' ORDER BY a.attnum)
                     FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                       AND (columns IS NULL OR a.attnum = ANY (columns))), '')
        || CASE WHEN c.relkind = 'v' THEN '|view:' || pg_catalog.pg_get_viewdef(c.oid) ELSE '' END
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = relid
$$;

CREATE INDEX ON pgtrickle.pgt_refresh_history (pgt_id, refresh_id);

-- Everyone may read the catalog, except what may hold another role's data: the
-- query as its owner typed it (comments included; defining_query is the
-- normalized text, like pg_matviews.definition) and the error text of failed
-- refreshes, which can quote source values (a bad cast). Those are shown, by
-- pg_stat_stream_tables and refresh_history(), only to roles that may read
-- every source or that have the owner's privileges (_may_see_refresh_errors).
GRANT SELECT ON pgtrickle.pgt_dependencies, pgtrickle.pgt_change_tracking TO PUBLIC;
GRANT SELECT (pgt_id, pgt_relid, defining_query, schedule, refresh_mode, effective_refresh_mode, status,
              is_populated, diamond_consistency, diamond_schedule_policy, cdc_mode, append_only,
              pooler_compatibility_mode, delta_plan, query_tree, needs_reinit, differential_blocker, frontier, frontier_xid,
              frontier_cid, data_timestamp, last_refresh_at, consecutive_errors, created_at, updated_at, state_format)
    ON pgtrickle.pgt_stream_tables TO PUBLIC;
GRANT SELECT (refresh_id, pgt_id, start_time, end_time, action, rows_inserted, rows_deleted, status,
              initiated_by, frontier)
    ON pgtrickle.pgt_refresh_history TO PUBLIC;
GRANT SELECT ON pgtrickle.pgt_refresh_stats TO PUBLIC;

-- Whether the current role may see the error text of stream table `st`'s
-- refreshes: it has the privileges of the stream table's owner (or is a
-- superuser), or it may read every relation the stream table reads, without
-- row-level security hiding rows from it. A stream table that reads no
-- relation (its values come from functions) shows errors to its owner only.
CREATE FUNCTION pgtrickle._may_see_refresh_errors(st oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE')
        OR (EXISTS (SELECT 1 FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables s USING (pgt_id)
                    WHERE s.pgt_relid = st)
            AND NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_dependencies d
                            JOIN pgtrickle.pgt_stream_tables s USING (pgt_id)
                            WHERE s.pgt_relid = st
                              AND (NOT pg_catalog.has_table_privilege(d.source_relid, 'SELECT')
                                   OR pg_catalog.row_security_active(d.source_relid))))
    FROM pg_catalog.pg_class c WHERE c.oid = st
$$;

-- The row-level security policy of every change buffer (cdc.rs): a buffer
-- holds every row and column its source had, so reading it requires, at the
-- moment of reading, exactly what reading all of the source requires: SELECT
-- on the table, and no row-level security applying. The grants on buffers only
-- name who needs them; this decides. It raises an error rather than hide rows,
-- so a refresh can never mistake a denied read for an empty change window.
CREATE FUNCTION pgtrickle._may_read_changes(source oid) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT pg_catalog.has_table_privilege(source, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for the change buffer of %', source::pg_catalog.regclass
            USING ERRCODE = '42501',
                  DETAIL = 'A change buffer holds the rows of its table; reading it requires SELECT on the table.';
    END IF;
    IF pg_catalog.row_security_active(source) THEN
        RAISE EXCEPTION 'permission denied for the change buffer of %', source::pg_catalog.regclass
            USING ERRCODE = '42501',
                  DETAIL = 'Row-level security on the table applies to role ' || current_user
                           || '; its change buffer holds every row.';
    END IF;
    RETURN true;
END
$$;

-- Raised by a scalar subquery that a stream table reads through a child
-- operator (pg_trickle's state for the subquery groups equal rows): the same
-- error PostgreSQL raises when such a subquery returns more than one row.
-- STABLE, not IMMUTABLE: the planner must not fold a call it may never reach.
CREATE FUNCTION pgtrickle._more_than_one_row(anyelement) RETURNS anyelement
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'more than one row returned by a subquery used as an expression' USING ERRCODE = '21000';
END
$$;

-- Raised when the recursion of a WITH RECURSIVE ... UNION ALL stream table
-- goes deeper than pg_trickle.ivm_recursive_max_depth (data with a cycle
-- recurses forever). STABLE: the planner must not fold a call it may never reach.
CREATE FUNCTION pgtrickle._recursion_too_deep(integer) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'the recursion of a WITH RECURSIVE ... UNION ALL query went deeper than pg_trickle.ivm_recursive_max_depth (%)', $1
        USING ERRCODE = '54001',
              DETAIL = 'UNION ALL recursion over data with a cycle never ends, in PostgreSQL''s own evaluation as in a refresh.',
              HINT = 'Write UNION to stop at rows already found, or raise pg_trickle.ivm_recursive_max_depth and alter the stream table.';
END
$$;

"#,
    name = "catalog",
    bootstrap
);

pgrx::extension_sql!(
    r#"
-- Internal entry points: not for PUBLIC.
REVOKE ALL ON FUNCTION pgtrickle._on_relations_dropped(oid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle._on_relations_changed(oid[], boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle._on_objects_changed(text, oid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle._wake_scheduler() FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle._on_privileges_changed() FROM PUBLIC;

-- IMMEDIATE maintenance (refresh/immediate.rs): statement-level triggers on
-- the sources of IMMEDIATE stream tables. SECURITY DEFINER: they read
-- pg_trickle's catalog and take maintenance rows whoever writes; the
-- maintenance itself runs as each stream table's owner.
CREATE FUNCTION pgtrickle._immediate_before() RETURNS trigger
LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'immediate_before_wrapper';
CREATE FUNCTION pgtrickle._immediate_after() RETURNS trigger
LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'immediate_after_wrapper';
REVOKE ALL ON FUNCTION pgtrickle._immediate_before() FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle._immediate_after() FROM PUBLIC;

-- Change capture (cdc.rs): every capture trigger calls this with its
-- source's OID, and it hands the statement to that source's capture function
-- in pgtrickle_changes. Triggers restored from a dump of another database
-- call it with that database's OIDs, and it does nothing for them.
CREATE FUNCTION pgtrickle._capture_changes() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'capture_changes_wrapper';
REVOKE ALL ON FUNCTION pgtrickle._capture_changes() FROM PUBLIC;

-- The guard trigger of every stream table (storage.rs): only a refresh writes
-- a stream table, as only REFRESH writes a materialized view. Runs as whoever
-- writes, so it is executable by everyone; what it checks cannot be set from
-- SQL.
CREATE FUNCTION pgtrickle._guard_stream_table() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT pgtrickle._stream_table_write_in_progress() THEN
        -- A COPY into a stream table, as a data-only restore runs: the rows
        -- are loaded and the stream table marked for reinitialization
        -- (src/restore.rs), so that they do not outlive its next refresh.
        IF TG_OP = 'INSERT' AND TG_NARGS = 1 AND pg_catalog.current_query() ~* '^\s*COPY\s' THEN
            PERFORM pgtrickle._stream_table_contents_loaded(TG_RELID);
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'cannot change % %.%',
                        CASE WHEN TG_TABLE_SCHEMA = 'pgtrickle_state' THEN 'pg_trickle state table' ELSE 'stream table' END,
                        pg_catalog.quote_ident(TG_TABLE_SCHEMA), pg_catalog.quote_ident(TG_TABLE_NAME)
            USING ERRCODE = '42809',
                  DETAIL = 'Its contents are the result of its defining query; pg_trickle''s refreshes write them.',
                  HINT = 'Change its sources, or its query with pgtrickle.alter_stream_table().';
    END IF;
    RETURN NULL;
END
$$;

-- Whether any of relations `relids`, or a partitioned table one of them is a
-- partition of, is a captured source: the event triggers call into Rust only then.
CREATE FUNCTION pgtrickle._any_captured(relids oid[]) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM pgtrickle.pgt_change_tracking ct
                   WHERE ct.source_relid = ANY (relids)
                      OR ct.source_relid IN (SELECT a.relid
                                             FROM pg_catalog.unnest(relids) r(relid),
                                                  pg_catalog.pg_partition_ancestors(r.relid) a))
$$;
REVOKE ALL ON FUNCTION pgtrickle._any_captured(oid[]) FROM PUBLIC;

-- Keeps the catalog true when relations are dropped behind pg_trickle's back
-- (DROP TABLE of a stream table, DROP ... CASCADE, DROP SCHEMA ... CASCADE,
-- DROP OWNED). Runs for every role's DROP, so it must never fail for anyone:
-- SECURITY DEFINER with a pinned search_path, and it reads only
-- pg_event_trigger_dropped_objects() and our catalog unless one of our objects
-- is among the dropped.
CREATE FUNCTION pgtrickle._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dropped oid[];
    lost_columns oid[];
    changed oid[];
BEGIN
    SELECT pg_catalog.array_agg(d.objid) FILTER (WHERE d.objsubid = 0),
           pg_catalog.array_agg(DISTINCT d.objid) FILTER (WHERE d.objsubid <> 0)
      INTO dropped, lost_columns
    FROM pg_catalog.pg_event_trigger_dropped_objects() d
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass;
    IF dropped IS NOT NULL
       AND (EXISTS (SELECT 1 FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = ANY (dropped))
            OR EXISTS (SELECT 1 FROM pgtrickle.pgt_change_tracking WHERE source_relid = ANY (dropped))) THEN
        PERFORM pgtrickle._on_relations_dropped(dropped);
    END IF;
    -- Columns dropped by a cascade (DROP TYPE ... CASCADE, DROP EXTENSION ...
    -- CASCADE) from tables that survive: capture must follow. (ALTER TABLE ...
    -- DROP COLUMN is handled at ddl_command_end.)
    IF lost_columns IS NOT NULL AND TG_TAG NOT IN ('ALTER TABLE', 'ALTER TYPE') THEN
        lost_columns := ARRAY(SELECT c FROM pg_catalog.unnest(lost_columns) c
                              WHERE dropped IS NULL OR c <> ALL (dropped));
        IF pgtrickle._any_captured(lost_columns) THEN
            PERFORM pgtrickle._on_relations_changed(lost_columns, false, TG_TAG);
        END IF;
    END IF;
    -- DROP INDEX alone (its table is no longer known here) may remove the key a
    -- differential plan identifies rows by: re-check every captured source.
    -- (ALTER TABLE ... DROP CONSTRAINT is checked at ddl_command_end.)
    IF TG_TAG = 'DROP INDEX' AND EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_dropped_objects() d WHERE d.object_type = 'index')
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_dropped_objects() d
                       WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                         AND d.objsubid = 0 AND d.object_type <> 'index') THEN
        changed := ARRAY(SELECT ct.source_relid FROM pgtrickle.pgt_change_tracking ct
                         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = ct.source_relid));
        IF pg_catalog.cardinality(changed) > 0 THEN
            PERFORM pgtrickle._on_relations_changed(changed, false, TG_TAG);
        END IF;
    END IF;
    -- A capture trigger or a stream table's guard trigger dropped by the owner
    -- of its table (DROP TRIGGER): put back before the statement returns, so no
    -- write goes uncaptured and no stream table becomes writable. (A trigger
    -- dropped with its table has no table left to put it on.)
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_dropped_objects() d WHERE d.object_type = 'trigger') THEN
        changed := ARRAY(SELECT DISTINCT t.relid FROM (
                           SELECT pg_catalog.to_regclass(pg_catalog.quote_ident(d.address_names[1]) || '.'
                                                         || pg_catalog.quote_ident(d.address_names[2]))::pg_catalog.oid AS relid
                           FROM pg_catalog.pg_event_trigger_dropped_objects() d
                           WHERE d.object_type = 'trigger'
                             AND (d.address_names[3] LIKE 'pgt\_cdc\_%' OR d.address_names[3] = 'pgt_stream_table_guard')) t
                         WHERE t.relid IS NOT NULL);
        IF pg_catalog.cardinality(changed) > 0
           AND (pgtrickle._any_captured(changed)
                OR EXISTS (SELECT 1 FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = ANY (changed))) THEN
            PERFORM pgtrickle._on_relations_changed(changed, false, TG_TAG);
        END IF;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION pgtrickle._on_sql_drop() FROM PUBLIC;
CREATE EVENT TRIGGER pgtrickle_sql_drop ON sql_drop EXECUTE FUNCTION pgtrickle._on_sql_drop();

-- Source DDL (src/ddl.rs), and DDL on stream tables: keeps change capture working after DDL on a captured
-- source (ALTER TABLE that adds, drops, renames or retypes columns: the capture
-- function names columns; ALTER TYPE on the type of a typed table; partitions
-- created, attached or detached later), and blocks or schedules the
-- reinitialization of the stream tables the DDL concerns: those reading a
-- changed column, a renamed relation or a redefined view (ALTER VIEW, CREATE OR
-- REPLACE VIEW). Same safety rules as above: it calls into Rust only when a
-- captured source, one of its partitions, or a relation some stream table
-- reads changed.
CREATE FUNCTION pgtrickle._on_ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    changed oid[];
BEGIN
    -- Privileges changed: who needs, and may have, a change buffer follows.
    IF TG_TAG IN ('GRANT', 'REVOKE') THEN
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_ddl_commands() c WHERE c.object_type = 'TABLE')
           AND EXISTS (SELECT 1 FROM pgtrickle.pgt_change_tracking) THEN
            PERFORM pgtrickle._on_privileges_changed();
        END IF;
        RETURN;
    END IF;
    -- Renames and moves of schemas, functions, types and operators a defining
    -- query names, and replaced functions (src/ddl.rs, on_objects_changed).
    IF TG_TAG IN ('ALTER SCHEMA', 'ALTER FUNCTION', 'ALTER AGGREGATE', 'ALTER OPERATOR', 'ALTER TYPE', 'ALTER DOMAIN',
                  'CREATE FUNCTION')
       AND EXISTS (SELECT 1 FROM pgtrickle.pgt_stream_tables) THEN
        PERFORM pgtrickle._on_objects_changed(TG_TAG,
            ARRAY(SELECT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() c
                  WHERE c.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass));
    END IF;
    IF TG_TAG IN ('ALTER SCHEMA', 'ALTER FUNCTION', 'ALTER AGGREGATE', 'ALTER OPERATOR', 'ALTER DOMAIN', 'CREATE FUNCTION') THEN
        RETURN;
    END IF;
    SELECT pg_catalog.array_agg(DISTINCT r.relid) INTO changed
    FROM (SELECT c.objid AS relid
          FROM pg_catalog.pg_event_trigger_ddl_commands() c
          WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
          UNION
          SELECT t.oid
          FROM pg_catalog.pg_event_trigger_ddl_commands() c
          JOIN pg_catalog.pg_class t ON t.reloftype = c.objid
          WHERE c.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
          UNION
          -- ALTER TYPE ... RENAME ATTRIBUTE reports the composite type's relation.
          SELECT t.oid
          FROM pg_catalog.pg_event_trigger_ddl_commands() c
          JOIN pg_catalog.pg_class ct ON ct.oid = c.objid AND ct.relkind = 'c'
          JOIN pg_catalog.pg_class t ON t.reloftype = ct.reltype
          WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
          UNION
          -- ALTER TRIGGER (a rename) and CREATE [OR REPLACE] TRIGGER report the trigger.
          SELECT t.tgrelid
          FROM pg_catalog.pg_event_trigger_ddl_commands() c
          JOIN pg_catalog.pg_trigger t ON t.oid = c.objid
          WHERE c.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass) r;
    IF changed IS NULL THEN
        RETURN;
    END IF;
    IF pgtrickle._any_captured(changed)
       OR EXISTS (SELECT 1 FROM pgtrickle.pgt_dependencies d
                  WHERE d.source_relid = ANY (changed)
                     OR d.source_relid IN (SELECT t.relid FROM pg_catalog.unnest(changed) r(relid),
                                                  pg_catalog.pg_partition_tree(r.relid) t)
                     OR d.source_relid IN (SELECT inhrelid FROM pg_catalog.pg_inherits WHERE inhparent = ANY (changed))
                     OR d.source_relid IN (SELECT inhparent FROM pg_catalog.pg_inherits WHERE inhrelid = ANY (changed)))
       OR EXISTS (SELECT 1 FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = ANY (changed))
       -- A stream table made a partition or inheritance child or parent (ATTACH
       -- PARTITION and CREATE TABLE ... INHERITS report the other table).
       OR EXISTS (SELECT 1 FROM pgtrickle.pgt_stream_tables st JOIN pg_catalog.pg_inherits i
                  ON i.inhrelid = st.pgt_relid OR i.inhparent = st.pgt_relid) THEN
        PERFORM pgtrickle._on_relations_changed(changed, true, TG_TAG);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION pgtrickle._on_ddl_command_end() FROM PUBLIC;
CREATE EVENT TRIGGER pgtrickle_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'ALTER TYPE', 'ALTER VIEW', 'CREATE VIEW', 'ALTER TRIGGER', 'CREATE TRIGGER',
                 'GRANT', 'REVOKE', 'ALTER SCHEMA', 'ALTER FUNCTION', 'ALTER AGGREGATE', 'ALTER OPERATOR', 'ALTER DOMAIN',
                 'CREATE FUNCTION')
    EXECUTE FUNCTION pgtrickle._on_ddl_command_end();

"#,
    name = "event_triggers",
    finalize
);

pgrx::extension_sql!(
    r#"
-- Monitoring (docs/SQL_REFERENCE.md, Monitoring). Readable by every role, like
-- the catalog; error text only for who may see it (_may_see_refresh_errors).

-- One row per stream table: how it is maintained and how it has been doing.
CREATE VIEW pgtrickle.pg_stat_stream_tables AS
SELECT st.pgt_id,
       st.pgt_relid::pg_catalog.regclass AS stream_table,
       st.refresh_mode,
       st.effective_refresh_mode,
       st.schedule,
       st.status,
       st.is_populated,
       st.data_timestamp,
       -- An IMMEDIATE stream table is current in every snapshot.
       CASE WHEN st.effective_refresh_mode = 'IMMEDIATE' AND st.is_populated THEN '0'::pg_catalog.interval
            ELSE pg_catalog.now() - st.data_timestamp END AS staleness,
       st.last_refresh_at,
       h.refreshes,
       h.scheduled_refreshes,
       h.manual_refreshes,
       h.failed_refreshes,
       st.consecutive_errors,
       CASE WHEN pgtrickle._may_see_refresh_errors(st.pgt_relid) THEN h.last_error END AS last_error,
       s.state AS scheduler_state
FROM pgtrickle.pgt_stream_tables st
CROSS JOIN pgtrickle.scheduler_status() s
LEFT JOIN LATERAL (
    SELECT pg_catalog.count(*) FILTER (WHERE r.status = 'SUCCESS') AS refreshes,
           pg_catalog.count(*) FILTER (WHERE r.status = 'SUCCESS' AND r.initiated_by = 'SCHEDULER') AS scheduled_refreshes,
           pg_catalog.count(*) FILTER (WHERE r.status = 'SUCCESS' AND r.initiated_by = 'MANUAL') AS manual_refreshes,
           pg_catalog.count(*) FILTER (WHERE r.status = 'FAILED') AS failed_refreshes,
           (SELECT f.error_message FROM pgtrickle.pgt_refresh_history f
             WHERE f.pgt_id = st.pgt_id AND f.status = 'FAILED' ORDER BY f.refresh_id DESC LIMIT 1) AS last_error
    FROM pgtrickle.pgt_refresh_history r WHERE r.pgt_id = st.pgt_id) h ON true;
GRANT SELECT ON pgtrickle.pg_stat_stream_tables TO PUBLIC;

CREATE FUNCTION pgtrickle.stream_table_status()
RETURNS SETOF pgtrickle.pg_stat_stream_tables
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM pgtrickle.pg_stat_stream_tables ORDER BY stream_table::text
$$;

-- The refresh history with the error text shown only to who may see it: the
-- view reads error_message with its owner's rights, and the condition is
-- evaluated for the role reading the view.
CREATE VIEW pgtrickle._refresh_history_shown AS
SELECT h.refresh_id, h.pgt_id, st.pgt_relid, h.start_time, h.end_time, h.action, h.status,
       h.rows_inserted, h.rows_deleted, h.initiated_by, h.frontier,
       CASE WHEN pgtrickle._may_see_refresh_errors(st.pgt_relid) THEN h.error_message END AS error_message
FROM pgtrickle.pgt_refresh_history h
JOIN pgtrickle.pgt_stream_tables st USING (pgt_id);
GRANT SELECT ON pgtrickle._refresh_history_shown TO PUBLIC;

CREATE FUNCTION pgtrickle.refresh_history(name text, max_rows integer DEFAULT 20)
RETURNS TABLE (refresh_id bigint, start_time timestamptz, end_time timestamptz, action text, status text,
               rows_inserted bigint, rows_deleted bigint, initiated_by text, error_message text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT h.refresh_id, h.start_time, h.end_time, h.action, h.status, h.rows_inserted, h.rows_deleted,
           h.initiated_by, h.error_message
    FROM pgtrickle._refresh_history_shown h
    WHERE h.pgt_relid = pgtrickle._stream_table_oid(name)
    ORDER BY h.refresh_id DESC
    LIMIT max_rows
$$;

-- The SQL that recreates every stream table, one row each, upstream first:
-- its create call with every option (the normalized, schema-qualified query),
-- its status, owner, indexes (other than pg_trickle's own), table privileges
-- and comment (docs/OPERATIONS.md, Backup and restore). What you see of the
-- catalog is what you get.
CREATE FUNCTION pgtrickle.stream_table_definitions()
RETURNS TABLE (stream_table regclass, definition text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE reads AS (
        SELECT st.pgt_id, up.pgt_id AS upstream
        FROM pgtrickle.pgt_stream_tables st
        JOIN pgtrickle.pgt_dependencies d ON d.pgt_id = st.pgt_id
        JOIN pgtrickle.pgt_stream_tables up ON up.pgt_relid = d.source_relid
    ), depth AS (
        SELECT st.pgt_id, 0 AS depth FROM pgtrickle.pgt_stream_tables st
      UNION ALL
        SELECT r.pgt_id, d.depth + 1 FROM reads r JOIN depth d ON d.pgt_id = r.upstream WHERE d.depth < 1000
    ), ordered AS (
        SELECT pgt_id, max(depth) AS depth FROM depth GROUP BY pgt_id
    )
    SELECT st.pgt_relid::regclass,
           format('SELECT pgtrickle.create_stream_table(%L, %L, schedule => %L, refresh_mode => %L, '
                  'diamond_consistency => %L, diamond_schedule_policy => %L, cdc_mode => %L, append_only => %L, '
                  'pooler_compatibility_mode => %L);',
                  st.pgt_relid::regclass::text, st.defining_query, st.schedule, st.refresh_mode,
                  st.diamond_consistency, st.diamond_schedule_policy, st.cdc_mode, st.append_only,
                  st.pooler_compatibility_mode)
           || CASE WHEN st.status = 'SUSPENDED'
                   THEN format(E'\nSELECT pgtrickle.alter_stream_table(%L, status => %L);', st.pgt_relid::regclass::text, 'SUSPENDED')
                   ELSE '' END
           || format(E'\nALTER TABLE %s OWNER TO %I;', st.pgt_relid::regclass, pg_get_userbyid(c.relowner))
           || coalesce((SELECT string_agg(E'\n' || pg_get_indexdef(i.indexrelid) || ';', '' ORDER BY ic.relname)
                        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                        WHERE i.indrelid = st.pgt_relid AND pg_get_indexdef(i.indexrelid) NOT LIKE '%\_\_pgt\_%'), '')
           || coalesce((SELECT string_agg(format(E'\nGRANT %s ON %s TO %s%s;', a.privilege_type, st.pgt_relid::regclass,
                                                 CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                                                 CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END),
                                          '' ORDER BY a.grantee, a.privilege_type)
                        FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner), '')
           || coalesce(format(E'\nCOMMENT ON TABLE %s IS %L;', st.pgt_relid::regclass, obj_description(st.pgt_relid, 'pg_class')), '')
    FROM ordered o
    JOIN pgtrickle.pgt_stream_tables st ON st.pgt_id = o.pgt_id
    JOIN pg_class c ON c.oid = st.pgt_relid
    ORDER BY o.depth, st.pgt_id
$$;

-- Every stream table with what it reads, recursively through stream tables:
-- depth 1 is a direct source; a stream-table source's own sources follow at
-- depth 2, and so on.
CREATE FUNCTION pgtrickle.dependency_tree()
RETURNS TABLE (stream_table regclass, source regclass, source_kind text, depth integer, path text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE tree AS (
        SELECT st.pgt_relid AS root, d.source_relid, d.source_kind, 1 AS depth,
               st.pgt_relid::regclass::text || ' <- ' || d.source_relid::regclass::text AS path
        FROM pgtrickle.pgt_stream_tables st JOIN pgtrickle.pgt_dependencies d USING (pgt_id)
      UNION ALL
        SELECT t.root, d.source_relid, d.source_kind, t.depth + 1,
               t.path || ' <- ' || d.source_relid::regclass::text
        FROM tree t
        JOIN pgtrickle.pgt_stream_tables up ON up.pgt_relid = t.source_relid
        JOIN pgtrickle.pgt_dependencies d ON d.pgt_id = up.pgt_id
        WHERE t.source_kind = 'STREAM_TABLE' AND t.depth < 100
    )
    SELECT root::regclass, source_relid::regclass, source_kind, depth, path
    FROM tree ORDER BY root::regclass::text, path
$$;

-- Per captured source: its change buffer, the captured images not yet trimmed
-- (changes some stream table has still to apply), the buffer's size, whether
-- it is past pg_trickle.change_buffer_alert_kb, and the DIFFERENTIAL stream
-- table that has applied the least of it.
CREATE FUNCTION pgtrickle.change_buffer_stats()
RETURNS TABLE (source regclass, buffer regclass, pending_images bigint, buffer_bytes bigint,
               over_alert_size boolean, slowest_reader regclass)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ct record;
BEGIN
    FOR ct IN SELECT c.source_relid, c.buffer_relid FROM pgtrickle.pgt_change_tracking c ORDER BY c.source_relid::regclass::text LOOP
        source := ct.source_relid::regclass;
        buffer := ct.buffer_relid::regclass;
        EXECUTE format('SELECT count(*) FROM %s', buffer) INTO pending_images;
        buffer_bytes := pg_total_relation_size(ct.buffer_relid);
        over_alert_size := pgtrickle._change_buffer_alert_bytes() > 0
                           AND buffer_bytes > pgtrickle._change_buffer_alert_bytes();
        slowest_reader := (SELECT st.pgt_relid::regclass FROM pgtrickle.pgt_dependencies d
                           JOIN pgtrickle.pgt_stream_tables st USING (pgt_id)
                           WHERE d.source_relid = ct.source_relid AND st.effective_refresh_mode = 'DIFFERENTIAL'
                             AND st.frontier IS NOT NULL
                           ORDER BY st.data_timestamp NULLS FIRST LIMIT 1);
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION pgtrickle.change_buffer_stats() FROM PUBLIC;

-- One row: how the stream tables of this database are doing.
CREATE VIEW pgtrickle.quick_health AS
SELECT pg_catalog.count(*) AS total,
       pg_catalog.count(*) FILTER (WHERE st.status = 'ACTIVE') AS active,
       pg_catalog.count(*) FILTER (WHERE st.status = 'SUSPENDED') AS suspended,
       pg_catalog.count(*) FILTER (WHERE st.consecutive_errors > 0) AS failing,
       pg_catalog.count(*) FILTER (WHERE NOT st.is_populated) AS unpopulated,
       s.worker_pid IS NOT NULL AS scheduler_running,
       s.state AS scheduler_state,
       b.over AS buffers_over_alert_size,
       CASE WHEN pg_catalog.count(*) FILTER (WHERE st.status = 'SUSPENDED') > 0 THEN 'ERROR'
            WHEN pg_catalog.count(*) FILTER (WHERE st.consecutive_errors > 0) > 0 OR b.over > 0 THEN 'WARNING'
            WHEN pg_catalog.count(*) > 0 AND s.state = 'waiting for a background worker' THEN 'SCHEDULER WAITING'
            WHEN pg_catalog.count(*) > 0 AND s.worker_pid IS NULL THEN 'SCHEDULER NOT RUNNING'
            ELSE 'OK' END AS status
FROM pgtrickle.pgt_stream_tables st
RIGHT JOIN pgtrickle.scheduler_status() s ON true
CROSS JOIN (SELECT pg_catalog.count(*) FILTER (
                       WHERE pgtrickle._change_buffer_alert_bytes() > 0
                         AND pg_catalog.pg_total_relation_size(c.buffer_relid) > pgtrickle._change_buffer_alert_bytes()) AS over
            FROM pgtrickle.pgt_change_tracking c) b
GROUP BY s.worker_pid, s.state, b.over;
GRANT SELECT ON pgtrickle.quick_health TO PUBLIC;

-- Metrics for Prometheus (docs/INTEGRATIONS.md): numbers only, with units in
-- the column names, never NULL; stream tables named schema.name unquoted; readable by pg_monitor (what
-- postgres_exporter connects as) and superusers, as they count the rows of
-- change buffers (pgtrickle._stream_table_load, _change_buffer_sizes).
REVOKE ALL ON FUNCTION pgtrickle._stream_table_load() FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle._change_buffer_sizes() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgtrickle._stream_table_load() TO pg_monitor;
GRANT EXECUTE ON FUNCTION pgtrickle._change_buffer_sizes() TO pg_monitor;

-- One row per stream table. staleness_seconds: how long since its contents
-- were last known to equal its query: 0 for IMMEDIATE, and for DIFFERENTIAL
-- with nothing pending in its sources' change buffers; else since the
-- snapshot of its last refresh (since its creation if never populated).
CREATE VIEW pgtrickle.metrics_stream_tables AS
SELECT pg_catalog.current_database()::text AS datname,
       n.nspname || '.' || c.relname AS stream_table,
       st.refresh_mode,
       st.effective_refresh_mode AS effective_mode,
       CASE WHEN st.is_populated AND NOT st.needs_reinit
                 AND (st.effective_refresh_mode = 'IMMEDIATE'
                      OR (st.effective_refresh_mode = 'DIFFERENTIAL' AND st.frontier IS NOT NULL
                          AND coalesce(l.change_buffer_pending_rows, 0) = 0))
            THEN 0
            ELSE greatest(pg_catalog.date_part('epoch', pg_catalog.now() - coalesce(st.data_timestamp, st.created_at)), 0)
       END::double precision AS staleness_seconds,
       CASE WHEN st.effective_refresh_mode = 'IMMEDIATE' THEN 0 ELSE coalesce(l.schedule_seconds, 0) END::double precision
           AS schedule_seconds,
       coalesce(pg_catalog.date_part('epoch', st.last_refresh_at), 0)::double precision AS last_refresh_timestamp_seconds,
       coalesce((SELECT pg_catalog.date_part('epoch', h.end_time - h.start_time) FROM pgtrickle.pgt_refresh_history h
                 WHERE h.pgt_id = st.pgt_id AND h.status = 'SUCCESS' ORDER BY h.refresh_id DESC LIMIT 1), 0)::double precision
           AS last_refresh_duration_seconds,
       st.consecutive_errors::double precision AS consecutive_errors,
       (st.status = 'SUSPENDED')::int::double precision AS suspended,
       st.is_populated::int::double precision AS populated,
       st.needs_reinit::int::double precision AS needs_reinit,
       coalesce(l.change_buffer_pending_rows, 0)::double precision AS change_buffer_pending_rows,
       coalesce(l.change_buffer_bytes, 0)::double precision AS change_buffer_bytes,
       pg_catalog.pg_total_relation_size(st.pgt_relid)::double precision AS storage_bytes
FROM pgtrickle.pgt_stream_tables st
JOIN pg_catalog.pg_class c ON c.oid = st.pgt_relid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pgtrickle._stream_table_load() l ON l.pgt_id = st.pgt_id;
GRANT SELECT ON pgtrickle.metrics_stream_tables TO pg_monitor;

-- Cumulative refresh counters, one row per stream table and combination of
-- mode, initiator and outcome that can occur (zero until it does, so a first
-- failure shows as an increase).
CREATE VIEW pgtrickle.metrics_refreshes AS
SELECT pg_catalog.current_database()::text AS datname,
       n.nspname || '.' || c.relname AS stream_table,
       k.mode, k.initiated_by, k.status,
       coalesce(r.refreshes, 0)::double precision AS total,
       coalesce(r.rows_inserted, 0)::double precision AS rows_inserted_total,
       coalesce(r.rows_deleted, 0)::double precision AS rows_deleted_total,
       coalesce(r.seconds, 0)::double precision AS duration_seconds_total
FROM pgtrickle.pgt_stream_tables st
JOIN pg_catalog.pg_class c ON c.oid = st.pgt_relid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN (VALUES ('FULL'), ('DIFFERENTIAL')) m (mode)
CROSS JOIN LATERAL (VALUES (m.mode, 'INITIAL', 'SUCCESS'), (m.mode, 'MANUAL', 'SUCCESS'),
                           (m.mode, 'SCHEDULER', 'SUCCESS'), (m.mode, 'SCHEDULER', 'FAILED')) k (mode, initiated_by, status)
LEFT JOIN pgtrickle.pgt_refresh_stats r
       ON r.pgt_id = st.pgt_id AND r.action = k.mode AND r.initiated_by = k.initiated_by AND r.status = k.status;
GRANT SELECT ON pgtrickle.metrics_refreshes TO pg_monitor;

-- One row: this database's scheduler and the work waiting for it.
-- due_stream_tables: active, scheduled stream tables whose contents are
-- older than their interval with something to apply (the scheduler's queue).
CREATE VIEW pgtrickle.metrics_scheduler AS
SELECT pg_catalog.current_database()::text AS datname,
       s.available::int::double precision AS available,
       s.enabled::int::double precision AS enabled,
       (s.worker_pid IS NOT NULL)::int::double precision AS up,
       (s.state = 'waiting for a background worker')::int::double precision AS waiting,
       s.waiting_databases::double precision AS waiting_databases,
       s.refresh_workers::double precision AS refresh_workers,
       coalesce(pg_catalog.date_part('epoch', s.last_cycle), 0)::double precision AS last_cycle_timestamp_seconds,
       s.checks::double precision AS checks_total,
       s.skipped_checks::double precision AS skipped_checks_total,
       coalesce(m.stream_tables, 0)::double precision AS stream_tables,
       coalesce(m.suspended, 0)::double precision AS suspended_stream_tables,
       coalesce(m.failing, 0)::double precision AS failing_stream_tables,
       coalesce(m.due, 0)::double precision AS due_stream_tables,
       coalesce(b.bytes, 0)::double precision AS change_buffer_bytes,
       coalesce(b.pending_rows, 0)::double precision AS change_buffer_pending_rows
FROM pgtrickle.scheduler_status() s
CROSS JOIN (SELECT pg_catalog.count(*) AS stream_tables,
                   pg_catalog.count(*) FILTER (WHERE suspended = 1) AS suspended,
                   pg_catalog.count(*) FILTER (WHERE consecutive_errors > 0) AS failing,
                   pg_catalog.count(*) FILTER (WHERE suspended = 0 AND effective_mode <> 'IMMEDIATE'
                                                 AND schedule_seconds > 0 AND staleness_seconds > schedule_seconds) AS due
            FROM pgtrickle.metrics_stream_tables) m
CROSS JOIN (SELECT pg_catalog.sum(z.bytes) AS bytes, pg_catalog.sum(z.pending_rows) AS pending_rows
            FROM pgtrickle._change_buffer_sizes() z) b;
GRANT SELECT ON pgtrickle.metrics_scheduler TO pg_monitor;
"#,
    name = "monitoring",
    requires = [
        "catalog",
        api::pgtrickle::scheduler_status,
        api::pgtrickle::stream_table_oid,
        api::pgtrickle::change_buffer_alert_bytes,
        api::pgtrickle::stream_table_load,
        api::pgtrickle::change_buffer_sizes
    ]
);
