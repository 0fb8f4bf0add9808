-- interactions: canonical event rows of the days [$start, $end) from the view source_events
-- (every column it has, e.g. source_file, passes through).
-- occurrence > 1 marks a repeat of an event seen earlier in the scan (a replayed file or event):
-- the same event_id, or, for rows without one, the same user, item, type and timestamp.
-- Extract keeps occurrence 1 and counts the rest as duplicates.
with source as (
    select *
    from source_events
    where event_ts >= $start and event_ts < $end
),

final as (
    select
        *,
        cast(event_ts as date) as event_date,
        cast(
            row_number() over (
                partition by
                    event_id,
                    case when event_id is null then user_id end,
                    case when event_id is null then item_id end,
                    case when event_id is null then event_type end,
                    case when event_id is null then event_ts end
                order by event_ts, user_id, item_id, event_type
            ) as integer
        ) as occurrence
    from source
)

select * from final
order by event_ts, user_id, item_id, event_type, event_id
