-- pg_trickle 0.1.0 -> 0.2.0 (ALTER EXTENSION pg_trickle UPDATE TO '0.2.0').
-- Every catalog change of 0.2.0; a fresh 0.2.0 install and a 0.1.0 install
-- updated by this script have the same objects (tests/e2e/tests/upgrade.rs).
\echo Use "ALTER EXTENSION pg_trickle UPDATE TO '0.2.0'" to load this file. \quit

-- The format of each stream table's stored state (plan, row identities, state
-- tables). The stream tables that exist now were written by 0.1.0 (format 1):
-- their next refresh, or IMMEDIATE maintenance, reinitializes them with this
-- build's state (crate::refresh::STATE_FORMAT); new ones are written as 2.
ALTER TABLE pgtrickle.pgt_stream_tables ADD COLUMN state_format integer NOT NULL DEFAULT 1;
ALTER TABLE pgtrickle.pgt_stream_tables ALTER COLUMN state_format SET DEFAULT 2;
GRANT SELECT (state_format) ON pgtrickle.pgt_stream_tables TO PUBLIC;

-- Renames of schemas, functions, types and operators that defining queries
-- name are followed or blocked, and replaced functions reinitialize their
-- callers (src/ddl.rs, on_objects_changed).
CREATE  FUNCTION pgtrickle."_on_objects_changed"(
	"command_tag" TEXT, /* & str */
	"functions" oid[] /* Vec < pg_sys :: Oid > */
) RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'on_objects_changed_wrapper';
REVOKE ALL ON FUNCTION pgtrickle._on_objects_changed(text, oid[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgtrickle._on_ddl_command_end() RETURNS event_trigger
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

DROP EVENT TRIGGER pgtrickle_ddl_command_end;
CREATE EVENT TRIGGER pgtrickle_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'ALTER TYPE', 'ALTER VIEW', 'CREATE VIEW', 'ALTER TRIGGER', 'CREATE TRIGGER',
                 'GRANT', 'REVOKE', 'ALTER SCHEMA', 'ALTER FUNCTION', 'ALTER AGGREGATE', 'ALTER OPERATOR', 'ALTER DOMAIN',
                 'CREATE FUNCTION')
    EXECUTE FUNCTION pgtrickle._on_ddl_command_end();

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

-- Dump and restore (src/restore.rs, docs/OPERATIONS.md). Capture triggers
-- call one extension function with their source's OID, which hands each
-- statement to the source's capture function; capture functions, change
-- buffers and state tables become extension members, so that pg_dump leaves
-- them out: their names and rows belong to this database.
CREATE FUNCTION pgtrickle._capture_changes() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'capture_changes_wrapper';
REVOKE ALL ON FUNCTION pgtrickle._capture_changes() FROM PUBLIC;
-- The capture functions, buffers and state tables of existing stream
-- tables become members, their privileges recorded as initial ones
-- (pg_init_privs: pg_dump writes no GRANT or REVOKE for them), and the
-- capture triggers are pointed at pgtrickle._capture_changes
-- (src/cdc.rs, upgrade_capture_from_0_1_0).
CREATE FUNCTION pgtrickle._upgrade_capture_from_0_1_0() RETURNS void
LANGUAGE c AS 'MODULE_PATHNAME', 'upgrade_capture_from_0_1_0_wrapper';
SELECT pgtrickle._upgrade_capture_from_0_1_0();
DROP FUNCTION pgtrickle._upgrade_capture_from_0_1_0();

-- The guard trigger lets a COPY into a stream table through (a data-only
-- restore) and marks it for reinitialization. Guard triggers get the
-- definition they carry into dumps when their stream tables are next
-- reinitialized, which the state format change above makes every 0.1.0
-- stream table's next refresh do.
CREATE OR REPLACE FUNCTION pgtrickle._guard_stream_table() RETURNS trigger
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

CREATE  FUNCTION pgtrickle."_stream_table_contents_loaded"(
	"relid" oid /* pg_sys :: Oid */
) RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'stream_table_contents_loaded_wrapper';

CREATE  FUNCTION pgtrickle."finish_restore"() RETURNS TABLE (
	"stream_table" TEXT,  /* String */
	"status" TEXT,  /* String */
	"detail" TEXT  /* String */
)
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'finish_restore_wrapper';

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

-- Exact sums of doubles and of their products (pgt_core::exact), summed by
-- the variance and regression families over floats (pgt_delta::aggregate).

CREATE  FUNCTION pgtrickle."exact_sum_of_values_exact_sum_of_values_state"(
	"this" internal, /* Internal */
	"arg_one" double precision, /* f64 */
	"arg_two" bigint /* i64 */
) RETURNS internal /* Internal */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'exact_sum_of_values_exact_sum_of_values_state_wrapper';

CREATE  FUNCTION pgtrickle."exact_sum_of_values_exact_sum_of_values_finalize"(
	"this" internal /* Internal */
) RETURNS NUMERIC /* Option < AnyNumeric > */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'exact_sum_of_values_exact_sum_of_values_finalize_wrapper';

CREATE AGGREGATE pgtrickle._exact_sum (
	double precision, /* f64 */
	bigint /* i64 */
)
(
	SFUNC = pgtrickle."exact_sum_of_values_exact_sum_of_values_state", /* pg_trickle::api::pgtrickle::ExactSumOfValues::state */
	STYPE = internal, /* Internal */
	FINALFUNC = pgtrickle."exact_sum_of_values_exact_sum_of_values_finalize" /* pg_trickle::api::pgtrickle::ExactSumOfValues::final */
);

CREATE  FUNCTION pgtrickle."exact_sum_of_products_exact_sum_of_products_state"(
	"this" internal, /* Internal */
	"arg_one" double precision, /* f64 */
	"arg_two" double precision, /* f64 */
	"arg_three" bigint /* i64 */
) RETURNS internal /* Internal */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'exact_sum_of_products_exact_sum_of_products_state_wrapper';

CREATE  FUNCTION pgtrickle."exact_sum_of_products_exact_sum_of_products_finalize"(
	"this" internal /* Internal */
) RETURNS NUMERIC /* Option < AnyNumeric > */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'exact_sum_of_products_exact_sum_of_products_finalize_wrapper';

CREATE AGGREGATE pgtrickle._exact_sum (
	double precision, /* f64 */
	double precision, /* f64 */
	bigint /* i64 */
)
(
	SFUNC = pgtrickle."exact_sum_of_products_exact_sum_of_products_state", /* pg_trickle::api::pgtrickle::ExactSumOfProducts::state */
	STYPE = internal, /* Internal */
	FINALFUNC = pgtrickle."exact_sum_of_products_exact_sum_of_products_finalize" /* pg_trickle::api::pgtrickle::ExactSumOfProducts::final */
);
