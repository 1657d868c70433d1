"""The Ollama Modelfile `slm export` writes beside a GGUF: parsed with the Modelfile grammar Ollama documents
(``INSTRUCTION arguments`` per line, ``#`` comments, ``"..."`` and ``\"\"\"...\"\"\"`` values, PARAMETER
name value), and its TEMPLATE rendered the way Ollama renders a variable-based template (once per
user/assistant turn, the system prompt in the first, the last turn cut after ``.Response``) must give the
prompt the Hugging Face chat template gives, for Gemma, ChatML (Qwen) and the generic template."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tasks.answer.prompts import SYSTEM_PROMPT
from tasks.export.ollama import ModelfileError, modelfile_text, ollama_template, tokenizer_renderer
from tasks.models.base_models import GEMMA_CHAT_TEMPLATE, SIMPLE_CHAT_TEMPLATE, load_tokenizer

# --- the Modelfile grammar (Ollama's docs/modelfile.md and parser/parser.go) ---------------------------------

COMMANDS = {
    "from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message",
    "requires",
}  # fmt: skip
_NAME = re.compile(r"([A-Za-z]+)[ \t]+")
_PARAMETER = re.compile(r"([A-Za-z0-9_]+)[ \t]+")
_TRIPLE = re.compile(r'"""(.*?)"""[ \t]*(?:\r?\n|$)', re.DOTALL)  # ends at """ followed by the line's end
_DOUBLE = re.compile(r'"(.*?)"[ \t]*(?:\r?\n|$)', re.DOTALL)


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(instruction, value) pairs; PARAMETER gives (parameter name, value), FROM gives ("from", path)."""
    commands: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        if text[i] in " \t\r\n":
            i += 1
            continue
        if text[i] == "#":  # a comment runs to the end of its line
            end = text.find("\n", i)
            i = len(text) if end < 0 else end + 1
            continue
        line = text.count("\n", 0, i) + 1
        found = _NAME.match(text, i)
        if not found or found.group(1).lower() not in COMMANDS:
            raise ValueError(f"line {line}: command must be one of {', '.join(sorted(COMMANDS))}")
        name, i = found.group(1).lower(), found.end()
        if name == "parameter":
            found = _PARAMETER.match(text, i)
            if not found:
                raise ValueError(f"line {line}: PARAMETER needs a name and a value")
            name, i = found.group(1), found.end()
        quoted = _TRIPLE.match(text, i) if text.startswith('"""', i) else None
        if quoted is None and text.startswith('"', i):
            quoted = _DOUBLE.match(text, i)
        if quoted is not None:
            value, i = quoted.group(1), quoted.end()
        elif text.startswith('"', i):
            raise ValueError(f"line {line}: unterminated quoted value")
        else:
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            value, i = text[i:end].strip(), end
        commands.append((name, value))
    if not any(name == "from" for name, _ in commands):
        raise ValueError("no FROM line")
    return commands


def fields(commands: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in commands:
        out.setdefault(name, []).append(value)
    return out


# --- the subset of Go templates our TEMPLATE uses, rendered as Ollama renders a legacy template -------------

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)


def parse_go(template: str) -> list[Any]:
    """Nodes: ("text", s), ("field", name), ("if", name, then, else). Trim markers ``{{-``/``-}}`` honoured;
    any other action fails the test (the template would need more than this subset)."""
    pieces: list[Any] = []
    pos, trim_next = 0, False
    for action in _ACTION.finditer(template):
        text = template[pos : action.start()]
        text = text.lstrip(" \t\r\n") if trim_next else text
        pieces.append(("text", text.rstrip(" \t\r\n") if action.group(1) else text))
        pieces.append(("action", action.group(2)))
        pos, trim_next = action.end(), bool(action.group(3))
    tail = template[pos:]
    pieces.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    root: list[Any] = []
    stack: list[tuple[list[Any], list[Any]]] = []  # (if node, the list being filled)
    current = root
    for kind, value in pieces:
        if kind == "text":
            current.append(("text", value))
        elif re.fullmatch(r"\.\w+", value):
            current.append(("field", value[1:]))
        elif found := re.fullmatch(r"if \.(\w+)", value):
            node = ["if", found.group(1), [], []]
            current.append(node)
            stack.append((node, current))
            current = node[2]
        elif value == "else":
            current = stack[-1][0][3]
        elif value == "end":
            current = stack.pop()[1]
        else:
            raise AssertionError(f"template action {value!r} is outside the subset this test renders")
    assert not stack, "an {{ if }} without {{ end }}"
    return root


