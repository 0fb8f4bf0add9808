-- popular_items: active items ranked by how many distinct users touched them in
-- [$start, $end) (ties: more events first, then item_id), for the cold-start list and
-- the popularity baseline.
with interactions as (
    select user_id, item_id
    from window_interactions
    inner join event_weights on window_interactions.event_type = event_weights.event_type
    where event_ts >= $start and event_ts < $end
),

inactive as (
    select item_id from catalog where not active
),

counted as (
    select
        item_id,
        cast(count(distinct user_id) as bigint) as users,
        cast(count(*) as bigint) as events
    from interactions
    where item_id not in (select item_id from inactive)
    group by item_id
),

final as (
    select
        item_id,
        users,
        events,
        cast(row_number() over (order by users desc, events desc, item_id) as integer) as popularity_rank
    from counted
)

select * from final
order by popularity_rank
