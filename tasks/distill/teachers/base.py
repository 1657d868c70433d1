"""The one teacher interface: a chunk and its ledger facts in, question/answer rows out.

Every teacher (extractive, gemini, openai, llamacpp) returns a ``TeacherOutput`` for a chunk: rows, the raw
model text (kept for audit and for failures), token usage, and an error when the chunk produced no usable
rows. A teacher never drops a failure silently: it raises nothing for bad model output, it reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from tasks.ingest.facts import Fact

if TYPE_CHECKING:
    from runtime.config import Settings

# A ledger fact as a teacher sees it is the one fact type; the name stays for the teacher interface.
FactRef = Fact


@dataclass(frozen=True)
class ChunkContext:
    """One chunk to distil: its text, where it stands, and its ledger facts."""

    chunk_id: str
    doc_id: str
    doc_name: str
    heading_path: str
    text: str
    facts: tuple[FactRef, ...] = ()


@dataclass(frozen=True)
class QAPair:
    """A generated row before verification."""

    question: str
    answer: str
    evidence: str  # the span of the chunk the answer relies on ("" for unanswerable)
    numbers: tuple[str, ...] = ()  # numbers the answer states, as the teacher reports them
    kind: str = "text"  # numeric | text | unanswerable
    unsure: bool = False
    fact_ids: tuple[str, ...] = ()  # facts the teacher built the row from, when it knows


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd += other.cost_usd

    def bill(self, prompt_tokens: int, completion_tokens: int, settings: Settings) -> None:
        """Adds one response's tokens and their cost at the configured prices (USD per million tokens)."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += (
            prompt_tokens * settings.price_input_per_mtok + completion_tokens * settings.price_output_per_mtok
        ) / 1_000_000


@dataclass
class TeacherOutput:
    rows: list[QAPair] = field(default_factory=list)
    raw_text: str | None = None  # what the model said, verbatim (None for the extractive teacher)
    usage: Usage = field(default_factory=Usage)
    error: str | None = None  # set when the chunk failed; raw_text keeps what came back
    problems: list[str] = field(default_factory=list)  # rows that were dropped as invalid, and why

    @property
    def failed(self) -> bool:
        return self.error is not None


class Teacher(Protocol):
    """``name``, ``model`` and ``prompt_version`` form the cache key with the chunk's content hash."""

    name: str
    model: str
    prompt_version: str

    def generate(self, chunk: ChunkContext) -> TeacherOutput: ...


class TeacherConfigError(ValueError):
    """A teacher cannot be built from the configuration (missing key, unknown name); says which setting."""
