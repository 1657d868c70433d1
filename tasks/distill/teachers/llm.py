"""What the model teachers (gemini, openai, llamacpp) share: the prompt, the response schema, and the
parsing of what comes back (JSON repaired with json-repair, then validated row by row with pydantic)."""

from __future__ import annotations

import json
from typing import Any, Literal

import json_repair
from pydantic import BaseModel, Field, ValidationError

from tasks.distill.teachers.base import ChunkContext, QAPair

PROMPT_VERSION = "llm-v1"

SYSTEM_PROMPT = (
    "你是高校财务制度领域的专家，负责根据学校规章制度原文编写问答训练数据。"
    "规则：\n"
    "1. 只依据给出的原文作答，不得编造任何金额、比例、期限或人数；原文没有的内容不得出现在答案中。\n"
    "2. 对“数字事实”列表中的每一条，至少写一个问题，再写一两个换一种说法的同义问题。\n"
    "3. 答案必须写出原文中的准确数字和单位（如“每人每天100元”），并保留“不超过”“以上”等限定词。\n"
    "4. evidence 字段必须逐字摘抄答案所依据的原文片段。numbers 字段列出答案中出现的每个数字（按原文写法）。\n"
    "5. kind 取 numeric（答案含数字）、text（答案无数字）或 unanswerable（原文没有规定）。"
    "没有把握时把 unsure 设为 true。\n"
    "6. 只输出符合给定 JSON 模式的 JSON，不要输出其他文字。"
)


class RowModel(BaseModel):
    question: str = Field(min_length=2)
    answer: str = Field(min_length=1)
    evidence: str = ""
    numbers: list[str] = Field(default_factory=list)
    kind: Literal["numeric", "text", "unanswerable"] = "text"
    unsure: bool = False


class ResponseModel(BaseModel):
    rows: list[RowModel]


def response_json_schema() -> dict[str, Any]:
    """The JSON schema every model teacher asks for (Gemini, OpenAI json_schema, llama.cpp grammar)."""
    return ResponseModel.model_json_schema()


def build_user_prompt(chunk: ChunkContext, per_fact: int) -> str:
    facts = (
        "\n".join(
            f"- {f.subject}：{f.raw}" + (f"（{f.qualifier}）" if f.qualifier else "") for f in chunk.facts
        )
        or "（本段没有数字事实，请就审批、材料、禁止性规定等写问题）"
    )
    return (
        f"文件：{chunk.doc_name}\n位置：{chunk.heading_path or '（前言）'}\n"
        f"原文：\n{chunk.text}\n\n数字事实：\n{facts}\n\n"
        f'请为每条数字事实写 {per_fact} 个问题（含同义改写），并输出 JSON：{{"rows": [...]}}。'
    )


def parse_rows(text: str) -> tuple[list[QAPair], list[str], str | None]:
    """Rows from a model's text. Returns (rows, per-row problems, error when nothing usable came back)."""
    if not text or not text.strip():
        return [], [], "empty response"
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        data = json_repair.loads(text)  # truncated or slightly malformed JSON: repair, then validate
    if isinstance(data, list):
        data = {"rows": data}
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        return [], [], f"malformed JSON: no 'rows' array (starts {text.strip()[:60]!r})"
    rows: list[QAPair] = []
    problems: list[str] = []
    for index, item in enumerate(data["rows"]):
        try:
            row = RowModel.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            problems.append(f"row {index}: {first['loc']} {first['msg']}")
            continue
        rows.append(
            QAPair(
                question=row.question.strip(),
                answer=row.answer.strip(),
                evidence=row.evidence.strip(),
                numbers=tuple(n.strip() for n in row.numbers if n.strip()),
                kind=row.kind,
                unsure=row.unsure,
            )
        )
    if not rows:
        return [], problems, "no valid rows in the response" + (f" ({problems[0]})" if problems else "")
    return rows, problems, None
