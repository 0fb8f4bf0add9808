-- popular_items: active items ranked by how many distinct users touched them (ties: more
-- events first, then item_id), for the cold-start list and the popularity baseline: over
-- the whole window, or with $training over its training days only. From item_counts
-- (sql/item_counts.sql, registered under that name).
with counted as (
    select
        item_id,
        case when $training then training_users else users end as users,
        case when $training then training_events else events end as events
    from item_counts
),

final as (
    select
        item_id,
        users,
        events,
        cast(row_number() over (order by users desc, events desc, item_id) as integer) as popularity_rank
    from counted
    where users > 0
)

select * from final
order by popularity_rank
