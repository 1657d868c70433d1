-- Evaluation keeps both families: what the model wrote and what the user was shown, and the guard's action.
-- answer_given and the existing score columns are the *model* family (the model's draft, or its constrained
-- retry); shown_* score what the guard let the user see. Rows stored before this migration scored the shown
-- answer in answer_given; their guard_action is NULL.
ALTER TABLE eval_items ADD COLUMN question_set VARCHAR;
ALTER TABLE eval_items ADD COLUMN draft VARCHAR;
ALTER TABLE eval_items ADD COLUMN guard_action VARCHAR;  -- passed | retried_ok | quoted_evidence | abstained | flagged | unguarded
ALTER TABLE eval_items ADD COLUMN shown VARCHAR;
ALTER TABLE eval_items ADD COLUMN shown_passed BOOLEAN;
ALTER TABLE eval_items ADD COLUMN shown_numbers_ok BOOLEAN;
ALTER TABLE eval_items ADD COLUMN shown_abstained BOOLEAN;
ALTER TABLE eval_items ADD COLUMN shown_invented VARCHAR[];
ALTER TABLE eval_items ADD COLUMN echoed BOOLEAN;             -- the model's answer only copied the prompt or question
ALTER TABLE eval_items ADD COLUMN other_subject VARCHAR[];    -- ledger quantities of another subject it stated
ALTER TABLE eval_items ALTER COLUMN keyword_share DROP NOT NULL;  -- NULL: the item has no keywords
