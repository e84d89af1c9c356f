"""Driver side of SFT (pure, no Ray; runs before any worker starts, so a bad dataset fails early and cheaply).

- `tokenize_records`: chat records -> token ids through the student's own chat template; `prompt_tokens` marks where
  the assistant turn starts, so the loss is on assistant tokens only (the turn's end token included: the model has
  to learn to stop). Records longer than `max_seq_len` are dropped and counted (per level too), or fail the run
  (`too_long`); they are never truncated.
- `keep_whole_pairs` (cascod objective): a CasCoD rationale record and its answer record (same `cot_id`) are one
  unit; when one of them was dropped (too long, empty target) its partner is dropped too (`partner_dropped`), so
  no answer step is trained without its rationale step or the other way round (adaptcot's choice: the paper's data
  is whole pairs). Joint training also drops one record without any partner when their number is odd
  (`unpaired_dropped`; they are trained two by two), so every unit is two records.
- `training_order`: the whole run's example order, materialised once and seeded: epochs, CasCoD phases, CasCoD
  pairs kept next to each other, length grouping. The Trainer then reads it sequentially, so a resumed run
  continues exactly where the checkpoint was taken. Joint training cuts micro-batches of an even size
  (`TrainConfig` checks it) from units of two, so a pair always shares a micro-batch (both objectives' losses come
  from the same examples).
- `padding_fraction`: the share of pad tokens the batching will feed the model (0 with packing).

Batching: `grouped` (default) pads micro-batches of similar length (sorted within mega-batches of 64
micro-batches); `packed` concatenates a micro-batch's examples into one row (`trainer.SFTCollator`); `plain` pads
shuffled ones.

The functions are pure; `ray_train.prepare_data` runs `tokenize_batch` on Ray Data and builds the order from ids,
kinds and lengths alone (no token ids in the driver).

Not covered: in `two_phase` a micro-batch may hold the last rationale records and the first answer records (the
phases meet inside it when the rationale phase's length is not a multiple of `per_device_batch_size`).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from adaptcot.common.schemas import require_columns
from adaptcot.sft.train_config import TrainConfig

KIND_CODES = {"cot": 0, "cascod_rationale": 1, "cascod_answer": 2}
RECORD_COLUMNS = ("record_id", "question_id", "kind", "messages")
# What an order row carries from its token row (`token_row`: where the ids are in the tokenised files, when the
# order is built without them), plus its phase and epoch.
ORDER_CARRIES = ("record_id", "kind", "input_ids", "token_row", "n_tokens", "prompt_tokens")
MEGA_BATCH = 64  # micro-batches sorted together in `grouped` batching (transformers' LengthGroupedSampler uses 50)


class DatasetError(ValueError):
    """The SFT dataset cannot be trained on as configured (raised before any worker starts)."""


@dataclass
class DataReport:
    records: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)  # records of the objective's kinds, before length checks
    ignored_kinds: dict[str, int] = field(default_factory=dict)  # records of other kinds (not this objective's)
    too_long: int = 0
    too_long_by_level: dict[str, int] = field(default_factory=dict)  # level -> records longer than max_seq_len
    empty_target: int = 0
    partner_dropped: int = 0  # CasCoD records dropped because their partner was (too long, empty target)
    unpaired_dropped: int = 0  # joint CasCoD: the odd record out of those without any partner
    used: int = 0
    tokens: int = 0  # tokens of the used records
    target_tokens: int = 0  # tokens with a loss
    max_len: int = 0
    examples: int = 0  # examples in the training order (used records x epochs)
    micro_batches: int = 0
    padding_fraction: float = 0.0

    def lines(self) -> list[str]:
        pairs = (f", {self.partner_dropped} whose CasCoD partner was dropped" if self.partner_dropped else "") + (
            f", {self.unpaired_dropped} without a partner (odd one out)" if self.unpaired_dropped else "")
        out = [(f"{self.records} records, {self.used} used {dict(self.by_kind)}; dropped: {self.too_long} longer "
                f"than max_seq_len, {self.empty_target} with an empty target{pairs}; other kinds ignored: "
                f"{self.ignored_kinds}")]
        if self.too_long_by_level:
            out.append("longer than max_seq_len by level: " + ", ".join(
                f"{level} {n}" for level, n in sorted(self.too_long_by_level.items())))
        return out + [(f"{self.tokens} tokens ({self.target_tokens} with a loss), longest {self.max_len}; "
                       f"{self.examples} examples in {self.micro_batches} micro-batches, padding fraction "
                       f"{self.padding_fraction:.3f}")]


TOKENS_SCHEMA = pa.schema([
    pa.field("record_id", pa.string()), pa.field("kind", pa.string()), pa.field("level", pa.string()),
    # ok, too_long, empty_target, other_kind (not this objective's)
    pa.field("status", pa.string()), pa.field("input_ids", pa.list_(pa.int32())), pa.field("n_tokens", pa.int32()),
    pa.field("prompt_tokens", pa.int32()),
])


def tokenize_batch(records: pa.Table, tokenizer, cfg: TrainConfig) -> pa.Table:
    """Chat records -> one TOKENS_SCHEMA row each: the token ids of the objective's records that fit (`ok`), and
    why the others are not trained on. Pure and per batch: it runs on Ray Data (`ray_train.tokenize_on_ray`)."""
    require_columns(records, RECORD_COLUMNS, "train")
    wanted = cfg.kinds()
    out = {name: [] for name in TOKENS_SCHEMA.names}
    levels = records["level"].to_pylist() if "level" in records.column_names else [None] * records.num_rows
    for row, level in zip(records.select(["record_id", "kind", "messages"]).to_pylist(), levels):
        ids, prompt_len, status = [], 0, "ok"
        if row["kind"] not in wanted:
            status = "other_kind"
        else:
            messages = row["messages"]
            if not messages or messages[-1]["role"] != "assistant":
                raise DatasetError(f"record {row['record_id']}: the last message must be the assistant's")
            prompt = _chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
            ids = _chat_ids(tokenizer, messages, add_generation_prompt=False)
            if ids[:len(prompt)] != prompt:
                raise DatasetError(f"record {row['record_id']}: the chat template does not render the conversation "
                                   f"as its prompt followed by the assistant turn, so the assistant tokens cannot be "
                                   f"found")
            prompt_len = len(prompt)
            if len(ids) == len(prompt) or not messages[-1]["content"].strip():
                status = "empty_target"
            elif len(ids) > cfg.max_seq_len:
                status = "too_long"
        for name, value in (("record_id", row["record_id"]), ("kind", row["kind"]), ("level", level),
                            ("status", status), ("input_ids", ids if status == "ok" else []),
                            ("n_tokens", len(ids)), ("prompt_tokens", prompt_len)):
            out[name].append(value)
    return pa.table(out, schema=TOKENS_SCHEMA)


def count_statuses(tokens: pa.Table, cfg: TrainConfig) -> DataReport:
    """The report of a tokenised dataset (TOKENS_SCHEMA; `input_ids` not needed): what is used, what is dropped and
    why. Fails as `too_long: fail` asks. The used records' counts are filled in by `measure`."""
    kinds, statuses, levels = (tokens[c].to_pylist() for c in ("kind", "status", "level"))
    report = DataReport(records=tokens.num_rows)
    counted = Counter(kinds)
    report.by_kind = {k: counted.get(k, 0) for k in cfg.kinds()}
    report.ignored_kinds = {k: n for k, n in counted.items() if k not in cfg.kinds()}
    report.empty_target = statuses.count("empty_target")
    for status, level in zip(statuses, levels):
        if status == "too_long":
            report.too_long += 1
            report.too_long_by_level[level or "unknown"] = report.too_long_by_level.get(level or "unknown", 0) + 1
    if report.too_long and cfg.too_long == "fail":
        raise DatasetError(f"{report.too_long} of {sum(report.by_kind.values())} records are longer than max_seq_len "
                           f"{cfg.max_seq_len} tokens (too_long: fail); raise max_seq_len or set too_long: drop")
    return report


