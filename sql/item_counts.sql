-- item_counts: per active item, how many users touched it and with how many events, over
-- the run's window and over its training days only: one scan of confidence (one row per
-- (user, item) pair: the users of an item are its pairs), which sql/popular_items.sql
-- then ranks twice. Inactive catalog items are dropped after grouping (a few thousand
-- rows to check instead of every pair).
with pairs as (
    select item_id, events, training_events
    from confidence
),

counted as (
    select
        item_id,
        cast(count(*) as bigint) as users,
        cast(sum(events) as bigint) as events,
        cast(count(*) filter (where training_events > 0) as bigint) as training_users,
        cast(sum(training_events) as bigint) as training_events
    from pairs
    group by item_id
),

inactive as (
    select item_id from catalog where not active
),

final as (
    select counted.*
    from counted
    anti join inactive on counted.item_id = inactive.item_id
)

select * from final
