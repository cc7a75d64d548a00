"""README's "Use from Python" examples, run as doctests against a real registry and a real
`provision serve`: the documentation cannot drift from the API."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from provision.registry import Registry
from tests.test_web import OPEN_LIMIT, provision_server

README = Path(__file__).resolve().parent.parent / "README.md"


def section(title: str) -> tuple[str, int]:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end], text[:start].count("\n") + 1


def test_the_use_from_python_examples_run_as_written(
    registry: Registry,
    db_url: str,
    keyring_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body, line = section("Use from Python")
    with provision_server(
        db_url, keyring_path, tmp_path / "srv", "--rate-limit", OPEN_LIMIT
    ) as srv:
        for name, value in {
            "PROVISION_DB_URL": db_url,
            "PROVISION_KEYRING": str(keyring_path),
            "PROVISION_OUTPUT": str(tmp_path / "out"),
            "PROVISION_BASE_URL": srv.base,
        }.items():
            monkeypatch.setenv(name, value)
        test = doctest.DocTestParser().get_doctest(body, {}, "README.md", str(README), line)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        failures: list[str] = []
        runner.run(test, out=failures.append)
        result = runner.summarize(verbose=False)
    assert result.attempted >= 15, "the examples were not found"
    assert result.failed == 0, "".join(failures)
