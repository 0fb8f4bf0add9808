-- newest_event: the newest event_ts of the source and whether the UTC day before that event's day
-- has any events: the facts recsys.source.latest_complete_day needs to name the newest complete
-- day (the connection's time zone is UTC, so a cast to date is the UTC day).
with newest as (
    select max(event_ts) as newest_ts
    from source_events
),

day_before as (
    select cast(count(*) > 0 as boolean) as has_events
    from source_events, newest
    where cast(source_events.event_ts as date) = cast(newest.newest_ts as date) - 1
),

final as (
    select
        newest.newest_ts,
        day_before.has_events as day_before_has_events
    from newest, day_before
)

select * from final
