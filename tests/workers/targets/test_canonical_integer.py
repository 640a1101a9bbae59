"""The canonical-integer rule Qdrant's and LanceDB's selectors share (workers/targets/selectors.py): a value
spells exactly one integer, the one it prints as, or none at all.

Property tests: every integer's decimal text is read back as that integer; any other text is refused, so
"012", "+12", "-0", "1_2" or " 12" can never select the subject whose id is 12 (or 0).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.targets.selectors import canonical_integer


@given(st.integers())
def test_every_integer_reads_back_from_its_decimal_text(number: int) -> None:
    assert canonical_integer(str(number)) == number


@given(st.text(max_size=30))
def test_any_text_spells_the_integer_it_prints_as_or_none(text: str) -> None:
    number = canonical_integer(text)
    assert number is None or str(number) == text


@pytest.mark.parametrize("text", ["012", "+12", "-0", "1_2", " 12", "12 ", "12.0", "1e3", "", "-", "١٢", "12\n"])
def test_look_alikes_spell_no_integer(text: str) -> None:
    assert canonical_integer(text) is None
