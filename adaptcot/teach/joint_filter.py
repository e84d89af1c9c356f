"""Seed 004's joint filter: several teachers' verified CoT sets cut to the questions every teacher got right.

The trace-style paper (METHOD.md §3) keeps a problem only where *both* teachers' answers match the reference (its
judge model deciding what rules cannot), and trains each student on its teacher's traces of that same problem set:
a difference between the students is then a difference of trace style, not of which problems they saw.

`joint_questions(sets)`: the question ids for which every set has a kept CoT (`drop_reason` null).
`joint_filter(sets)`: each set with its other kept CoTs dropped as `not_joint` (nothing is deleted: the rows stay,
counted by the filter report per level). Each set is first filtered on its own (`cot_filter.filter_cots`: the
verifier and, where configured, the LLM judge); this step only intersects.

Not covered: a set with several kept CoTs per question keeps all of them (the paper has one trace per teacher).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from adaptcot.common.schemas import require_columns

NOT_JOINT = "not_joint"


def kept_questions(cots: pa.Table) -> set[str]:
    require_columns(cots, ("question_id", "drop_reason"), "joint_filter")
    return set(cots.filter(pc.is_null(cots["drop_reason"]))["question_id"].to_pylist())


def joint_questions(sets: dict[str, pa.Table]) -> set[str]:
    if len(sets) < 2:
        raise ValueError(f"the joint filter needs two or more CoT sets, got {sorted(sets)}")
    return set.intersection(*(kept_questions(cots) for cots in sets.values()))


def joint_filter(sets: dict[str, pa.Table]) -> tuple[dict[str, pa.Table], set[str]]:
    """(each set with kept CoTs of questions outside the joint set dropped as `not_joint`, the joint set)."""
    joint = joint_questions(sets)
    value_set = pa.array(sorted(joint), pa.string())
    out = {}
    for name, cots in sets.items():
        outside = pc.and_(pc.is_null(cots["drop_reason"]),
                          pc.invert(pc.is_in(cots["question_id"], value_set=value_set)))
        reason = pc.if_else(outside, NOT_JOINT, cots["drop_reason"])
        out[name] = cots.set_column(cots.schema.get_field_index("drop_reason"), "drop_reason", reason)
    return out, joint
