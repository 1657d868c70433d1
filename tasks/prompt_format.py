"""The chat format rows are trained and asked in. Its version is part of every dataset id."""

from __future__ import annotations

PROMPT_FORMAT = "chat-v1"

SYSTEM_PROMPT = (
    "你是学校财务制度助手。只依据学校的规章制度回答问题，金额、比例、期限和人数必须与规定完全一致；"
    "规定中没有的内容，回答“文件中没有相关规定。”，不要编造数字。"
)


def chat_messages(question: str, answer: str | None = None) -> list[dict[str, str]]:
    """System, user and (for training) assistant messages."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages
