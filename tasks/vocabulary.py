"""Words every stage says the same way. Lowest in ``tasks``: distill, answer and evaluate all import it."""

from __future__ import annotations

# What a model, a teacher or the guard answers when the rules do not cover a question.
ABSTAIN_TEXT = "文件中没有相关规定。"
