-- Ingestion and the numeric fact ledger. Ids are content hashes (see tasks/ingest.py).
CREATE TABLE documents (
    doc_id      VARCHAR PRIMARY KEY,   -- sha256 of the file bytes
    name        VARCHAR NOT NULL,      -- file name as given
    path        VARCHAR NOT NULL,
    kind        VARCHAR NOT NULL,      -- pdf | txt | md
    size_bytes  BIGINT NOT NULL,
    encoding    VARCHAR,               -- detected text encoding (txt/md)
    page_count  INTEGER,
    char_count  INTEGER,
    text        VARCHAR,               -- the normalised text; chunk offsets point into it
    status      VARCHAR NOT NULL,      -- ok | failed
    error       VARCHAR,               -- why it failed, one line
    ingested_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE pages (
    doc_id      VARCHAR NOT NULL,
    page_no     INTEGER NOT NULL,      -- 1-based; a text file is one page
    start_char  INTEGER NOT NULL,      -- where this page's text starts in documents.text
    char_count  INTEGER NOT NULL,
    PRIMARY KEY (doc_id, page_no)
);

CREATE TABLE chunks (
    chunk_id     VARCHAR PRIMARY KEY,  -- hash of doc_id, offsets and text
    doc_id       VARCHAR NOT NULL,
    seq          INTEGER NOT NULL,
    heading_path VARCHAR NOT NULL,     -- e.g. 第三章 差旅费 > 第十二条
    text         VARCHAR NOT NULL,     -- == documents.text[start_char:end_char]
    start_char   INTEGER NOT NULL,
    end_char     INTEGER NOT NULL,
    page_start   INTEGER,
    page_end     INTEGER
);

CREATE TABLE facts (
    fact_id     VARCHAR PRIMARY KEY,   -- hash of doc_id, position and raw text
    doc_id      VARCHAR NOT NULL,
    chunk_id    VARCHAR NOT NULL,
    value       VARCHAR NOT NULL,      -- canonical decimal string in the base unit (5 万元 -> 50000)
    value_max   VARCHAR,               -- upper end of a range, else NULL
    unit        VARCHAR NOT NULL,
    raw         VARCHAR NOT NULL,      -- as written
    qualifier   VARCHAR NOT NULL,
    subject     VARCHAR NOT NULL,      -- the phrase the number belongs to
    context     VARCHAR NOT NULL,      -- the sentence it stands in
    span_start  INTEGER NOT NULL,      -- offsets of raw inside chunks.text
    span_end    INTEGER NOT NULL
);
