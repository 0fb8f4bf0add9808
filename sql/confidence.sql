-- confidence: one row per (user, item) pair with a weighted event in the run's window
-- [$start, $end), from one pass over the day partitions (the view interaction_files):
-- confidence is the sum of the configured event weights, each event decayed by its age when
-- $half_life_days > 0 (an event $half_life_days old counts half); events counts them and
-- training_events those before $split (the training days; the rest are hold-out).
-- Events of a type without a weight are not counted anywhere. aggregate writes it to
-- confidence/dt=D/part-0.parquet and reads the hold-out truth and the popularity from that
-- file (sql/holdout_relevant.sql, sql/popular_items.sql): small scans of the pairs instead of
-- passes over the events. Rows come in no particular order (an ORDER BY took 1.0 s more
-- for the 5M pairs of bench/pipeline.py --scale 10); a rerun writes the same rows.
with interactions as (
    select user_id, item_id, event_type, event_ts
    from interaction_files
    where event_ts >= $start and event_ts < $end
),

weights as (
    select event_type, weight from event_weights
),

weighted as (
    select
        interactions.user_id,
        interactions.item_id,
        interactions.event_ts < $split as is_training,
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
        cast(count(*) filter (where is_training) as integer) as training_events
    from weighted
    group by user_id, item_id
)

select * from final
