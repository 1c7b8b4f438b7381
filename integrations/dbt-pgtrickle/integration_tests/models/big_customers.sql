{{ config(
    schedule='2s',
    refresh_mode='FULL',
    diamond_consistency='none',
    diamond_schedule_policy='slowest'
) }}

-- stream table B: a stream table over stream table A (a DAG). The second
-- condition filters nothing; its quote and backslash test how the query text
-- is passed.
select customer, total
from {{ ref('customer_totals') }}
where total >= 20
  and customer <> 'o''brien\n'
