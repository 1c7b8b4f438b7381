{#-
  materialized='stream_table': the model's query kept fresh by pg_trickle.

    relation absent                     -> pgtrickle.create_stream_table(...)
    a stream table already              -> pgtrickle.create_or_replace_stream_table(...)
                                           (no rebuild when the normalized query and the
                                           options are unchanged; options altered in place;
                                           a changed query rebuilds it)
    a plain table / view / matview      -> dropped, then create_stream_table(...)
    --full-refresh (or full_refresh: true) on a stream table
                                        -> pgtrickle.drop_stream_table(...), then create
                                           (stream tables reading it are dropped first when
                                           they are selected in the run, else an error)

  Options (model config): schedule, refresh_mode, initialize, diamond_consistency,
  diamond_schedule_policy, cdc_mode, append_only, pooler_compatibility_mode. An
  unset option is not passed, so the function's default applies.
-#}
{% materialization stream_table, adapter='postgres' %}

  {%- set target_relation = this.incorporate(type='table') -%}
  {%- set existing_relation = load_cached_relation(this) -%}
  {%- set full_refresh = should_full_refresh() -%}
  {%- set grant_config = config.get('grants') -%}
  {%- set options = dbt_pgtrickle.pgtrickle__model_options() -%}

  {{ run_hooks(pre_hooks, inside_transaction=False) }}

  -- `BEGIN` happens here:
  {{ run_hooks(pre_hooks, inside_transaction=True) }}

  {{ dbt_pgtrickle.pgtrickle__require_extension() }}

  {%- set is_stream_table = existing_relation is not none
        and dbt_pgtrickle.pgtrickle__is_stream_table(existing_relation) -%}
  {%- set old_oid = dbt_pgtrickle.pgtrickle__relation_oid(target_relation) if existing_relation is not none else 0 -%}

  {%- if existing_relation is not none and not is_stream_table -%}
    {{ log("dbt_pgtrickle: " ~ target_relation ~ " is a " ~ existing_relation.type
           ~ ", not a stream table: dropping it", info=True) }}
    {{ adapter.drop_relation(existing_relation) }}
    {%- set existing_relation = none -%}
  {%- elif is_stream_table and full_refresh -%}
    {{ log("dbt_pgtrickle: full refresh of " ~ target_relation ~ ": dropping the stream table", info=True) }}
    {{ dbt_pgtrickle.pgtrickle__drop_stream_table(existing_relation) }}
    {%- set existing_relation = none -%}
  {%- endif -%}

  {%- set function = 'create_or_replace_stream_table' if existing_relation is not none else 'create_stream_table' -%}

  {% call statement('main') -%}
    {{ dbt_pgtrickle.pgtrickle__call_sql(function, target_relation, sql, options) }}
  {%- endcall %}

  {%- set new_oid = dbt_pgtrickle.pgtrickle__relation_oid(target_relation) -%}
  {%- if new_oid != old_oid and existing_relation is not none -%}
    {{ log("dbt_pgtrickle: " ~ target_relation ~ " was recreated by pg_trickle (its output columns changed): "
           ~ "indexes, grants and comments are applied again", info=True) }}
  {%- endif -%}

  {% do dbt_pgtrickle.pgtrickle__create_missing_indexes(target_relation) %}

  {{ run_hooks(post_hooks, inside_transaction=True) }}

  {%- set should_revoke = should_revoke(existing_relation, full_refresh_mode=False) -%}
  {% do apply_grants(target_relation, grant_config, should_revoke=should_revoke) %}

  {% do persist_docs(target_relation, model) %}

  -- `COMMIT` happens here
  {{ adapter.commit() }}

  {{ run_hooks(post_hooks, inside_transaction=False) }}

  {{ return({'relations': [target_relation]}) }}

{% endmaterialization %}
