"""The Great Expectations suites: `pre_review` over candidate rows, `release` over the rows to train on.

Custom expectations subclass built-in ones with fixed fields where a built-in alone would not say clearly
what is checked (a numeric share is the mean of a 0/1 column; "no conflicts" is a set membership).
"""

from __future__ import annotations

import great_expectations as gx
from great_expectations import expectations as gxe

ROW_COLUMNS = [
    "row_id",
    "doc",
    "question",
    "answer",
    "evidence",
    "kind",
    "status",
    "numbers",
    "is_numeric",
    "grounded",
    "question_length",
    "answer_length",
    "evidence_present",
    "numeric_grounded",
    "reviewed_or_verified",
    "in_conflict",
    "conflict_partner",
    "golden_overlap",
]


class ExpectNumericShareAtLeast(gxe.ExpectColumnMeanToBeBetween):
    """Share of rows whose answer states a number (mean of is_numeric) is at least the minimum."""

    column: str = "is_numeric"
    description: str = "numeric share of rows is at least the configured minimum"


class ExpectNoUnresolvedConflicts(gxe.ExpectColumnValuesToBeInSet):
    """No row takes part in a conflict that people have not resolved."""

    column: str = "in_conflict"
    value_set: list = [False]  # noqa: RUF012 (pydantic field, not a class-level constant)
    description: str = (
        "no row is in an unresolved conflict (same question, same fact, near duplicate, ledger)"
    )


class ExpectNumericRowsGrounded(gxe.ExpectColumnValuesToBeInSet):
    """Every row that states a number is grounded in a ledger fact of its chunk."""

    column: str = "numeric_grounded"
    value_set: list = [True]  # noqa: RUF012
    description: str = "every numeric row is grounded in the ledger"


class ExpectReviewedOrVerified(gxe.ExpectColumnValuesToBeInSet):
    """No risky row is still waiting for people, and nothing rejected slips in."""

    column: str = "reviewed_or_verified"
    value_set: list = [True]  # noqa: RUF012
    description: str = "every row is approved, corrected or verified by the ledger (none pending review)"


class ExpectNoGoldenOverlap(gxe.ExpectColumnValuesToBeInSet):
    """No training row asks an evaluation question (same normalised question or near duplicate)."""

    column: str = "golden_overlap"
    value_set: list = [False]  # noqa: RUF012
    description: str = "no overlap with the evaluation golden set"


class ExpectEvidencePresent(gxe.ExpectColumnValuesToBeInSet):
    """Answerable rows carry the evidence span they rely on."""

    column: str = "evidence_present"
    value_set: list = [True]  # noqa: RUF012
    description: str = "every answerable row has evidence"


def pre_review_suite(min_numeric_share: float) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name="pre_review")
    suite.add_expectation(gxe.ExpectTableColumnsToMatchSet(column_set=ROW_COLUMNS, exact_match=False))
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="row_id"))
    for column in ("question", "answer"):
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(column="question_length", min_value=4, max_value=300)
    )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(column="answer_length", min_value=1, max_value=2000)
    )
    suite.add_expectation(ExpectEvidencePresent())
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=["numeric", "text", "unanswerable"])
    )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeInSet(
            column="status",
            value_set=["generated", "auto_verified", "needs_review", "approved", "corrected", "rejected"],
        )
    )
    suite.add_expectation(ExpectNumericShareAtLeast(min_value=min_numeric_share))
    return suite


def release_suite(min_numeric_share: float) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name="release")
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="row_id"))
    suite.add_expectation(ExpectNumericShareAtLeast(min_value=min_numeric_share))
    suite.add_expectation(ExpectNoUnresolvedConflicts())
    suite.add_expectation(ExpectNumericRowsGrounded())
    suite.add_expectation(ExpectReviewedOrVerified())
    suite.add_expectation(ExpectNoGoldenOverlap())
    suite.add_expectation(ExpectEvidencePresent())
    return suite


SUITES = {"pre_review": pre_review_suite, "release": release_suite}
