-- Scanned PDFs (issue #19): how each page's text was read and, for OCR, how sure the engine was. Facts on a
-- page whose OCR confidence was under `ocr_min_confidence` at ingest are never trusted without a person:
-- the `auto` review policy leaves their rows waiting, and distillation never marks them auto_verified.
ALTER TABLE pages ADD COLUMN route VARCHAR DEFAULT 'text';   -- text | ocr
ALTER TABLE pages ADD COLUMN ocr_confidence DOUBLE;          -- mean per character read; NULL for text pages
ALTER TABLE pages ADD COLUMN review_required BOOLEAN DEFAULT false;
