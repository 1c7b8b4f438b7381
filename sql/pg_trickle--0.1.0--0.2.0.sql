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
