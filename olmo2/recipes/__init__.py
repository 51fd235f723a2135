"""Experiment recipes as typed Python functions, a registry, and the `--set` override parser.

    from olmo2.recipes import RECIPES, get_recipe, apply_overrides
    r = get_recipe("olmo2_1b_stage2:42")          # NAME or NAME:SEED (stage-2 recipes)
    r = apply_overrides(r, ["train.lr=1e-3", "model.n_layers=2"])
    olmo2 train --recipe tiny_stage1 --set train.max_steps=10 --out runs/t

A `Recipe` is (name, model: ModelConfig, train: TrainConfig, data: Mix). Published
recipes live in `olmo2/recipes/olmo2.py` (facts §1.4, §3, §4), CPU-sized ones in
`olmo2/recipes/tiny.py`. Recipes are built on demand, so defining one never touches data:
a Mix only lists its shard paths until a loader is built from it.

Override syntax: `section.field=value` with section `model`, `train` or `data` (`data.seed`
only). Values are coerced from the field's annotation: int (accepts `1e6`, `1_000`),
float, bool (true/false/1/0/yes/no), str, `None`/`null` for optional fields, and
comma-separated tuples (`train.betas=0.9,0.95`). Unknown sections/fields and bad values
raise `ConfigError` with one line naming the override.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from typing import Callable

from olmo2.config import ModelConfig
from olmo2.data.mix import Mix
from olmo2.errors import ConfigError
from olmo2.train.config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """One training stage: the model shape, every loop knob, and the data mix."""

    name: str
    model: ModelConfig
    train: TrainConfig
    data: Mix
    notes: str = ""
    """Provenance and caveats (sources in ../shared/docs/olmo2-facts.md)."""

    def replace(self, **kw) -> "Recipe":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        """JSON-ready resolved config (written next to checkpoints as recipe.json)."""
        return {"name": self.name, "model": dataclasses.asdict(self.model), "train": self.train.to_dict(),
                "data": {"name": self.data.name, "seed": self.data.seed,
                         "sources": [{"name": s.name, "paths": list(s.paths), "target_tokens": s.target_tokens}
                                     for s in self.data.sources]},
                "notes": self.notes}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ---- override parser -----------------------------------------------------------------
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _coerce_scalar(kind: str, raw: str, where: str):
    s = raw.strip()
    if kind == "bool":
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        raise ConfigError(f"{where}: expected true/false, got {raw!r}")
    if kind == "int":
        try:
            return int(s.replace("_", ""))
        except ValueError:
            try:
                f = float(s.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
            if not f.is_integer():
                raise ConfigError(f"{where}: expected an integer, got {raw!r}")
            return int(f)
    if kind == "float":
        try:
            return float(s.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
    return raw  # str


def coerce(annotation: str, raw: str, where: str):
    """Parse `raw` per a (string) dataclass annotation like 'int | None' or 'tuple[float, float]'."""
    ann = str(annotation).replace("typing.", "").replace(" ", "")
    parts = ann.split("|")
    optional = "None" in parts
    parts = [p for p in parts if p != "None"]
    if optional and raw.strip().lower() in ("none", "null"):
        return None
    base = parts[0] if parts else "str"
    if base.startswith("tuple["):
        kinds = base[len("tuple["):-1].split(",")
        items = [x for x in raw.split(",") if x.strip()]
        if len(items) != len(kinds):
            raise ConfigError(f"{where}: expected {len(kinds)} comma-separated values, got {raw!r}")
        return tuple(_coerce_scalar(k, x, where) for k, x in zip(kinds, items))
    if base not in ("int", "float", "bool", "str"):
        raise ConfigError(f"{where}: field type {annotation} cannot be set from the command line")
    return _coerce_scalar(base, raw, where)


def _replace_field(obj, field: str, raw: str, where: str):
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if field not in fields:
        close = difflib.get_close_matches(field, fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; valid: {', '.join(fields)}"
        raise ConfigError(f"{where}: unknown {type(obj).__name__} field {field!r}{hint}")
    value = coerce(fields[field].type, raw, where)
    try:
        return dataclasses.replace(obj, **{field: value})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def apply_overrides(recipe: Recipe, overrides: list[str] | tuple = ()) -> Recipe:
    """Apply `section.field=value` overrides (see the module docstring) to a recipe."""
    for ov in overrides or ():
        where = f"--set {ov}"
        if "=" not in ov:
            raise ConfigError(f"{where}: expected section.field=value (e.g. train.lr=1e-3)")
        key, raw = ov.split("=", 1)
        section, _, field = key.strip().partition(".")
        if not field:
            raise ConfigError(f"{where}: expected section.field=value with section model, train or data")
        if section == "model":
            recipe = recipe.replace(model=_replace_field(recipe.model, field, raw, where))
        elif section == "train":
            recipe = recipe.replace(train=_replace_field(recipe.train, field, raw, where))
        elif section == "data":
            if field != "seed":
                raise ConfigError(f"{where}: only data.seed can be overridden (use --data for other shards)")
            recipe = recipe.replace(data=dataclasses.replace(recipe.data, seed=coerce("int", raw, where)))
        else:
            raise ConfigError(f"{where}: unknown section {section!r}; use model, train or data")
    if overrides and recipe.train.seq_len > recipe.model.max_seq_len:
        # Both configs are known only here; the model's RoPE table has max_seq_len rows.
        raise ConfigError(f"--set {' '.join(overrides)}: train.seq_len {recipe.train.seq_len} exceeds "
                          f"model.max_seq_len {recipe.model.max_seq_len}; lower train.seq_len or raise "
                          f"model.max_seq_len")
    return recipe


# ---- registry (imported after Recipe exists: the recipe modules import it) -------------
from olmo2.recipes import olmo2 as _published  # noqa: E402
from olmo2.recipes import tiny as _tiny  # noqa: E402

RECIPES: dict[str, Callable[..., Recipe]] = {
    "olmo2_1b_stage1": _published.olmo2_1b_stage1,
    "olmo2_1b_stage2": _published.olmo2_1b_stage2,
    "olmo2_7b_stage1": _published.olmo2_7b_stage1,
    "olmo2_7b_stage2": _published.olmo2_7b_stage2,
    "olmo2_13b_stage1": _published.olmo2_13b_stage1,
    "olmo2_13b_stage2": _published.olmo2_13b_stage2,
    "tiny_stage1": _tiny.tiny_stage1,
    "tiny_stage2": _tiny.tiny_stage2,
}
STAGE2 = {"olmo2_1b_stage2", "olmo2_7b_stage2", "olmo2_13b_stage2", "tiny_stage2"}


def get_recipe(spec: str) -> Recipe:
    """A recipe by `NAME` or `NAME:SEED` (the seed is passed to stage-2 recipes)."""
    name, _, seed = spec.partition(":")
    name = name.replace("-", "_")
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown recipe {spec!r}{hint}; choose one of: {', '.join(RECIPES)}")
    if seed:
        if name not in STAGE2:
            raise ConfigError(f"recipe {name!r} takes no seed; use --set train.seed={seed}")
        return RECIPES[name](int(coerce("int", seed, f"--recipe {spec}")))
    return RECIPES[name]()
