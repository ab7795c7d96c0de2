"""What CI allows to skip: any other skipped test fails the run on CI (loaded by conftest.py)."""

from __future__ import annotations

import os

import pytest

# Skip reasons CI accepts, each with why it cannot run on the CI machine. Any other skip fails the run on CI
# (the CI environment variable set), so a test that silently stopped running is noticed.
CI_ALLOWED_SKIPS: dict[str, str] = {
    "needs a CUDA device": "the CI machine has no GPU; GPU paths are checked on a lent GPU machine",
}


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and _on_ci():
        reason = _skip_reason(report)
        if not reason.startswith(tuple(CI_ALLOWED_SKIPS)):
            report.outcome = "failed"
            report.longrepr = f"skipped on CI without a documented reason (tests/ci_policy.py): {reason}"
