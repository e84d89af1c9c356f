"""Verdicts for model answers to pool questions, math and code in one batch: what grading, evaluation and (through
`cot_filter`) the teacher's CoTs are judged by.

- `verify_attempts` (pure): a batch of attempt rows of both domains -> the same rows with `verdict`, `correct`,
  `verify_detail` and `answer_rule` (math; null for code), in order; every row comes out exactly once.
- `AttemptVerifier` (Ray Data stage): one per actor, math-verify worker processes started once; where code is
  expected, the actor checks at start that its node can isolate generated code and stops the job, naming the node,
  if not (sandboxes start on the first code row); an attempt the engine refused keeps verdict `error`, correct null.
- `verify_dataset`: the stage added to a Ray dataset of attempts, sized from `VerifyConfig`.
"""

from __future__ import annotations

from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from adaptcot.common.schemas import tests_from_json
from adaptcot.common.settings import ActorPoolSize, Strict
from adaptcot.verify.code_tests import CodeVerifier, CodeVerifyConfig, verify_code_table
from adaptcot.verify.math_answers import Extraction, MathVerifier, verify_table
from adaptcot.verify.sandbox import SandboxUnavailable


class VerifyConfig(Strict):
    workers: int = Field(default=1, ge=1)  # verifier processes per actor
    timeout_s: float = Field(default=5.0, gt=0)
    # Which math answers are read: "math_verify" also takes the last expression of an answer that finished,
    # "strict" only a box, an answer marker or a one-line answer (verify/math_answers.py).
    math_extraction: Extraction = "math_verify"
    concurrency: ActorPoolSize = 1  # verifier actors (math processes, sandboxes), or [min, max] to autoscale
    num_cpus: float = Field(default=0.25, gt=0)
    code: CodeVerifyConfig = CodeVerifyConfig()  # the sandbox and comparison settings for code answers


def verify_attempts(batch: pa.Table, math: MathVerifier, code: Callable[[], CodeVerifier]) -> pa.Table:
    """Verdicts for a batch of attempts of both domains, row order kept (`code` builds the sandboxes when needed).

    Code rows carry their tests as JSON text (`tests_json`, see `schemas.tests_to_json`)."""
    order = pa.array(range(batch.num_rows), pa.int64())
    batch = batch.append_column("_row", order)
    is_math = pc.equal(batch["domain"], "math")
    parts = [verify_table(batch.filter(is_math), math)]
    code_rows = batch.filter(pc.invert(is_math))
    if code_rows.num_rows:
        tests = [tests_from_json(t) for t in code_rows["tests_json"].to_pylist()]
        checked = verify_code_table(code_rows.append_column("tests", [tests]), code())
        no_rule = pa.nulls(checked.num_rows, pa.string())  # a program has no answer rule
        at = checked.schema.get_field_index("answer_rule")
        checked = checked.set_column(at, "answer_rule", no_rule) if at >= 0 else checked.append_column(
            "answer_rule", no_rule)
        parts.append(checked.select(parts[0].column_names))
    out = pa.concat_tables(parts)
    out = out.take(pc.sort_indices(out["_row"]))
    if out.num_rows != batch.num_rows:  # every row comes out exactly once
        raise RuntimeError(f"verification: {batch.num_rows} rows in, {out.num_rows} out")
    return out.drop_columns(["_row"])


def code_verifier_on_this_node(config: CodeVerifyConfig) -> CodeVerifier:
    """A `CodeVerifier` for this process's node; if the node cannot isolate generated code, the error names it."""
    try:
        return CodeVerifier(config)
    except SandboxUnavailable as exc:
        raise SandboxUnavailable(f"{_ray_node()}{exc}") from None


def _ray_node() -> str:
    import ray

    if not ray.is_initialized():
        return ""
    return f"Ray node {ray.util.get_node_ip_address()} (id {ray.get_runtime_context().get_node_id()[:12]}), "


class AttemptVerifier:
    """Ray Data stage: math-verify or sandbox verdicts; an attempt the engine refused keeps verdict `error`.

    expect_code: check at start that this node can isolate generated code (a math-only job never needs it)."""

    def __init__(self, config: VerifyConfig, expect_code: bool = False):
        self.verifier = MathVerifier(workers=config.workers, timeout_s=config.timeout_s,
                                     extraction=config.math_extraction)
        self.code_config, self._code = config.code, None
        if expect_code:
            self._code_verifier()

    def _code_verifier(self) -> CodeVerifier:
        if self._code is None:
            self._code = code_verifier_on_this_node(self.code_config)
        return self._code

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = verify_attempts(batch, self.verifier, self._code_verifier)
        failed = pc.is_valid(batch["error"])
        verdict = pc.if_else(failed, "error", batch["verdict"])
        correct = pc.if_else(failed, pa.scalar(None, pa.bool_()), batch["correct"])
        batch = batch.set_column(batch.schema.get_field_index("verdict"), "verdict", verdict)
        return batch.set_column(batch.schema.get_field_index("correct"), "correct", correct)

    def close(self) -> None:
        self.verifier.close()
        if self._code is not None:
            self._code.close()


def verify_dataset(attempts, config: VerifyConfig, expect_code: bool):
    """`attempts` (a Ray dataset of attempt rows) with the verdict columns, through a pool of `AttemptVerifier`s.

    expect_code: there are code attempts, so every actor checks its node's sandbox when it starts."""
    return attempts.map_batches(AttemptVerifier, fn_constructor_kwargs={"config": config, "expect_code": expect_code},
                                concurrency=config.concurrency, num_cpus=config.num_cpus, batch_format="pyarrow")
