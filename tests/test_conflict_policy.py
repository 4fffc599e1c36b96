"""The conflict policy against golden fixtures (tests/golden/conflict.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domicile.run.conflict import Decision, decide
from domicile.run.journal import Copy

CASES = json.loads((Path(__file__).parent / "golden" / "conflict.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_decision_matches_golden(case):
    copies = [Copy(i, src, d, hd) for i, (src, d, hd) in enumerate(case["copies"])]
    got = decide(case["at_home"], case["copying"], copies, case["source"], case["policy"])
    assert got == Decision(case["expect"])


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError):
        decide("a", "b", [], "sg", "merge")
