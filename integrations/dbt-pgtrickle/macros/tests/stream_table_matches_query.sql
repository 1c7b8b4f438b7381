{#-
  Generic test: the stream table holds exactly what its defining query returns
  now, as a multiset (EXCEPT ALL both ways), on its visible columns (pg_trickle's
  hidden __pgt_* columns are left out). The query is the one pg_trickle refreshes
  (pgtrickle.pgt_stream_tables.defining_query). Each failing row says whether a
  query row is missing from the stream table or the stream table holds a row the
  query does not return.

  Meaningful when the stream table is fresh (right after dbt run, or after
  pgtrickle.refresh_stream_table): a stale stream table fails it by design.
  Columns must have an equality operator (not json, point, ...).

    models:
      - name: my_stream_table
        data_tests:
          - dbt_pgtrickle.stream_table_matches_query
-#}
{% test stream_table_matches_query(model) %}
  {%- set relation_name = dbt_pgtrickle.pgtrickle__name(model) -%}
  {%- set defining_query = 'select 1 as placeholder' -%}
  {%- set columns = ['placeholder'] -%}
  {%- if execute -%}
    {%- set result = run_query(
        "select defining_query from pgtrickle.pgt_stream_tables where pgt_relid = to_regclass("
        ~ dbt_pgtrickle.pgtrickle__string_literal(relation_name) ~ ")") -%}
    {%- if result.rows | length != 1 -%}
      {{ exceptions.raise_compiler_error("stream_table_matches_query: " ~ relation_name ~ " is not a stream table") }}
    {%- endif -%}
    {%- set defining_query = result.rows[0][0] -%}
    {%- set columns = [] -%}
    {%- for column in adapter.get_columns_in_relation(model) -%}
      {%- if not column.name.startswith('__pgt_') -%}
        {%- do columns.append(adapter.quote(column.name)) -%}
      {%- endif -%}
    {%- endfor -%}
  {%- endif %}

with stream_table as (
    select {{ columns | join(', ') }} from {{ model }}
),
query_result as (
    select {{ columns | join(', ') }} from (
{{ defining_query }}
    ) as pgt_defining_query
),
missing_from_stream_table as (
    select * from query_result
    except all
    select * from stream_table
),
not_in_query_result as (
    select * from stream_table
    except all
    select * from query_result
)
select 'missing from stream table' as pgt_difference, * from missing_from_stream_table
union all
select 'not in query result' as pgt_difference, * from not_in_query_result

{% endtest %}
