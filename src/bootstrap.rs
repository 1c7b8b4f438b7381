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
    frontier                  pg_catalog.pg_snapshot,
    frontier_xid              pg_catalog.xid8,
    frontier_cid              bigint,
    data_timestamp            timestamptz,
    last_refresh_at           timestamptz,
    consecutive_errors        integer NOT NULL DEFAULT 0,
    created_at                timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at                timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE pgtrickle.pgt_stream_tables IS 'pg_trickle: one row per stream table';
COMMENT ON COLUMN pgtrickle.pgt_stream_tables.delta_plan IS
    'The DIFFERENTIAL operator tree (JSON), rebuilt with every full recomputation';
COMMENT ON COLUMN pgtrickle.pgt_stream_tables.query_tree IS
    'The analysed defining query (nodeToString): deparsed again after a source is renamed';
COMMENT ON COLUMN pgtrickle.pgt_stream_tables.needs_reinit IS
    'DDL changed something the query reads: the next refresh re-derives the query, plan and storage types and recomputes';
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

GRANT SELECT ON pgtrickle.pgt_stream_tables, pgtrickle.pgt_dependencies,
                pgtrickle.pgt_change_tracking, pgtrickle.pgt_refresh_history TO PUBLIC;

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
       pg_catalog.now() - st.data_timestamp AS staleness,
       st.last_refresh_at,
       h.refreshes,
       h.scheduled_refreshes,
       h.manual_refreshes,
       h.failed_refreshes,
       st.consecutive_errors,
       h.last_error
FROM pgtrickle.pgt_stream_tables st
LEFT JOIN LATERAL (
    SELECT pg_catalog.count(*) FILTER (WHERE r.status = 'SUCCESS') AS refreshes,
           pg_catalog.count(*) FILTER (WHERE r.status = 'SUCCESS' AND r.initiated_by = 'SCHEDULER') AS scheduled_refreshes,
           pg_catalog.count(*) FILTER (WHERE r.status = 'SUCCESS' AND r.initiated_by = 'MANUAL') AS manual_refreshes,
           pg_catalog.count(*) FILTER (WHERE r.status = 'FAILED') AS failed_refreshes,
           (SELECT f.error_message FROM pgtrickle.pgt_refresh_history f
             WHERE f.pgt_id = st.pgt_id AND f.status = 'FAILED' ORDER BY f.refresh_id DESC LIMIT 1) AS last_error
    FROM pgtrickle.pgt_refresh_history r WHERE r.pgt_id = st.pgt_id) h ON true;
GRANT SELECT ON pgtrickle.pg_stat_stream_tables TO PUBLIC;
"#,
    name = "catalog",
    bootstrap
);

pgrx::extension_sql!(
    r#"
-- Internal entry points: not for PUBLIC.
REVOKE ALL ON FUNCTION pgtrickle._on_relations_dropped(oid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle._on_relations_changed(oid[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle._wake_scheduler() FROM PUBLIC;

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
            PERFORM pgtrickle._on_relations_changed(lost_columns, false);
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
            PERFORM pgtrickle._on_relations_changed(changed, false);
        END IF;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION pgtrickle._on_sql_drop() FROM PUBLIC;
CREATE EVENT TRIGGER pgtrickle_sql_drop ON sql_drop EXECUTE FUNCTION pgtrickle._on_sql_drop();

-- Source DDL (src/ddl.rs): keeps change capture working after DDL on a captured
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
          WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass) r;
    IF changed IS NULL THEN
        RETURN;
    END IF;
    IF pgtrickle._any_captured(changed)
       OR EXISTS (SELECT 1 FROM pgtrickle.pgt_dependencies d
                  WHERE d.source_relid = ANY (changed)
                     OR d.source_relid IN (SELECT t.relid FROM pg_catalog.unnest(changed) r(relid),
                                                  pg_catalog.pg_partition_tree(r.relid) t)
                     OR d.source_relid IN (SELECT inhrelid FROM pg_catalog.pg_inherits WHERE inhparent = ANY (changed))
                     OR d.source_relid IN (SELECT inhparent FROM pg_catalog.pg_inherits WHERE inhrelid = ANY (changed))) THEN
        PERFORM pgtrickle._on_relations_changed(changed, true);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION pgtrickle._on_ddl_command_end() FROM PUBLIC;
CREATE EVENT TRIGGER pgtrickle_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'ALTER TYPE', 'ALTER VIEW', 'CREATE VIEW')
    EXECUTE FUNCTION pgtrickle._on_ddl_command_end();

"#,
    name = "event_triggers",
    finalize
);

pgrx::extension_sql!(
    r#"
-- Monitoring (docs/SQL_REFERENCE.md, Monitoring). Readable by every role, like
-- the catalog.

CREATE FUNCTION pgtrickle.stream_table_status()
RETURNS SETOF pgtrickle.pg_stat_stream_tables
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM pgtrickle.pg_stat_stream_tables ORDER BY stream_table::text
$$;

CREATE FUNCTION pgtrickle.refresh_history(name text, max_rows integer DEFAULT 20)
RETURNS TABLE (refresh_id bigint, start_time timestamptz, end_time timestamptz, action text, status text,
               rows_inserted bigint, rows_deleted bigint, initiated_by text, error_message text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT h.refresh_id, h.start_time, h.end_time, h.action, h.status, h.rows_inserted, h.rows_deleted,
           h.initiated_by, h.error_message
    FROM pgtrickle.pgt_refresh_history h
    JOIN pgtrickle.pgt_stream_tables st USING (pgt_id)
    WHERE st.pgt_relid = pgtrickle._stream_table_oid(name)
    ORDER BY h.refresh_id DESC
    LIMIT max_rows
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
-- (changes some stream table has still to apply), and the buffer's size.
CREATE FUNCTION pgtrickle.change_buffer_stats()
RETURNS TABLE (source regclass, buffer regclass, pending_images bigint, buffer_bytes bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ct record;
BEGIN
    FOR ct IN SELECT c.source_relid, c.buffer_relid FROM pgtrickle.pgt_change_tracking c ORDER BY c.source_relid::regclass::text LOOP
        source := ct.source_relid::regclass;
        buffer := ct.buffer_relid::regclass;
        EXECUTE format('SELECT count(*) FROM %s', buffer) INTO pending_images;
        buffer_bytes := pg_total_relation_size(ct.buffer_relid);
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
       CASE WHEN pg_catalog.count(*) FILTER (WHERE st.status = 'SUSPENDED') > 0 THEN 'ERROR'
            WHEN pg_catalog.count(*) FILTER (WHERE st.consecutive_errors > 0) > 0 THEN 'WARNING'
            WHEN pg_catalog.count(*) > 0 AND s.worker_pid IS NULL THEN 'SCHEDULER NOT RUNNING'
            ELSE 'OK' END AS status
FROM pgtrickle.pgt_stream_tables st
RIGHT JOIN pgtrickle.scheduler_status() s ON true
GROUP BY s.worker_pid;
GRANT SELECT ON pgtrickle.quick_health TO PUBLIC;
"#,
    name = "monitoring",
    requires = ["catalog", api::pgtrickle::scheduler_status, api::pgtrickle::stream_table_oid]
);
