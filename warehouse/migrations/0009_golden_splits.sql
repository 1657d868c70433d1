-- Two golden splits (see tasks/golden.py): *recall* items ask facts training sees in phrasings it never
-- sees; *reading* items ask facts held out of training entirely. Items from question files have no split.
ALTER TABLE golden_items ADD COLUMN split VARCHAR;                  -- recall | reading | NULL (file items)
ALTER TABLE golden_items ADD COLUMN fact_ids VARCHAR[] DEFAULT [];  -- ledger facts the item asks about
ALTER TABLE golden_items ADD COLUMN phrasing VARCHAR;               -- recall: the phrasing key kept out of training
