-- window_interactions: the events of the run's window [$start, $end), read once from the day
-- partitions (the view interaction_files) into a table that every other query of aggregate
-- reads, so that the Parquet files are scanned and decoded once instead of once per query.
-- Only the columns those queries use.
with interactions as (
    select user_id, item_id, event_type, event_ts
    from interaction_files
    where event_ts >= $start and event_ts < $end
),

final as (
    select
        cast(user_id as varchar) as user_id,
        cast(item_id as varchar) as item_id,
        cast(event_type as varchar) as event_type,
        cast(event_ts as timestamptz) as event_ts
    from interactions
)

select * from final
