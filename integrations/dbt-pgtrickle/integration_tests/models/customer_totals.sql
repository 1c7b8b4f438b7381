{{ config(
    schedule='1s',
    refresh_mode='DIFFERENTIAL',
    cdc_mode='trigger',
    append_only=false,
    initialize=true,
    indexes=[{'columns': ['total']}],
    grants={'select': ['dbt_pgtrickle_reader']},
    post_hook="create index if not exists customer_totals_order_count_idx on {{ this }} (order_count)"
) }}

-- stream table A: an aggregate over the seeded source table
select customer,
       sum(amount) as total,
       count(*) as order_count
from {{ ref('raw_orders') }}
group by customer
