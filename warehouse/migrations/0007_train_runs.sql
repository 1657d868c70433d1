-- Training runs: what was trained on what, how, how fast, and where the adapter is.
CREATE TABLE train_runs (
    train_run_id   VARCHAR PRIMARY KEY,
    dataset_id     VARCHAR NOT NULL,
    base_spec      VARCHAR NOT NULL,
    base_path      VARCHAR,
    base_hash      VARCHAR,
    profile        VARCHAR NOT NULL,
    config         JSON NOT NULL,
    device         VARCHAR NOT NULL,
    wall_s         DOUBLE,
    tokens_per_s   DOUBLE,
    peak_rss_mb    DOUBLE,
    optimizer_steps INTEGER,
    final_train_loss DOUBLE,
    final_eval_loss  DOUBLE,
    loss_curve     JSON,
    adapter_path   VARCHAR NOT NULL,
    model_id       VARCHAR,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp
);
