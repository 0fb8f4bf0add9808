-- stray_events: rows of the source files that fed this run which no extracted day takes:
--   no_timestamp  event_ts missing or unparseable            (any file in $files)
--   future        event_ts at or after $future               (any file in $files)
--   earlier_day   event_ts on a window day before $end that this run does not extract
--                 (only files in $home_files: files most of whose rows lie on one extracted day)
-- Extract stages them under their file's home day, where validate quarantines them.
with source as (
    select
        user_id,
        item_id,
        event_type,
        event_ts,
        event_id,
        source_file
    from source_events
    where source_file in (select unnest($files))
),

final as (
    select
        user_id,
        item_id,
        event_type,
        event_ts,
        event_id,
        source_file,
        case
            when event_ts is null then 'no_timestamp'
            when event_ts >= $future then 'future'
            else 'earlier_day'
        end as stray
    from source
    where
        event_ts is null
        or event_ts >= $future
        or (
            source_file in (select unnest($home_files))
            and event_ts >= $window_start
            and event_ts < $end
            and cast(event_ts as date) not in (select unnest($extracted_days))
        )
)

select * from final
order by source_file, event_ts, user_id, item_id, event_type, event_id