def render_go(nodes: list[Any], values: dict[str, str]) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "field":
            out.append(values.get(node[1], ""))
        else:
            out.append(render_go(node[2] if values.get(node[1]) else node[3], values))
    return "".join(out)


def cut_after_response(nodes: list[Any], state: dict[str, bool]) -> list[Any]:
    """Ollama's deleteNode: everything after the ``.Response`` field, in document order, is dropped."""
    kept: list[Any] = []
    for node in nodes:
        if state["cut"]:
            continue
        if node[0] == "field" and node[1] == "Response":
            state["cut"] = True
        if node[0] == "if":
            node = ["if", node[1], cut_after_response(node[2], state), cut_after_response(node[3], state)]
        kept.append(node)
    return kept


def ollama_prompt(template: str, messages: list[dict[str, str]]) -> str:
    """The prompt Ollama builds from a variable-based template (template.go, Execute's legacy path)."""
    nodes = parse_go(template)
    out = []
    values = {"System": "", "Prompt": "", "Response": ""}
    for message in messages:
        role, content = message["role"], message["content"]
        if (role == "system" and (values["Prompt"] or values["Response"])) or (
            role == "user" and values["Response"]
        ):
            out.append(render_go(nodes, values))
            values = {"System": "", "Prompt": "", "Response": ""}
        values[{"system": "System", "user": "Prompt", "assistant": "Response"}[role]] = content
    out.append(render_go(cut_after_response(nodes, {"cut": False}), values))
    return "".join(out)


# --- chat templates --------------------------------------------------------------------------------------------

# Qwen2.5's ChatML template (its tool branches left out): a default system prompt when none is given.
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role != 'system' -%}"
    "{{ '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
EXPECTED_TEMPLATES = {
    "gemma": "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n"
    "<start_of_turn>model\n{{ .Response }}<eos>\n",
    "chatml": "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n"
    "{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ .Response }}<|im_end|>\n",
    "generic": "{{ if .System }}<|system|>\n{{ .System }}<eos>\n{{ end }}<|user|>\n{{ .Prompt }}<eos>\n"
    "<|assistant|>\n{{ .Response }}<eos>\n",
}
CHAT_TEMPLATES = {"gemma": GEMMA_CHAT_TEMPLATE, "chatml": QWEN_CHAT_TEMPLATE, "generic": SIMPLE_CHAT_TEMPLATE}
CONVERSATION = [
    {"role": "system", "content": SYSTEM_PROMPT},
    {"role": "user", "content": "出差伙食补助费每人每天多少钱？"},
    {"role": "assistant", "content": "每人每天100元。"},
    {"role": "user", "content": "去新疆呢？"},
    {"role": "assistant", "content": "赴西藏、青海、新疆的，每人每天120元。"},
    {"role": "user", "content": "住宿费呢？"},
]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture
def tokenizer(tiny_base: Path) -> Any:
    return load_tokenizer(
        tiny_base
    )  # Gemma's template: the tiny vocabulary has <start_of_turn>/<end_of_turn>


def hf_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text.removeprefix(tokenizer.bos_token or "")  # llama.cpp adds BOS as a token, not as text


@pytest.mark.parametrize("family", list(CHAT_TEMPLATES))
def test_template_renders_the_hf_prompt_in_ollama(tokenizer: Any, family: str) -> None:
    tokenizer.chat_template = CHAT_TEMPLATES[family]
    template = ollama_template(tokenizer_renderer(tokenizer), tokenizer.bos_token)
    assert template == EXPECTED_TEMPLATES[family]
    for turns in (2, 4, 6):  # one question; a question after an answer; after two answers
        conversation = CONVERSATION[:turns]
        assert ollama_prompt(template, conversation) == hf_prompt(tokenizer, conversation), turns


