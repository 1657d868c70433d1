-- The model registry (base, challenger, champion, retired, rejected) and the GGUF files exported from it.
CREATE TABLE models (
    model_id      VARCHAR PRIMARY KEY,   -- tasks.export.model_id_for: hash of the adapter weights, or of the base
    kind          VARCHAR NOT NULL,      -- base | challenger | champion | retired | rejected
    base_spec     VARCHAR NOT NULL,      -- as given to training: alias, folder, .gguf or HF id
    adapter_path  VARCHAR,               -- the LoRA adapter folder; NULL for a base model
    dataset_id    VARCHAR,               -- the dataset snapshot it was trained on
    train_metrics JSON,                  -- slm_adapter.json essentials (losses, steps, speed)
    eval_metrics  JSON,                  -- the latest evaluation (tasks.evaluate.aggregate output)
    status        VARCHAR NOT NULL,      -- registered | evaluated | exported | ... (free lifecycle word)
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    promoted_at   TIMESTAMP,             -- when it last became champion
    note          VARCHAR                -- why it was promoted, refused or retired
);

CREATE TABLE exports (
    export_id   VARCHAR PRIMARY KEY,     -- sha256 of the file: the same bytes are the same export
    model_id    VARCHAR NOT NULL,
    path        VARCHAR NOT NULL,
    quant       VARCHAR NOT NULL,        -- f32 | f16 | q8_0 | q4_k_m (an adapter: f32 | f16)
    size_bytes  BIGINT NOT NULL,
    sha256      VARCHAR NOT NULL,
    source      VARCHAR NOT NULL,        -- merged | base | adapter (LoRA-only GGUF for a base GGUF)
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);
