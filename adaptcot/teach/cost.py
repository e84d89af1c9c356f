"""What the teacher costs: prices, the estimate before paying (`adaptcot teach --dry-run`) and the cap.

**Prices** come from litellm's model cost map, the table litellm maintains and ships inside its package
(`model_prices_and_context_window_backup.json`). adaptcot reads that file from the installed package and never
imports litellm: importing it fetches the newest map from GitHub at run time, and a job's prices must not change
under it (nor wait on the network). `teacher.prices` overrides any figure, or names the map's entry when the
endpoint's model name is not one (`prices.model: deepseek/deepseek-reasoner`). A model the map does not know and
the config does not price has an unknown price: its rows carry no cost (null, not $0) and the report says so.

**The estimate** of a request: input tokens from the prompt's characters (at the chars-per-token ratio measured on
what this output already stored, else 4), output tokens from the teacher's measured mean on this output, else
`teacher.expected_output_tokens`, else `sampling.max_tokens` (an upper bound). adaptcot's choice, stated in every
estimate it prints.

**The cap** (`teacher.max_usd`) covers everything stored in the output directory, across runs: a request is sent
only while spent + the estimates of the requests in flight + its own estimate stay within it. When one would not,
no new request is sent, those in flight finish and are stored, and the run says so; the rest waits for a higher
cap. Spending passes the cap by at most what the in-flight requests cost beyond their estimates.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pydantic import Field

from adaptcot.common.schemas import LEVELS_EASIEST_FIRST
from adaptcot.common.settings import Strict

COST_MAP_FILE = "model_prices_and_context_window_backup.json"
DEFAULT_CHARS_PER_TOKEN = 4.0


class PricesConfig(Strict):
    model: str | None = None  # the entry of litellm's cost map; default: the endpoint's model
    input_usd_per_mtok: float | None = Field(default=None, ge=0)  # overrides the map
    output_usd_per_mtok: float | None = Field(default=None, ge=0)  # reasoning tokens are billed as output
    batch_input_usd_per_mtok: float | None = Field(default=None, ge=0)  # batch mode; default: the map, else online
    batch_output_usd_per_mtok: float | None = Field(default=None, ge=0)


@functools.lru_cache(maxsize=1)
def cost_map() -> dict[str, dict]:
    """litellm's bundled cost map, read as a file (see the module docstring); {} when litellm is not installed."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = os.path.join(next(iter(spec.submodule_search_locations)), COST_MAP_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return {k: v for k, v in json.load(f).items() if isinstance(v, dict)}


def map_entry(model: str) -> tuple[str, dict] | None:
    """The cost map's entry for `model`: its own key, else the one `<provider>/<model>` key; ValueError when several
    providers list the model at different prices (the config must say which)."""
    table = cost_map()
    if model in table:
        return model, table[model]
    matches = {k: v for k, v in table.items() if k.endswith("/" + model)}
    prices = {(v.get("input_cost_per_token"), v.get("output_cost_per_token")) for v in matches.values()}
    if len(prices) > 1:
        raise ValueError(f"teacher.prices.model: litellm's cost map lists {model!r} under several providers at "
                         f"different prices ({', '.join(sorted(matches)[:6])}); name one")
    return next(iter(matches.items()), None)


@dataclass(frozen=True)
class Prices:
    """USD per million tokens, online and batch; None where unknown. `source` says where they came from."""
    input: float | None
    output: float | None
    batch_input: float | None
    batch_output: float | None
    source: str

    @property
    def known(self) -> bool:
        return self.input is not None and self.output is not None

    def per_mtok(self, batch: bool) -> tuple[float | None, float | None]:
        if batch and self.batch_input is not None and self.batch_output is not None:
            return self.batch_input, self.batch_output
        return self.input, self.output

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None, batch: bool = False) -> float | None:
        input_price, output_price = self.per_mtok(batch)
        if input_price is None or output_price is None:
            return None
        return ((prompt_tokens or 0) * input_price + (completion_tokens or 0) * output_price) / 1e6


