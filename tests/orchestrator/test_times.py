"""An outside time past the UTC range is refused with the bound it crosses, in both directions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.times import InvalidTime, parse_time, to_utc


@pytest.mark.parametrize(("text", "bound"), [
    ("0001-01-01T00:00:00+14:00", "before 0001-01-01"),
    ("0001-01-01T05:00:00+05:01", "before 0001-01-01"),
    ("9999-12-31T23:59:59-14:00", "after 9999-12-31"),
    ("9999-12-31T20:00:00-04:00", "after 9999-12-31"),
])
def test_the_error_names_the_bound_the_time_crosses(text: str, bound: str) -> None:
    with pytest.raises(InvalidTime) as info:
        parse_time(text)
    assert str(info.value) == f"the time is out of range once converted to UTC ({bound})"


@given(minutes=st.integers(min_value=-14 * 60, max_value=14 * 60).filter(bool),
       moment=st.sampled_from([datetime.min, datetime.max]))
def test_an_edge_time_converts_or_names_its_bound(minutes: int, moment: datetime) -> None:
    """At either end of the calendar, any offset either converts or names the bound it crosses."""
    value = moment.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    try:
        to_utc(value)
    except InvalidTime as exc:
        assert ("before 0001-01-01" if minutes > 0 else "after 9999-12-31") in str(exc)
        assert (moment is datetime.min) == (minutes > 0)
