{#-
  Helpers of the stream_table materialization. All SQL they build is sent to
  PostgreSQL through dbt's connection; nothing here depends on server settings
  (literals are E'' strings, which escape the same way whatever
  standard_conforming_strings says).
-#}

{#- The options a model may set, with their kind. Unset (None) options are not
    passed at all, so the pg_trickle function's own default applies. -#}
{% macro pgtrickle__option_kinds() %}
  {{ return({
      'schedule': 'text',
      'refresh_mode': 'text',
      'initialize': 'boolean',
      'diamond_consistency': 'text',
      'diamond_schedule_policy': 'text',
      'cdc_mode': 'text',
      'append_only': 'boolean',
      'pooler_compatibility_mode': 'boolean',
  }) }}
{% endmacro %}


{#- A SQL string literal for any text: E'...' with backslashes and quotes doubled. -#}
{% macro pgtrickle__string_literal(value) -%}
  E'{{ (value | string) | replace("\\", "\\\\") | replace("'", "''") }}'
{%- endmacro %}


{#- A literal for one option value: text options always as strings (schedule: 60
    becomes '60'), boolean options as true/false (a string is passed as text and
    PostgreSQL reads it as a boolean or raises its own error). -#}
{% macro pgtrickle__option_literal(option, kind, value) -%}
  {%- if kind == 'boolean' and value is sameas true -%}
    true
  {%- elif kind == 'boolean' and value is sameas false -%}
    false
  {%- elif kind == 'boolean' and (value is number) -%}
    {{ exceptions.raise_compiler_error("stream_table config " ~ option ~ " must be true or false, not " ~ value) }}
  {%- else -%}
    {{ dbt_pgtrickle.pgtrickle__string_literal(value) }}
  {%- endif -%}
{%- endmacro %}


{#- The name pg_trickle functions take: schema.identifier, quoted as dbt quotes
    the relation (pg_trickle reads it like an identifier list, accepts at most two
    parts, and takes an unqualified name as schema public, so the schema is
    always given). -#}
{% macro pgtrickle__name(relation) -%}
  {{- relation.include(database=False) | string -}}
{%- endmacro %}


{#- The model's compiled SQL as pg_trickle wants it: one statement, so a
    trailing semicolon is removed. -#}
{% macro pgtrickle__clean_query(sql) -%}
  {%- set q = sql.strip() -%}
  {%- if q.endswith(';') -%}
    {%- set q = q[:-1].rstrip() -%}
  {%- endif -%}
  {{- q -}}
{%- endmacro %}


{#- The options of the current model, as {name: value}; None for unset. -#}
{% macro pgtrickle__model_options() %}
  {%- set options = {} -%}
  {%- for option in dbt_pgtrickle.pgtrickle__option_kinds() -%}
    {%- do options.update({option: config.get(option)}) -%}
  {%- endfor -%}
  {{ return(options) }}
{% endmacro %}


{#- SELECT pgtrickle.<function>(name => ..., query => ..., <set options>). -#}
{% macro pgtrickle__call_sql(function, relation, sql, options) -%}
  {%- set kinds = dbt_pgtrickle.pgtrickle__option_kinds() -%}
select pgtrickle.{{ function }}(
    name => {{ dbt_pgtrickle.pgtrickle__string_literal(dbt_pgtrickle.pgtrickle__name(relation)) }},
    query => {{ dbt_pgtrickle.pgtrickle__string_literal(dbt_pgtrickle.pgtrickle__clean_query(sql)) }}
  {%- for option, kind in kinds.items() -%}
    {%- if options.get(option) is not none %},
    {{ option }} => {{ dbt_pgtrickle.pgtrickle__option_literal(option, kind, options[option]) }}
    {%- endif -%}
  {%- endfor %}
)
{%- endmacro %}


{#- Fails with a clear message when pg_trickle is not installed in the target database. -#}
{% macro pgtrickle__require_extension() %}
  {%- if execute -%}
    {%- set result = run_query("select count(*) from pg_catalog.pg_extension where extname = 'pg_trickle'") -%}
    {%- if result.rows[0][0] | int == 0 -%}
      {{ exceptions.raise_compiler_error(
          "dbt_pgtrickle: extension pg_trickle is not installed in database " ~ target.dbname
          ~ "; run CREATE EXTENSION pg_trickle there first") }}
    {%- endif -%}
  {%- endif -%}
{% endmacro %}


{#- OID of the relation (0 when it does not exist). -#}
{% macro pgtrickle__relation_oid(relation) %}
  {%- set result = run_query(
      "select coalesce(to_regclass(" ~ dbt_pgtrickle.pgtrickle__string_literal(dbt_pgtrickle.pgtrickle__name(relation))
      ~ ")::oid::bigint, 0)") -%}
  {{ return(result.rows[0][0] | int) }}
{% endmacro %}


{#- Whether the relation is a stream table (has a row in pgtrickle.pgt_stream_tables). -#}
{% macro pgtrickle__is_stream_table(relation) %}
  {%- set result = run_query(
      "select count(*) from pgtrickle.pgt_stream_tables where pgt_relid = to_regclass("
      ~ dbt_pgtrickle.pgtrickle__string_literal(dbt_pgtrickle.pgtrickle__name(relation)) ~ ")") -%}
  {{ return(result.rows[0][0] | int > 0) }}
{% endmacro %}


{#- Stream tables that read `relation`, directly or through other stream tables,
    deepest first (the order they can be dropped in): a list of
    {'schema': ..., 'identifier': ...}. -#}
{% macro pgtrickle__downstream_stream_tables(relation) %}
  {%- set sql -%}
with recursive downstream(relid, depth) as (
    select st.pgt_relid, 1
      from pgtrickle.pgt_dependencies d
      join pgtrickle.pgt_stream_tables st on st.pgt_id = d.pgt_id
     where d.source_kind = 'STREAM_TABLE'
       and d.source_relid = to_regclass({{ dbt_pgtrickle.pgtrickle__string_literal(dbt_pgtrickle.pgtrickle__name(relation)) }})
    union all
    select st.pgt_relid, downstream.depth + 1
      from downstream
      join pgtrickle.pgt_dependencies d on d.source_relid = downstream.relid and d.source_kind = 'STREAM_TABLE'
      join pgtrickle.pgt_stream_tables st on st.pgt_id = d.pgt_id
     where downstream.depth < 100
)
select n.nspname::text as schema_name, c.relname::text as identifier, max(downstream.depth) as depth
  from downstream
  join pg_catalog.pg_class c on c.oid = downstream.relid
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 group by 1, 2
 order by 3 desc, 1, 2
  {%- endset -%}
  {%- set result = run_query(sql) -%}
  {%- set found = [] -%}
  {%- for row in result.rows -%}
    {%- do found.append({'schema': row[0], 'identifier': row[1]}) -%}
  {%- endfor -%}
  {{ return(found) }}
{% endmacro %}


{#- The dbt model node building schema.identifier in the target database, or none. -#}
{% macro pgtrickle__model_node_for(schema, identifier) %}
  {%- for node in graph.nodes.values() -%}
    {%- if node.resource_type == 'model'
          and node.database == target.dbname
          and node.schema == schema
          and (node.alias or node.name) == identifier -%}
      {{ return(node) }}
    {%- endif -%}
  {%- endfor -%}
  {{ return(none) }}
{% endmacro %}


{#- Drops stream table `relation` with pgtrickle.drop_stream_table. pg_trickle
    refuses to drop a stream table other stream tables read (2BP01); the ones that
    are models selected in this run are dropped first (they are rebuilt when their
    own models run, after this one, in dbt's DAG order); any other makes this an
    error rather than a silent loss of a stream table the run will not rebuild. -#}
{% macro pgtrickle__drop_stream_table(relation) %}
  {%- set downstream = dbt_pgtrickle.pgtrickle__downstream_stream_tables(relation) -%}
  {%- set not_rebuilt = [] -%}
  {%- for st in downstream -%}
    {%- set node = dbt_pgtrickle.pgtrickle__model_node_for(st.schema, st.identifier) -%}
    {%- if node is none or node.unique_id not in selected_resources -%}
      {%- do not_rebuilt.append(adapter.quote(st.schema) ~ '.' ~ adapter.quote(st.identifier)
            ~ (' (no dbt model builds it)' if node is none else ' (model ' ~ node.name ~ ' is not selected)')) -%}
    {%- endif -%}
  {%- endfor -%}
  {%- if not_rebuilt | length > 0 -%}
    {{ exceptions.raise_compiler_error(
        "dbt_pgtrickle: cannot rebuild stream table " ~ relation ~ " from scratch: pg_trickle must first drop the "
        ~ "stream tables that read it, and this run would not rebuild " ~ (not_rebuilt | join(', '))
        ~ ". Select them too (e.g. dbt run --full-refresh --select " ~ model.name ~ "+) or drop them yourself.") }}
  {%- endif -%}
  {%- for st in downstream -%}
    {%- set dependent = api.Relation.create(database=target.dbname, schema=st.schema, identifier=st.identifier, type='table') -%}
    {{ log("dbt_pgtrickle: dropping stream table " ~ dependent ~ ", which reads " ~ relation ~ "; its model rebuilds it later in this run", info=True) }}
    {%- call statement('pgtrickle_drop_downstream', auto_begin=True) -%}
      select pgtrickle.drop_stream_table({{ dbt_pgtrickle.pgtrickle__string_literal(dbt_pgtrickle.pgtrickle__name(dependent)) }})
    {%- endcall -%}
    {%- do adapter.cache_dropped(dependent) -%}
  {%- endfor -%}
  {%- call statement('pgtrickle_drop', auto_begin=True) -%}
    select pgtrickle.drop_stream_table({{ dbt_pgtrickle.pgtrickle__string_literal(dbt_pgtrickle.pgtrickle__name(relation)) }})
  {%- endcall -%}
  {%- do adapter.cache_dropped(relation) -%}
{% endmacro %}


{#- The `indexes` config for a stream table. dbt-postgres names each index after
    the current time (so CREATE INDEX IF NOT EXISTS never matches an older one),
    so an index is created only when the table has none on the same columns
    (same uniqueness and method): a kept stream table keeps its indexes, a new or
    recreated one gets them all. Columns are compared by name. -#}
{% macro pgtrickle__create_missing_indexes(relation) %}
  {%- set indexes = config.get('indexes', default=[]) or [] -%}
  {%- for index_dict in indexes -%}
    {%- set index_config = adapter.parse_index(index_dict) -%}
    {%- set columns = [] -%}
    {%- for column in index_config.columns -%}
      {%- do columns.append(dbt_pgtrickle.pgtrickle__string_literal(column.strip().strip('"'))) -%}
    {%- endfor -%}
    {%- set check_sql -%}
select count(*)
  from pg_catalog.pg_index i
  join pg_catalog.pg_class ic on ic.oid = i.indexrelid
  join pg_catalog.pg_am am on am.oid = ic.relam
 where i.indrelid = to_regclass({{ dbt_pgtrickle.pgtrickle__string_literal(dbt_pgtrickle.pgtrickle__name(relation)) }})
   and i.indisunique = {{ 'true' if index_config.unique else 'false' }}
   and am.amname = {{ dbt_pgtrickle.pgtrickle__string_literal((index_config.type or 'btree') | lower) }}
   and i.indexprs is null
   and array(select a.attname::text
               from unnest(i.indkey::int2[]) with ordinality k(attnum, ord)
               join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
              order by k.ord)
       = array[{{ columns | join(', ') }}]::text[]
    {%- endset -%}
    {%- if run_query(check_sql).rows[0][0] | int == 0 -%}
      {%- do run_query(get_create_index_sql(relation, index_dict)) -%}
    {%- endif -%}
  {%- endfor -%}
{% endmacro %}
