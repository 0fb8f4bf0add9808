-- source_file_days: how many events each source file holds on each UTC day (event_date NULL:
-- no usable event_ts). Extract gives each file a home day from it, and finds files it cannot use.
-- Every canonical column is read, so that a CSV line that is not UTF-8 in any of them is
-- rejected in this scan too (DuckDB only checks the columns a query reads).
with source as (
    select
        source_file,
        user_id,
        item_id,
        event_type,
        event_ts,
        event_id
    from source_events
),

final as (
    select
        source_file,
        cast(event_ts as date) as event_date,
        cast(count(*) as bigint) as events,
        cast(count(*) filter (where user_id is null or item_id is null or event_type is null) as bigint)
            as missing_fields,
        cast(count(event_id) as bigint) as with_event_id
    from source
    group by source_file, cast(event_ts as date)
)

select * from final
order by source_file, event_date
