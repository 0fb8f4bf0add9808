-- holdout_relevant: the items each user touched in the hold-out days [$split, $end)
-- that they had not touched in the training days [$start, $split): what a list made on
-- the training days should have found.
with training as (
    select distinct user_id, item_id
    from window_interactions
    where event_ts >= $start and event_ts < $split
),

holdout as (
    select distinct window_interactions.user_id, window_interactions.item_id
    from window_interactions
    inner join event_weights on window_interactions.event_type = event_weights.event_type
    where event_ts >= $split and event_ts < $end
),

final as (
    select holdout.user_id, holdout.item_id
    from holdout
    anti join training
        on holdout.user_id = training.user_id and holdout.item_id = training.item_id
)

select * from final
order by user_id, item_id
