-- Fact-first review (issue #17): people verify each ledger number once, at its sentence, and the verified
-- ledger decides the rows that cite it. One verdict per fact (the newest annotation applied); the fact's
-- parsed fields as ingested are kept here (original_*) when a correction rewrites them in `facts`.
CREATE TABLE fact_verdicts (
    fact_id            VARCHAR PRIMARY KEY,
    verdict            VARCHAR NOT NULL,   -- correct | corrected | not_a_rule
    value              VARCHAR,            -- the fact as the person left it (a correction's new fields)
    value_max          VARCHAR,
    unit               VARCHAR,
    qualifier          VARCHAR,
    subject            VARCHAR,
    original_value     VARCHAR NOT NULL,   -- the fact as ingestion parsed it, never overwritten
    original_value_max VARCHAR,
    original_unit      VARCHAR NOT NULL,
    original_qualifier VARCHAR NOT NULL,
    original_subject   VARCHAR NOT NULL,
    annotator          VARCHAR NOT NULL,   -- the person (Label Studio user email)
    decided_at         TIMESTAMP,          -- when the annotation was made (Label Studio's updated_at)
    comment            VARCHAR,
    batch_id           VARCHAR NOT NULL,   -- the batch whose fact task carried the verdict
    annotation_id      BIGINT NOT NULL,
    annotation_at      VARCHAR,
    applied_at         TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- A batch now holds two kinds of task. For kind = 'fact' the row_id column holds the fact id (the primary
-- key stays (batch_id, row_id)) and fact_id repeats it; for kind = 'row' fact_id is NULL.
ALTER TABLE review_tasks ADD COLUMN kind VARCHAR DEFAULT 'row';
ALTER TABLE review_tasks ADD COLUMN fact_id VARCHAR;
ALTER TABLE review_tasks ADD COLUMN suggested VARCHAR;           -- the ledger's pre-annotation (row tasks)
ALTER TABLE review_tasks ADD COLUMN prediction_changed BOOLEAN;  -- the person chose another verdict
