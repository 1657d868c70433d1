-- Distillation: teacher calls (the cache), question/answer rows, and runs with their cost accounting.
CREATE TABLE distill_runs (
    run_id            VARCHAR PRIMARY KEY,
    teacher           VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    prompt_version    VARCHAR NOT NULL,
    started_at        TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished_at       TIMESTAMP,
    chunks            INTEGER NOT NULL DEFAULT 0,   -- chunks considered
    cached            INTEGER NOT NULL DEFAULT 0,   -- answered from the cache, billed nothing
    failed            INTEGER NOT NULL DEFAULT 0,   -- chunks whose teacher call failed (recorded)
    rows_added        INTEGER NOT NULL DEFAULT 0,
    calls             INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd          DOUBLE NOT NULL DEFAULT 0
);

CREATE TABLE teacher_calls (
    cache_key         VARCHAR PRIMARY KEY,  -- hash of chunk text hash, teacher, model, prompt version, options
    chunk_id          VARCHAR NOT NULL,
    teacher           VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    prompt_version    VARCHAR NOT NULL,
    status            VARCHAR NOT NULL,     -- ok | failed
    error             VARCHAR,              -- why it failed, or which rows were dropped as invalid
    raw_text          VARCHAR,              -- the model's text, verbatim (audit; kept on failure)
    row_count         INTEGER NOT NULL DEFAULT 0,
    calls             INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd          DOUBLE NOT NULL DEFAULT 0,
    run_id            VARCHAR,
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE qa_rows (
    row_id         VARCHAR PRIMARY KEY,  -- hash of cache key, question and answer
    cache_key      VARCHAR NOT NULL,
    chunk_id       VARCHAR NOT NULL,
    doc_id         VARCHAR NOT NULL,
    teacher        VARCHAR NOT NULL,
    question       VARCHAR NOT NULL,
    answer         VARCHAR NOT NULL,
    evidence       VARCHAR NOT NULL,
    kind           VARCHAR NOT NULL,     -- numeric | text | unanswerable (as the teacher meant it)
    unsure         BOOLEAN NOT NULL DEFAULT false,
    teacher_numbers VARCHAR[] NOT NULL DEFAULT [],  -- numbers the teacher says it stated
    numbers        VARCHAR[] NOT NULL DEFAULT [],  -- canonical values the parser finds in the answer
    is_numeric     BOOLEAN NOT NULL DEFAULT false,
    evidence_found BOOLEAN NOT NULL DEFAULT false,
    grounded       BOOLEAN NOT NULL DEFAULT false,
    fact_ids       VARCHAR[] NOT NULL DEFAULT [],  -- ledger facts the answer's numbers were matched to
    verify_notes   VARCHAR NOT NULL DEFAULT '',
    status         VARCHAR NOT NULL,     -- generated | auto_verified | needs_review | approved | corrected | rejected
    reviewer       VARCHAR,
    reviewed_at    TIMESTAMP,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp
);
