-- Quality gates: conflicts between rows, gate runs with their reports, frozen datasets, the golden set.
CREATE TABLE conflicts (
    conflict_id  VARCHAR PRIMARY KEY,   -- hash of kind and both row ids
    kind         VARCHAR NOT NULL,      -- same_question | same_fact | near_duplicate | contradicts_ledger
    row_a        VARCHAR NOT NULL,
    row_b        VARCHAR,               -- NULL for contradicts_ledger (the partner is the fact)
    fact_id      VARCHAR,
    numbers_a    VARCHAR[] NOT NULL,
    numbers_b    VARCHAR[] NOT NULL,    -- for contradicts_ledger: the fact's value(s)
    similarity   DOUBLE,
    reason       VARCHAR NOT NULL,
    detected_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE gate_runs (
    gate_run_id    VARCHAR PRIMARY KEY,
    gate           VARCHAR NOT NULL,    -- pre_review | release
    success        BOOLEAN NOT NULL,
    row_count      INTEGER NOT NULL,
    report         JSON NOT NULL,       -- expectations with observed values and offending rows
    data_docs_path VARCHAR,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE golden_items (
    item_id   VARCHAR PRIMARY KEY,      -- hash of the normalised question
    question  VARCHAR NOT NULL,
    answer    VARCHAR,
    numbers   VARCHAR[] NOT NULL DEFAULT [],
    keywords  VARCHAR[] NOT NULL DEFAULT [],
    type      VARCHAR NOT NULL,         -- numeric | text | unanswerable
    doc       VARCHAR,
    source    VARCHAR NOT NULL,         -- held_out:<dataset id> | file:<name>
    row_id    VARCHAR,                  -- the reviewed row it was held out from, if any
    added_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE datasets (
    dataset_id     VARCHAR PRIMARY KEY,  -- hash of the sorted rows and the prompt format
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    prompt_format  VARCHAR NOT NULL,
    row_count      INTEGER NOT NULL,
    train_count    INTEGER NOT NULL,
    valid_count    INTEGER NOT NULL,
    numeric_share  DOUBLE NOT NULL,
    counts         JSON NOT NULL,        -- rows by status, kind and document
    gate_run_id    VARCHAR NOT NULL,
    path           VARCHAR NOT NULL      -- folder with train.jsonl and valid.jsonl
);

CREATE TABLE dataset_rows (
    dataset_id VARCHAR NOT NULL,
    row_id     VARCHAR NOT NULL,
    split      VARCHAR NOT NULL,         -- train | valid
    PRIMARY KEY (dataset_id, row_id)
);
