"""The chat format rows are trained and asked in. Its version is part of every dataset id."""

from __future__ import annotations

from tasks.vocabulary import ABSTAIN_TEXT

PROMPT_FORMAT = "chat-v1"

SYSTEM_PROMPT = (
    "你是学校财务制度助手。只依据学校的规章制度回答问题，金额、比例、期限和人数必须与规定完全一致；"
    f"规定中没有的内容，回答“{ABSTAIN_TEXT}”，不要编造数字。"
)

# Grounded answering: the instruction after the system prompt, and the guard's retry prompt.
CONTEXT_INSTRUCTION = f"回答只依据下面检索到的规定原文；原文中没有答案的，回答“{ABSTAIN_TEXT}”"
EVIDENCE_LEAD = "最相关的规定："
EVIDENCE_ONLY = "只使用这些原文中的数字作答。"
NO_EVIDENCE = f"检索到的规定中没有与问题对应的数字，请回答“{ABSTAIN_TEXT}”"
# The labels of a grounded prompt's parts: the retrieved rules, then the question.
RULES_LABEL = "规定原文："
QUESTION_LABEL = "问题："

# Every instruction a model is given: an answer that only copies these is no answer (tasks.evaluate.evaluate.own_text).
PROMPT_TEXTS = (
    SYSTEM_PROMPT,
    CONTEXT_INSTRUCTION,
    EVIDENCE_LEAD,
    EVIDENCE_ONLY,
    NO_EVIDENCE,
    RULES_LABEL,
    QUESTION_LABEL,
)


def chat_messages(question: str, answer: str | None = None) -> list[dict[str, str]]:
    """System, user and (for training) assistant messages."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages
