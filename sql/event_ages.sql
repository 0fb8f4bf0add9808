-- event_ages: one row per (user, item, event type) over the events in [$start, $end) of
-- window_interactions whose type has a configured weight: how many events, and the age of
-- each at $end in days (to the second). Every tuning candidate builds its confidence from
-- these rows (weight x count, or weight x sum of 0.5 ^ (age / half-life) with recency
-- decay), so none re-reads the events, whatever weights and half-life it tries.
with interactions as (
    select user_id, item_id, event_type, event_ts
    from window_interactions
    where event_ts >= $start and event_ts < $end
),

weights as (
    select event_type from event_weights
),

final as (
    select
        interactions.user_id,
        interactions.item_id,
        interactions.event_type,
        cast(count(*) as integer) as events,
        list(cast(date_diff('second', interactions.event_ts, $end) / 86400.0 as double)) as age_days
    from interactions
    inner join weights on interactions.event_type = weights.event_type
    group by interactions.user_id, interactions.item_id, interactions.event_type
)

-- No order: build_pair_events sorts the rows (and each list) itself, in numpy.
select * from final
