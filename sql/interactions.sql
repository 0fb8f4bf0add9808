-- interactions: canonical event rows of the days [$start, $end) from the view source_events.
-- occurrence > 1 marks a repeated event_id (a replayed event); extract drops and counts those.
with source as (
    select
        user_id,
        item_id,
        event_type,
        event_ts,
        event_id
    from source_events
    where event_ts >= $start and event_ts < $end
),

final as (
    select
        user_id,
        item_id,
        event_type,
        event_ts,
        event_id,
        cast(event_ts as date) as event_date,
        cast(
            case
                when event_id is null then 1
                else row_number() over (
                    partition by event_id order by event_ts, user_id, item_id, event_type
                )
            end as integer
        ) as occurrence
    from source
)

select * from final
order by event_ts, user_id, item_id, event_type
