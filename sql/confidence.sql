-- confidence: one row per (user, item) over the events in [$start, $end) of window_interactions:
-- the sum of the configured event weights, each event decayed by its age when
-- $half_life_days > 0 (an event $half_life_days old counts half); purchases counts the
-- events whose type is in $purchase_types (for the "exclude only purchased items" filter).
with interactions as (
    select user_id, item_id, event_type, event_ts
    from window_interactions
    where event_ts >= $start and event_ts < $end
),

weights as (
    select event_type, weight from event_weights
),

weighted as (
    select
        interactions.user_id,
        interactions.item_id,
        interactions.event_ts,
        list_contains($purchase_types, interactions.event_type) as is_purchase,
        weights.weight * case
            when $half_life_days > 0
                then pow(0.5, date_diff('second', interactions.event_ts, $end) / 86400.0 / $half_life_days)
            else 1.0
        end as value
    from interactions
    inner join weights on interactions.event_type = weights.event_type
),

final as (
    select
        user_id,
        item_id,
        cast(sum(value) as double) as confidence,
        cast(count(*) as integer) as events,
        cast(count(*) filter (where is_purchase) as integer) as purchases,
        max(event_ts) as last_event_ts
    from weighted
    group by user_id, item_id
)

select * from final
order by user_id, item_id
