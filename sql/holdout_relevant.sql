-- holdout_relevant: the items each user touched in the hold-out days [$split, $end) and
-- not in the training days [$start, $split): what a list made on the training days should
-- have found. From confidence: a pair without training events has only hold-out events.
-- Rows come in no particular order (index_events builds a matrix of them).
with holdout as (
    select user_id, item_id
    from confidence
    where training_events = 0
)

select * from holdout
