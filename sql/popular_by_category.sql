-- popular_by_category: active catalog items ranked inside their category by how many
-- distinct users touched them in [$start, $end): the cold-start list for a category page
-- (published as __popular__#<category>) and the category of every item (for the cap).
with interactions as (
    select user_id, item_id
    from window_interactions
    inner join event_weights on window_interactions.event_type = event_weights.event_type
    where event_ts >= $start and event_ts < $end
),

items as (
    select item_id, category
    from catalog
    where active and category is not null
),

counted as (
    select
        items.item_id,
        items.category,
        cast(count(distinct interactions.user_id) as bigint) as users,
        cast(count(interactions.user_id) as bigint) as events
    from items
    inner join interactions on items.item_id = interactions.item_id
    group by items.item_id, items.category
),

final as (
    select
        category,
        item_id,
        users,
        events,
        cast(
            row_number() over (partition by category order by users desc, events desc, item_id) as integer
        ) as category_rank
    from counted
)

select * from final
order by category, category_rank