def resolve_prices(config: PricesConfig, model: str | None) -> Prices:
    """The config's figures over the cost map's; `model` None is an in-cluster teacher (no price per token)."""
    if model is None and config.input_usd_per_mtok is None:
        return Prices(0.0, 0.0, 0.0, 0.0, "in-cluster model: no price per token")
    name = config.model or model
    try:
        found = map_entry(name) if name else None
    except ValueError:
        if config.model or config.input_usd_per_mtok is None or config.output_usd_per_mtok is None:
            raise
        found = None  # the config prices it: which provider's entry it would be does not matter
    entry = found[1] if found else {}

    def per_mtok(key: str) -> float | None:
        value = entry.get(key)
        return None if value is None else float(value) * 1e6

    figures = [config.input_usd_per_mtok, config.output_usd_per_mtok, config.batch_input_usd_per_mtok,
               config.batch_output_usd_per_mtok]
    from_map = [per_mtok("input_cost_per_token"), per_mtok("output_cost_per_token"),
                per_mtok("input_cost_per_token_batches"), per_mtok("output_cost_per_token_batches")]
    chosen = [mine if mine is not None else theirs for mine, theirs in zip(figures, from_map)]
    if config.model and not found:
        raise ValueError(f"teacher.prices.model: {config.model!r} is not in litellm's cost map"
                         + ("" if cost_map() else " (litellm is not installed)"))
    parts = (["teacher.prices"] if any(f is not None for f in figures) else []) + \
        ([f"litellm's cost map ({found[0]})"] if found else [])
    return Prices(*chosen, " + ".join(parts) or f"unknown: {name!r} is not in litellm's cost map and teacher.prices "
                                                "is not set")


# --- the estimate ----------------------------------------------------------------------------------------------------
def body_chars(body: dict) -> int:
    return sum(len(m.get("content") or "") for m in body.get("messages", []))


@dataclass(frozen=True)
class Estimator:
    """Tokens and dollars of a request before it is sent (module docstring)."""
    chars_per_token: float
    chars_source: str
    output_tokens: float
    output_source: str
    prices: Prices
    batch: bool = False

    def tokens(self, body: dict) -> tuple[float, float]:
        return body_chars(body) / self.chars_per_token, self.output_tokens

    def usd(self, body: dict) -> float | None:
        prompt, completion = self.tokens(body)
        return self.prices.cost(prompt, completion, self.batch)


def estimator(stored: list[tuple[dict, dict]], prices: Prices, expected_output_tokens: int | None,
              max_tokens: int, batch: bool = False) -> Estimator:
    """`stored`: (journal row, its request body) of this teacher's answers already stored."""
    answered = [(row, body) for row, body in stored if not row.get("error") and row.get("completion_tokens")]
    prompt_tokens = sum(row.get("prompt_tokens") or 0 for row, _ in answered)
    chars = sum(body_chars(body) for row, body in answered if row.get("prompt_tokens"))
    if prompt_tokens and chars:
        ratio, ratio_source = chars / prompt_tokens, f"measured on {len(answered)} stored CoTs"
    else:
        ratio, ratio_source = DEFAULT_CHARS_PER_TOKEN, "assumed"
    if answered:
        output = sum(row["completion_tokens"] for row, _ in answered) / len(answered)
        output_source = f"measured on {len(answered)} stored CoTs"
    elif expected_output_tokens:
        output, output_source = float(expected_output_tokens), "teacher.expected_output_tokens"
    else:
        output, output_source = float(max_tokens), "sampling.max_tokens, an upper bound"
    return Estimator(ratio, ratio_source, output, output_source, prices, batch)


@dataclass
class Plan:
    """What a run would send (`adaptcot teach --dry-run`)."""
    teacher: str
    mode: str
    cots: int
    requests: int
    input_tokens: float
    output_tokens: float
    usd: float | None
    spent_usd: float
    estimator: Estimator
    max_usd: float | None = None

    def lines(self) -> list[str]:
        e, price_in, price_out = self.estimator, *self.estimator.prices.per_mtok(self.estimator.batch)
        price = (f"${price_in:g} in, ${price_out:g} out per M tokens" if price_in is not None and price_out is not None
                 else "unknown")
        usd = "unknown (no price)" if self.usd is None else f"${self.usd:,.2f}"
        lines = [f"teacher dry run: {self.teacher} ({self.mode}); nothing was sent",
                 f"  requests       {self.requests:,} (of {self.cots:,} CoTs; {self.cots - self.requests:,} stored)",
                 f"  input tokens   ~{self.input_tokens:,.0f} ({e.chars_per_token:.2f} chars per token, "
                 f"{e.chars_source})",
                 f"  output tokens  ~{self.output_tokens:,.0f} ({e.output_tokens:,.0f} per CoT, {e.output_source})",
                 f"  prices         {price} ({e.prices.source})",
                 f"  estimate       {usd}; ${self.spent_usd:,.2f} spent on this output so far"]
        if self.max_usd is not None:
            left = self.max_usd - self.spent_usd
            fits = "" if self.usd is None or self.usd <= left else \
                f": about {max(0.0, left) / self.usd:.0%} of the requests fit, the run stops there"
            lines.append(f"  cap            teacher.max_usd ${self.max_usd:,.2f}, ${left:,.2f} left{fits}")
        return lines