def tokenize_records(records: pa.Table, tokenizer, cfg: TrainConfig) -> tuple[pa.Table, DataReport]:
    """Chat records -> (the rows to train on, TOKENS_SCHEMA, by record id; DataReport of all of them), in process."""
    tokens = tokenize_batch(records, tokenizer, cfg)
    report = count_statuses(tokens, cfg)
    used = sort_by_record(tokens.filter(pa.compute.equal(tokens["status"], "ok")))
    return used, measure(used, report)


def sort_by_record(tokens: pa.Table) -> pa.Table:
    """Rows by record id: the training order then depends on the records and the seed, not on how a reader (or
    Ray Data's tokenisation) laid the rows out."""
    return tokens.sort_by("record_id")


def measure(tokens: pa.Table, report: DataReport) -> DataReport:
    """Count the records left to train on (`used`, tokens, longest) into the report; none left is an error."""
    lengths = tokens["n_tokens"].to_pylist()
    report.used, report.tokens, report.max_len = len(lengths), sum(lengths), max(lengths, default=0)
    report.target_tokens = report.tokens - sum(tokens["prompt_tokens"].to_pylist())
    if report.used == 0:
        raise DatasetError(f"no record left to train on: {report.lines()[0]}")
    return report


def keep_whole_pairs(tokens: pa.Table, pair_of: dict[str, str], cfg: TrainConfig, report: DataReport) -> pa.Table:
    """The CasCoD records whose partner is still there (a lone one whose partner was dropped goes too); under joint
    training an even number of records without any partner (the last one out if odd). Counted in the report."""
    ids = tokens["record_id"].to_pylist()
    present = set(ids)
    broken = {i for i, r in enumerate(ids) if r in pair_of and pair_of[r] not in present}
    lone = [i for i, r in enumerate(ids) if r not in pair_of]
    odd = {lone[-1]} if cfg.cascod.mode == "joint" and len(lone) % 2 else set()
    report.partner_dropped, report.unpaired_dropped = len(broken), len(odd)
    if not broken and not odd:
        return tokens
    kept = tokens.take(pa.array([i for i in range(len(ids)) if i not in broken | odd], pa.int64()))
    measure(kept, report)
    return kept


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                        tokenize=True, add_generation_prompt=add_generation_prompt)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def training_order(tokens: pa.Table, cfg: TrainConfig, pair_of: dict[str, str] | None = None) -> pa.Table:
    """Every example of the run in the order it is trained (ORDER_CARRIES of its record, phase, epoch), seeded.

    `pair_of` maps a CasCoD record id to the id of its partner (same question and CoT); joint training keeps the
    two next to each other."""
    rng = random.Random(cfg.seed)
    ids = tokens["record_id"].to_pylist()
    kinds = tokens["kind"].to_pylist()
    lengths = tokens["n_tokens"].to_pylist()
    if cfg.objective == "cascod" and cfg.cascod.mode == "two_phase":
        phases = [[i for i, k in enumerate(kinds) if k == kind] for kind in ("cascod_rationale", "cascod_answer")]
        units_by_phase = [[[i] for i in phase] for phase in phases]
    elif cfg.objective == "cascod":
        units_by_phase = [_pairs(ids, kinds, pair_of or {})]
    else:
        units_by_phase = [[[i] for i in range(len(ids))]]
    rows: list[tuple[int, int, int]] = []  # (row index, phase, epoch)
    for phase, units in enumerate(units_by_phase):
        for epoch in range(cfg.epochs):
            shuffled = list(units)
            rng.shuffle(shuffled)
            if cfg.batching == "grouped":
                shuffled = _group_by_length(shuffled, lengths, cfg.per_device_batch_size, rng)
            rows += [(i, phase, epoch) for unit in shuffled for i in unit]
    ordered = tokens.take(pa.array([r[0] for r in rows], pa.int64()))
    columns = {c: ordered[c] for c in ORDER_CARRIES if c in ordered.column_names}
    return pa.table({**columns, "phase": pa.array([r[1] for r in rows], pa.int8()),
                     "epoch": pa.array([r[2] for r in rows], pa.int16())})


