"""Which model a name means, and which GGUF runs it: the one place that reads ``champion``, ``base``,
``challenger``, a model id, a ``.gguf`` file or an adapter folder (the CLI's ``ask``, ``chat``, ``eval``,
``export``, ``serve-model`` and the Prefect wrappers' evaluation and export all ask here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.config import Settings

__all__ = [
    "ModelNotFound",
    "ResolvedModel",
    "close_generator",
    "contenders",
    "generator_for",
    "resolve_model",
]


class ModelNotFound(LookupError):
    """No model, file or export answers to the name; the message says what to run instead."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model as the registry knows it: its row (None for the untuned base, a file or a folder), the base
    it builds on, its adapter folder (None: the base alone), and its newest full GGUF export, if any."""

    spec: str | None  # what was asked for
    base_spec: str
    row: dict[str, Any] | None = None
    adapter: Path | None = None
    gguf: Path | None = None
    fell_back: bool = False  # "champion" asked, none promoted yet: the untuned base is what serves

    @property
    def model_id(self) -> str | None:
        return self.row["model_id"] if self.row else None

    @property
    def what(self) -> str:
        """How reports name it."""
        if self.fell_back:
            return "untuned base (no champion yet)"
        return self.spec or "champion"

    def runnable_gguf(self) -> Path:
        """The GGUF to answer with, or ``ModelNotFound`` saying which export to run first."""
        if self.gguf is None:
            spec = "base" if self.fell_back else self.spec
            command = "slm export" + (f" --model {spec}" if spec else "")
            raise ModelNotFound(f"no exported model: run `{command}` first")
        return self.gguf

    def export(
        self,
        con: Any,
        settings: Settings,
        quant: str | None = None,
        adapter_only: bool = False,
        reuse: bool = False,
    ) -> Any:
        """Export this model (merged, or the adapter alone) as GGUF into the workspace; ``reuse`` returns an
        earlier export of the same model and quantisation instead of writing it again."""
        from tasks.export.export import export_model

        return export_model(
            self.adapter,
            self.base_spec,
            settings.artifacts_dir / "gguf",
            quant or settings.export_quant,
            adapter_only,
            cache_dir=settings.models_cache,
            con=con,
            model_id=self.model_id,
            reuse=reuse,
        )


def resolve_model(con: Any, settings: Settings, spec: str | None, base: str | None = None) -> ResolvedModel:
    """``spec``: ``champion`` (the base until one is promoted), ``base``, ``challenger`` (the newest),
    a model id or its prefix, a ``.gguf`` file (no warehouse needed: ``con`` may be None), an adapter
    folder, or None (the champion: what answers users unless they name another model; a refused challenger's
    export is newer but never the default). ``base`` overrides the setting ``base_model`` for the untuned base
    and for adapter folders."""
    base_spec = base or settings.base_model
    spec = spec or "champion"
    if spec.endswith(".gguf"):
        if not Path(spec).is_file():
            raise ModelNotFound(f"{spec}: GGUF file not found")
        return ResolvedModel(spec, base_spec, gguf=Path(spec))
    from warehouse.models import get_champion, list_exports, list_models

    # Adapter-only exports need the base GGUF beside them: only full exports are runnable on their own.
    exports = [e for e in list_exports(con) if e.get("source") != "adapter"]
    if spec == "champion":
        champion = get_champion(con)
        if champion is None:
            base_model = resolve_model(con, settings, "base", base)
            return ResolvedModel("champion", base_model.base_spec, gguf=base_model.gguf, fell_back=True)
        return _registered("champion", champion, [champion], exports)
    if spec == "base":
        return ResolvedModel(
            "base", base_spec, gguf=_newest([e for e in exports if e.get("source") == "base"])
        )
    if spec == "challenger":
        challengers = list_models(con, "challenger")
        if not challengers or not challengers[0].get("adapter_path"):
            raise ModelNotFound("no challenger model yet: train one with `slm train`")
        return _registered(spec, challengers[0], challengers[:1], exports)
    models = list_models(con)
    exact = [m for m in models if m["model_id"] == spec]
    matches = exact or [m for m in models if m["model_id"].startswith(spec)]
    if matches:
        return _registered(spec, matches[0], matches, exports)
    if Path(spec).is_dir():
        return ResolvedModel(spec, base_spec, adapter=Path(spec))
    raise ModelNotFound(f"no {spec} model (see `slm models`; or a .gguf file, or an adapter folder)")


def _registered(
    spec: str, row: dict[str, Any], rows: list[dict[str, Any]], exports: list[dict[str, Any]]
) -> ResolvedModel:
    ids = {m["model_id"] for m in rows}
    adapter = Path(row["adapter_path"]) if row.get("adapter_path") else None
    return ResolvedModel(
        spec, row["base_spec"], row, adapter, _newest([e for e in exports if e.get("model_id") in ids])
    )


def _newest(exports: list[dict[str, Any]]) -> Path | None:
    """``list_exports`` is newest first."""
    return Path(exports[0]["path"]) if exports else None


def contenders(
    con: Any, settings: Settings, challenger_id: str, base: str | None = None
) -> dict[str, ResolvedModel]:
    """What a challenger is evaluated against: the untuned base, and the champion when one with an
    adapter is promoted (and is not the challenger itself)."""
    models = {
        "base": resolve_model(con, settings, "base", base),
        "challenger": resolve_model(con, settings, challenger_id),
    }
    champion = resolve_model(con, settings, "champion")
    if champion.adapter is not None and champion.model_id != challenger_id:
        models["champion"] = champion
    return models


def generator_for(
    con: Any,
    settings: Settings,
    model: ResolvedModel,
    backend: str = "llamacpp",
    base: str | None = None,
    export: bool = False,
) -> Any:
    """The call a model answers through: its GGUF in llama.cpp (with ``export``, exported now or an earlier
    export reused; without, its newest export must exist), or transformers with its adapter on ``base``."""
    if backend == "llamacpp":
        from tasks.answer.serve import answering_generator

        gguf = model.export(con, settings, reuse=True).path if export else model.runnable_gguf()
        return answering_generator(gguf, settings)
    if backend != "transformers":
        raise ValueError(f"backend must be llamacpp or transformers, not {backend!r}")
    from tasks.answer.generate import TransformersGenerator

    generator = TransformersGenerator(
        base or model.base_spec, model.adapter, settings.models_cache, settings.answer_max_tokens
    )
    return generator.messages_call()


def close_generator(generator: Any) -> None:
    """Free a llama.cpp model (a transformers call has nothing to close)."""
    close = getattr(generator, "close", None)
    if callable(close):
        close()
