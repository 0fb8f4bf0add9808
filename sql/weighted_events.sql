-- weighted_events: the events in [$start, $end) of the day partitions (the view
-- interaction_files) whose type has a configured weight, one row each: who, what, which
-- type, and when (epoch microseconds). The stage index_events indexes them by (user, item)
-- pair in numpy (model.build_pair_events), once for the whole window and once for its
-- training days, so that every tuning candidate builds its confidence from them (weight x
-- count, or decayed by age) without re-reading events.
-- One row per event, no lists: a plain filtered scan, the cheapest thing DuckDB can hand over.
with interactions as (
    select user_id, item_id, event_type, event_ts
    from interaction_files
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
        cast(epoch_us(interactions.event_ts) as bigint) as event_us
    from interactions
    inner join weights on interactions.event_type = weights.event_type
)

-- No order: build_pair_events sorts the events itself, in numpy.
select * from final