def _pairs(ids: list[str], kinds: list[str], pair_of: dict[str, str]) -> list[list[int]]:
    """CasCoD units of two rows: [rationale row, answer row] of one CoT; rows without a partner two by two (an odd
    one out stays alone: `keep_whole_pairs` has dropped it before)."""
    row_of = {record_id: i for i, record_id in enumerate(ids)}
    units, lone, seen = [], [], set()
    for i, record_id in enumerate(ids):
        if i in seen:
            continue
        partner = row_of.get(pair_of.get(record_id, ""))
        if partner is not None and partner not in seen and kinds[partner] != kinds[i]:
            units.append([i, partner] if kinds[i] == "cascod_rationale" else [partner, i])
            seen.update(units[-1])
        else:
            lone.append(i)
            seen.add(i)
    return units + [lone[j:j + 2] for j in range(0, len(lone), 2)]


def _group_by_length(units: list[list[int]], lengths: list[int], batch: int, rng: random.Random) -> list[list[int]]:
    """Sort units by length within mega-batches, cut into micro-batches, shuffle the micro-batches."""
    per_batch = max(1, batch // max(len(u) for u in units)) if units else 1
    mega = per_batch * MEGA_BATCH
    batches = []
    for start in range(0, len(units), mega):
        chunk = sorted(units[start:start + mega], key=lambda u: -max(lengths[i] for i in u))
        batches += [chunk[j:j + per_batch] for j in range(0, len(chunk), per_batch)]
    rng.shuffle(batches)
    return [unit for b in batches for unit in b]


def micro_batches(n_examples: int, cfg: TrainConfig) -> list[range]:
    """How the sequential order is cut into micro-batches (the same cut the Trainer's dataloader makes)."""
    b = cfg.per_device_batch_size
    return [range(s, min(s + b, n_examples)) for s in range(0, n_examples, b)]


def padding_fraction(lengths: list[int], cfg: TrainConfig) -> float:
    """Pad tokens / all tokens fed to the model, for the order's lengths under the configured batching."""
    if cfg.batching == "packed" or not lengths:
        return 0.0
    fed = sum(max(lengths[i] for i in r) * len(r) for r in micro_batches(len(lengths), cfg))
    return 1.0 - sum(lengths) / fed


def optimizer_steps(n_examples: int, cfg: TrainConfig) -> int:
    per_step = cfg.per_device_batch_size * cfg.num_workers * cfg.grad_accum
    steps = max(1, n_examples // per_step)  # the Trainer drops an incomplete accumulation at the end
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def cascod_pairs(records: pa.Table) -> dict[str, str]:
    """record_id -> partner record_id for CasCoD records made from the same teacher CoT (`cot_id`)."""
    if "cot_id" not in records.column_names:
        return {}  # records from before `cot_id` existed: trained as single records
    by_cot: dict[str, dict[str, str]] = {}
    for row in records.select(["record_id", "cot_id", "kind"]).to_pylist():
        if row["cot_id"] and row["kind"] in ("cascod_rationale", "cascod_answer"):
            by_cot.setdefault(row["cot_id"], {})[row["kind"]] = row["record_id"]
    pairs = {}
    for both in by_cot.values():
        if len(both) == 2:
            pairs[both["cascod_rationale"]] = both["cascod_answer"]
            pairs[both["cascod_answer"]] = both["cascod_rationale"]
    return pairs


def prepare(records: pa.Table, tokenizer, cfg: TrainConfig) -> tuple[pa.Table, DataReport]:
    """Tokenise, check and order a dataset: everything the workers need, done before they start."""
    tokens, report = tokenize_records(records, tokenizer, cfg)
    pairs = cascod_pairs(records) if cfg.objective == "cascod" else None
    if pairs is not None:
        tokens = keep_whole_pairs(tokens, pairs, cfg, report)
    order = training_order(tokens, cfg, pairs)
    return order, order_report(order, cfg, report)


def order_report(order: pa.Table, cfg: TrainConfig, report: DataReport) -> DataReport:
    """Count the order's examples, micro-batches and padding into the report; fewer examples than one optimizer
    step is an error."""
    lengths = order["n_tokens"].to_pylist()
    report.examples = order.num_rows
    report.micro_batches = len(micro_batches(order.num_rows, cfg))
    report.padding_fraction = round(padding_fraction(lengths, cfg), 4)
    per_step = cfg.per_device_batch_size * cfg.num_workers * cfg.grad_accum
    if order.num_rows < per_step:
        raise DatasetError(f"{order.num_rows} examples are fewer than one optimizer step's {per_step} "
                           f"(per_device_batch_size x num_workers x grad_accum)")
    return report
