-- Which routes a document took and the facts each produced (issue #19), as `slm docs` and the web app show it:
-- "pdf text+tables (text 192, tables 24)", "pdf ocr (ocr 99)", "docx". NULL for documents ingested before.
ALTER TABLE documents ADD COLUMN routes VARCHAR;
