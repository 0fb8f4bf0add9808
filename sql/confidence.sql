-- confidence: one row per (user, item) over the events in [$start, $end) of window_interactions:
-- the sum of the configured event weights, each event decayed by its age when
-- $half_life_days > 0 (an event $half_life_days old counts half).
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
        max(event_ts) as last_event_ts
    from weighted
    group by user_id, item_id
)

select * from final
order by user_id, item_id
