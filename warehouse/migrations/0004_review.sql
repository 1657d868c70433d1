-- Human review in Label Studio: batches (one Label Studio project each), their tasks, archived exports,
-- and what a correction leaves on a row (the original answer is kept; a flagged proposal is kept too).
CREATE TABLE review_batches (
    batch_id      VARCHAR PRIMARY KEY,   -- rb-<utc time>-<hash of the row ids>
    ls_project_id INTEGER NOT NULL,      -- the Label Studio project holding this batch's tasks
    flow_run_id   VARCHAR,               -- the Prefect flow run paused on this batch (resumed when complete)
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    row_count     INTEGER NOT NULL,
    status        VARCHAR NOT NULL,      -- open | complete | synced
    completed_at  TIMESTAMP,             -- every task had a non-cancelled annotation
    synced_at     TIMESTAMP              -- every annotation applied to qa_rows
);

CREATE TABLE review_tasks (
    batch_id          VARCHAR NOT NULL,
    row_id            VARCHAR NOT NULL,
    ls_task_id        BIGINT,            -- NULL until the import into Label Studio is confirmed
    annotation_id     BIGINT,            -- the annotation last applied to the row (idempotent sync)
    annotation_at     VARCHAR,           -- its updated_at as Label Studio reported it
    verdict           VARCHAR,           -- accept | correct | reject, as applied
    applied_at        TIMESTAMP,
    PRIMARY KEY (batch_id, row_id)
);

CREATE TABLE review_exports (
    export_id    VARCHAR PRIMARY KEY,    -- sha256 of the archived file's bytes
    batch_id     VARCHAR NOT NULL,
    path         VARCHAR NOT NULL,       -- <workspace>/review/exports/<batch>-<timestamp>.json
    task_count   INTEGER NOT NULL,
    exported_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    applied_at   TIMESTAMP               -- NULL: archived but not yet applied (applied on the next sync)
);

ALTER TABLE qa_rows ADD COLUMN original_answer VARCHAR;      -- the answer before a human correction
ALTER TABLE qa_rows ADD COLUMN corrected_answer VARCHAR;     -- the annotator's text (kept even when flagged)
ALTER TABLE qa_rows ADD COLUMN corrected_numbers VARCHAR[];  -- canonical values the annotator typed
ALTER TABLE qa_rows ADD COLUMN review_verdict VARCHAR;       -- accept | correct | reject
ALTER TABLE qa_rows ADD COLUMN review_comment VARCHAR;
ALTER TABLE qa_rows ADD COLUMN review_batch_id VARCHAR;      -- the batch whose annotation decided the row
