"""Typed configuration: job settings, distillation settings and the TOML job file, validated by pydantic."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdmkb.services.errors import ConfigError


# A KB name is used in file names, metric labels and Ray actor names.
KB_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DistillSettings(Strict):
    """How a student learns from soft labels (paper eq. 1, 5-9, §3.3)."""

    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation loss: L = (1-alpha) L_own + alpha L_KD.")
    top_k: int = Field(10, gt=0, description="Teacher's top-k candidates per query (plus as many random ones).")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of teacher and student distributions.")
    relation_weight: float = Field(
        0.25, ge=0, description="Weight of relation distillation against entity distillation (paper eq. 5: 1; see docs/demo.md for why less); 0 sends no relation soft labels."
    )
    score_dtype: Literal["float32", "float16"] = Field("float32", description="Precision of teacher scores on the wire.")
    candidate_refresh_epochs: float = Field(
        4.0, ge=0, description="A teacher searches a query's top-k candidates again once its last search is this many epochs old (0: every visit)."
    )
    combination: str = Field("mean-kl", description="How a student combines its teachers' soft labels (kb_worker/combining.py): mean-kl is the paper's eq. 5.")
    combination_settings: dict = Field(default_factory=dict, description="Settings of the teacher combination.")

    @model_validator(mode="after")
    def _known_combination(self) -> "DistillSettings":
        from kdmkb.kb_worker.combining import COMBINATIONS

        try:
            combination = COMBINATIONS.get(self.combination)
        except ConfigError as error:
            raise ConfigError(f"combination: {error}") from None
        self.combination_settings = validate(combination.settings_model, self.combination_settings, "combination_settings").model_dump(exclude_unset=True)
        return self


class JobSettings(DistillSettings):
    """Everything a job needs besides its KBs and strategy."""

    rounds: int = Field(30, gt=0, description="Rounds of the job; every KB's training budget is rounds x steps_per_round steps.")
    steps_per_round: int = Field(20, gt=0, description="Training steps of every KB per round; soft labels are exchanged once per round for all its steps.")
    seed: int = Field(0, description="Seed of model initialisation, batch order and negative sampling.")
    eval_every: int = Field(0, ge=0, description="Evaluate on the valid split every N rounds (0: only at the end).")
    checkpoint_every: int = Field(10, ge=0, description="Checkpoint every worker every N rounds so a restarted coordinator resumes (0: only at the end, where every job checkpoints).")
    keep_checkpoints: int = Field(3, ge=1, le=100, description="Checkpoints kept per KB; a damaged latest one falls back to the one before.")

    def distill(self) -> DistillSettings:
        return DistillSettings(**{name: getattr(self, name) for name in DistillSettings.model_fields})


class KBEntry(Strict):
    name: str = Field(description="Unique name of the KB.")
    data: Path = Field(description="KB folder (train/valid/test TSV); relative to the job file.")
    worker_type: str = Field("transe", description="Registered worker type.")
    settings: dict = Field(default_factory=dict, description="Worker-type settings.")
    resource: str = Field("", description="Optional Ray resource the KB's worker needs (the node that holds its data).")


class AlignmentEntry(Strict):
    kbs: tuple[str, str] = Field(description="The two aligned KBs.")
    entities: Path | None = Field(None, description="TSV of entity name pairs; default: identical names.")
    relations: Path | None = Field(None, description="TSV of relation name pairs; default: identical names.")


class JobFile(Strict):
    """A TOML job file: the strategy, ``[job]`` settings, ``[[kb]]`` entries and ``[[alignment]]`` entries.

    ``strategy`` is a name, or a ``[strategy]`` table with ``name`` and the strategy's own settings.
    """

    strategy: str = Field("cooperative", description="A registered strategy: none, one-way, sequential, cooperative.")
    strategy_settings: dict = Field(default_factory=dict, description="The strategy's own settings (coordinator/strategies.py).")
    job: JobSettings = Field(default_factory=JobSettings)
    kb: list[KBEntry] = Field(min_length=1)
    alignment: list[AlignmentEntry] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _strategy_table(cls, raw):
        """``[strategy]`` with ``name`` and settings becomes ``strategy`` and ``strategy_settings``."""
        if isinstance(raw, dict) and isinstance(raw.get("strategy"), dict):
            table = dict(raw["strategy"])
            if "strategy_settings" in raw:
                raise ValueError("give the strategy's settings in the [strategy] table or in strategy_settings, not both")
            raw = {**raw, "strategy": table.pop("name", "cooperative"), "strategy_settings": table}
        return raw

    @model_validator(mode="after")
    def _owners_validate_their_settings(self) -> "JobFile":
        """The strategy's and each worker type's settings, checked when the file is read, not at the first RPC."""
        from kdmkb.coordinator.strategies import validate_strategy_settings
        from kdmkb.kb_worker.worker_types import WORKER_TYPES

        strategy_settings = validate_strategy_settings(self.strategy, self.strategy_settings)
        strategy_settings.check_kbs([entry.name for entry in self.kb])
        self.strategy_settings = strategy_settings.model_dump(exclude_unset=True)
        for index, entry in enumerate(self.kb):
            try:
                worker_type = WORKER_TYPES.get(entry.worker_type)
            except ConfigError as error:
                raise ConfigError(f"kb[{index}].worker_type: {error}") from None
            entry.settings = validate(worker_type.settings_model, entry.settings, prefix=f"kb[{index}].settings").model_dump(exclude_unset=True)
        return self

    def filled(self) -> dict:
        """The job file as it runs, every default written out (strategy, job and each worker type's settings), as plain
        TOML-ready values. TOML has no null: a setting left to its owner's own default (None) stays out."""
        from kdmkb.coordinator.strategies import validate_strategy_settings
        from kdmkb.kb_worker.worker_types import WORKER_TYPES

        raw = self.model_dump(mode="json")
        raw["strategy_settings"] = validate_strategy_settings(self.strategy, self.strategy_settings).model_dump(mode="json")
        for entry in raw["kb"]:
            entry["settings"] = WORKER_TYPES.get(entry["worker_type"]).validate_settings(entry["settings"]).model_dump(mode="json")
        return _without_none(raw)

    @field_validator("kb")
    @classmethod
    def _unique_names(cls, entries: list[KBEntry]) -> list[KBEntry]:
        names = [entry.name for entry in entries]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate KB names: {', '.join(duplicates)}")
        return entries


def _without_none(value):
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_none(item) for item in value if item is not None]
    return value


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """``field.path: message`` for each problem, the form every kdmkb config error takes."""
    parts = []
    for problem in error.errors():
        cause = problem.get("ctx", {}).get("error")
        if isinstance(cause, ConfigError):  # a validator that names its field, under the model's location
            parts.append(".".join(str(part) for part in (prefix, *problem["loc"], cause) if part != ""))
            continue
        location = ".".join(str(part) for part in (prefix, *problem["loc"]) if part != "")
        parts.append(f"{location or prefix or 'value'}: {problem['msg']}")
    return "; ".join(parts)


def validate(model: type[BaseModel], raw: dict, prefix: str = ""):
    """``model.model_validate(raw)`` with a :class:`ConfigError` naming the bad field."""
    try:
        return model.model_validate(raw or {})
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, prefix)) from None


def load_job_file(path: Path | str) -> JobFile:
    """Reads a TOML job file; relative paths in it are resolved against the file's folder."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    return job_file_from_dict(raw, path.parent)


def job_file_from_dict(raw: dict, base: Path | str = ".") -> JobFile:
    """A job file's content as a :class:`JobFile`; relative paths in it are resolved against ``base``."""
    job = validate(JobFile, raw, prefix="")
    base = Path(base)
    for entry in job.kb:
        entry.data = (base / entry.data).resolve()
    for alignment in job.alignment:
        alignment.entities = (base / alignment.entities).resolve() if alignment.entities else None
        alignment.relations = (base / alignment.relations).resolve() if alignment.relations else None
    return job
