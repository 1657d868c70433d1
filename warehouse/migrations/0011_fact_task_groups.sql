-- One fact task per source sentence (issue #17): a person reads a sentence once and gives every ledger fact
-- in it its own verdict in one Label Studio task. Each fact keeps its own review_tasks row (its verdict and
-- the annotation applied to it); task_group names the task it shares with the other facts of its sentence
-- (the first fact's id). NULL for row tasks, and for fact tasks made before this migration (one fact each).
ALTER TABLE review_tasks ADD COLUMN task_group VARCHAR;
