-- Evaluation runs and their items: every answer kept, so regressions can be shown side by side.
CREATE TABLE eval_runs (
    eval_run_id  VARCHAR PRIMARY KEY,
    model_label  VARCHAR NOT NULL,   -- base | champion | challenger | a path
    model_id     VARCHAR,            -- models.model_id when the model is registered
    mode         VARCHAR NOT NULL,   -- closed_book | grounded
    source       VARCHAR NOT NULL,   -- golden | file:<name>
    n            INTEGER NOT NULL,
    metrics      JSON NOT NULL,
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE eval_items (
    eval_run_id   VARCHAR NOT NULL,
    item_id       VARCHAR NOT NULL,
    question      VARCHAR NOT NULL,
    type          VARCHAR NOT NULL,
    doc           VARCHAR,
    answer_given  VARCHAR NOT NULL,
    passed        BOOLEAN NOT NULL,
    numbers_ok    BOOLEAN NOT NULL,
    keyword_share DOUBLE NOT NULL,
    invented      VARCHAR[] NOT NULL,
    abstained     BOOLEAN NOT NULL,
    PRIMARY KEY (eval_run_id, item_id)
);
