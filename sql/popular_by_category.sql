-- popular_by_category: active catalog items ranked inside their category by how many
-- distinct users touched them over the window: the cold-start list for a category page
-- (published as __popular__#<category>) and the category of every item (for the cap).
-- The counts are those of popular_items (the output of sql/popular_items.sql for the same
-- window, registered under that name), so the events are not counted a second time.
with popular as (
    select item_id, users, events
    from popular_items
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
        popular.users,
        popular.events
    from items
    inner join popular on items.item_id = popular.item_id
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