def test_templates_ollama_cannot_express_are_refused(tokenizer: Any) -> None:
    # The system prompt after the conversation: a second turn changes where it sits.
    tokenizer.chat_template = (
        "{%- for m in messages if m.role != 'system' -%}{{ m.role + ': ' + m.content + '\n' }}{%- endfor -%}"
        "{{ messages[0].content }}{%- if add_generation_prompt -%}{{ 'assistant: ' }}{%- endif -%}"
    )
    with pytest.raises(ModelfileError, match="renders earlier turns differently"):
        ollama_template(tokenizer_renderer(tokenizer), tokenizer.bos_token)
    tokenizer.chat_template = "{{ raise_exception('no system role') }}"
    with pytest.raises(ModelfileError, match="cannot render a system prompt"):
        ollama_template(tokenizer_renderer(tokenizer), tokenizer.bos_token)


def test_modelfile_grammar() -> None:
    text = modelfile_text("./m.gguf", EXPECTED_TEMPLATES["chatml"], ["<|im_end|>"], adapter_name="./a.gguf")
    parsed = fields(parse_modelfile(text))
    assert parsed["from"] == ["./m.gguf"] and parsed["adapter"] == ["./a.gguf"]
    assert parsed["template"] == [EXPECTED_TEMPLATES["chatml"]] and parsed["system"] == [SYSTEM_PROMPT]
    assert parsed["stop"] == ["<|im_end|>"] and parsed["temperature"] == ["0"]
    with pytest.raises(ModelfileError, match='SYSTEM contains """'):
        modelfile_text("./m.gguf", "{{ .Prompt }}", [], system='say """hi"""')
    # The parser itself is strict where Ollama's is: an unknown instruction, no FROM, an open quote.
    for bad, message in (("FORM ./m.gguf\n", "command must be one of"), ("SYSTEM hi\n", "no FROM")):
        with pytest.raises(ValueError, match=message):
            parse_modelfile(bad)
    with pytest.raises(ValueError, match="unterminated"):
        parse_modelfile('FROM ./m.gguf\nSYSTEM """open\n')


def test_export_writes_a_modelfile_beside_the_gguf(tiny_base: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from tasks.export.export import export_model, read_gguf

    result = export_model(None, str(tiny_base), tmp_path / "out", quant="f16")
    assert result.modelfile == result.path.with_name(f"{result.path.stem}.Modelfile")
    parsed = fields(parse_modelfile(result.modelfile.read_text(encoding="utf-8")))
    (source,) = parsed["from"]
    assert source == f"./{result.path.name}" and (result.modelfile.parent / source).resolve() == result.path
    assert parsed["template"] == [EXPECTED_TEMPLATES["gemma"]]
    assert parsed["system"] == [SYSTEM_PROMPT] and parsed["temperature"] == ["0"]
    assert parsed["stop"] == ["<eos>"]
    vocabulary = {
        t.decode() if isinstance(t, bytes) else t
        for t in read_gguf(result.path).value("tokenizer.ggml.tokens")
    }
    assert set(parsed["stop"]) <= vocabulary  # each stop text is one token of the exported model
    # The same prompt as the chat template stored in the GGUF (what llama.cpp front ends use).
    tokenizer = load_tokenizer(tiny_base)
    assert read_gguf(result.path).value("tokenizer.chat_template") == tokenizer.chat_template
    assert ollama_prompt(parsed["template"][0], CONVERSATION) == hf_prompt(tokenizer, CONVERSATION)


def test_adapter_export_without_a_base_gguf_writes_no_modelfile(tiny_base: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tasks.export.export import export_model

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(tmp_path / "adapter")
    result = export_model(
        tmp_path / "adapter", str(tiny_base), tmp_path / "out", quant="f16", adapter_only=True
    )
    assert result.kind == "adapter" and result.path.is_file()
    # An Ollama ADAPTER needs a base GGUF to sit on (FROM); a base that is a transformers folder has none.
    assert result.modelfile is None and "no Modelfile: the adapter's base is not a GGUF file" in result.notes
    assert not list((tmp_path / "out").glob("*.Modelfile"))
