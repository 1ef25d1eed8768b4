"""The importers' public surface: exactly what `__all__` names, all of it defined here."""

from __future__ import annotations

import gatepass.importers as importers
from gatepass.errors import RecordInvalidError
from unit.test_public_api import defined_in, public_names


def test_public_names_are_exactly_the_exported_ones() -> None:
    assert public_names(importers) == set(importers.__all__)
    assert all(defined_in(importers, getattr(importers, n)) for n in importers.__all__)


def test_the_row_error_is_a_record_invalid_error_that_keeps_its_problems() -> None:
    problems = [importers.RowProblem(2, "email", "missing", "E1")]
    error = importers.rows_invalid("hr-feed", problems)
    assert isinstance(error, RecordInvalidError) and error.code == "record_invalid"
    assert error.problems == tuple(problems)  # type: ignore[attr-defined]
    assert str(error) == "hr-feed: 1 problem, nothing imported: row 2 (E1), field 'email': " \
        "missing"
