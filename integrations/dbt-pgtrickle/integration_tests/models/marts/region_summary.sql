{{ config(
    alias='Region Summary',
    grants={'select': ['dbt_pgtrickle_reader']}
) }}

-- stream table C: every pg_trickle option left unset (function defaults:
-- schedule 'calculated', refresh_mode 'AUTO'), in a mixed-case schema under a
-- name that needs quoting.
select region,
       count(*) as order_count,
       sum(amount) as revenue,
       max(amount) as largest_order
from {{ ref('raw_orders') }}
group by region