# --- the cap ---------------------------------------------------------------------------------------------------------
@dataclass
class Cap:
    """Admits a request while spent + in flight + its estimate stays within `max_usd` (module docstring)."""
    max_usd: float
    spent_usd: float
    estimate: Any  # body -> estimated USD
    in_flight: dict = field(default_factory=dict)
    refused: int = 0

    def admit(self, tag: Any, body: dict) -> bool:
        estimate = self.estimate(body) or 0.0
        if self.refused or self.spent_usd + sum(self.in_flight.values()) + estimate > self.max_usd:
            self.refused += 1
            return False
        self.in_flight[tag] = estimate
        return True

    def settle(self, tag: Any, usd: float | None, possibly_billed: int = 0) -> None:
        """A request came back (answered or not): its estimate leaves, what it cost is spent, and so is the estimate
        of every attempt that timed out once sent (the provider may have billed it)."""
        estimate = self.in_flight.pop(tag, 0.0)
        self.spent_usd += (usd or 0.0) + possibly_billed * estimate

    def line(self) -> str:
        return (f"teacher.max_usd ${self.max_usd:,.2f} reached (${self.spent_usd:,.2f} spent on this output): no new "
                "request was sent once the next would pass it; the ones in flight were stored. Raise the cap and "
                "rerun for the rest")


# --- what was spent --------------------------------------------------------------------------------------------------
def spend_of(cots: pa.Table, no_level: str = "(no level)") -> dict:
    """The teacher's estimated spend on a job's CoTs (`teach/cots.parquet`, kept and dropped): in all, per difficulty
    level (rows without one under `no_level`), and per kept CoT (what a CoT in the SFT data cost, the dropped ones
    included). None where an answered CoT has no cost: the teacher had no price."""
    order = [lv.value for lv in LEVELS_EASIEST_FIRST]
    levels: dict[str, dict] = {}
    for level, usd, reason in zip(*(cots[c].to_pylist() for c in ("level", "cost_usd", "drop_reason"))):
        entry = levels.setdefault(level or no_level, {"usd": 0.0, "cots": 0, "kept": 0})
        entry["cots"] += 1
        entry["kept"] += reason is None
        unpriced = usd is None and reason != "error"  # a failed request has no tokens, priced or not
        entry["usd"] = None if unpriced or entry["usd"] is None else entry["usd"] + (usd or 0.0)
    for entry in levels.values():
        entry["usd_per_kept_cot"] = entry["usd"] / entry["kept"] if entry["usd"] is not None and entry["kept"] else None
    spent = [e["usd"] for e in levels.values()]
    total = None if None in spent else sum(spent)
    kept = sum(e["kept"] for e in levels.values())
    ordered = {lv: levels[lv] for lv in [*[o for o in order if o in levels], *sorted(set(levels) - set(order))]}
    return {"usd": total, "usd_per_kept_cot": total / kept if total is not None and kept else None,
            "by_level": ordered}


def spend_lines(spend: dict) -> list[str]:
    if spend["usd"] is None:
        return ["  spend: unknown (the teacher has no price: set teacher.prices)"] if spend["by_level"] else []
    if spend["usd"] == 0:
        return ["  spend: $0 (the teacher is priced at 0 per token: an in-cluster model or your own server)"]
    per_kept = "-" if spend["usd_per_kept_cot"] is None else f"${spend['usd_per_kept_cot']:.4f}"
    return [f"  spend: ${spend['usd']:.4f} estimated for these CoTs, {per_kept} per kept CoT",
            "    per level: " + ", ".join(f"{lv} ${e['usd']:.4f}" for lv, e in spend["by_level"].items())]
