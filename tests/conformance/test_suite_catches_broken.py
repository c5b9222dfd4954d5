"""The conformance suite catches purpose-built broken backends, each by a named test, and passes
on the reference ``MemoryBackend``.

The suite runs in-process (``pytest.main``) exactly as a backend author runs it, with
``--plait-conformance=URL``; the broken backends are found through a plugin registered on plait's
plugin manager, as a third-party backend's entry point would be.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from plait.plugins import get_plugin_manager
from plait.testing import conformance

from .broken import BROKEN, BrokenBackendsPlugin, DoubleClaimBackend, NoFencingBackend

# Which conformance test must fail for each broken backend (others may fail too).
CAUGHT_BY = {
    "nofence": [
        "test_stale_lease_commit_is_rejected_whole",
        "test_forced_commit_on_an_open_run_bumps_the_fence",
        "test_a_commit_is_applied_at_most_once",
    ],
    "halfcommit": ["test_commit_applies_every_effect_together"],
    "doubleclaim": [
        "test_concurrent_claimers_never_share_a_task",
        "test_a_leased_workflow_task_is_not_claimed_again",
        "test_a_leased_step_task_is_not_redelivered_before_expiry",
    ],
}

# Tests that need a store shared between backend objects or processes; memory:// is not.
NEEDS_SHARED_STORE = {
    "test_reopened_store_keeps_its_data",
    "test_claimers_on_separate_objects_never_share_a_task",
    "test_claimers_in_separate_processes_never_share_a_task",
}


class _Outcomes:
    """A pytest plugin collecting each test's outcome: name -> {nodeid: outcome}."""

    def __init__(self) -> None:
        self.by_test: dict[str, dict[str, str]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        name = report.nodeid.split("::")[-1].split("[")[0]
        runs = self.by_test.setdefault(name, {})
        if report.failed:
            runs[report.nodeid] = "failed"
        elif report.skipped and runs.get(report.nodeid) != "failed":
            runs[report.nodeid] = "skipped"
        elif report.when == "call":
            runs[report.nodeid] = "passed"

    def summary(self) -> dict[str, str]:
        """name -> failed (any parametrisation failed), skipped (all skipped) or passed."""
        out = {}
        for name, runs in self.by_test.items():
            kinds = set(runs.values())
            out[name] = (
                "failed" if "failed" in kinds else "skipped" if kinds == {"skipped"} else "passed"
            )
        return out


def run_suite(url: str) -> dict[str, str]:
    """Run ``plait.testing.conformance`` against ``url`` in this process."""
    outcomes = _Outcomes()
    pytest.main(
        [
            "--pyargs",
            "plait.testing.conformance",
            f"--plait-conformance={url}",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:timeout",  # leave this test's own timeout alarm alone
            "-W",
            "ignore::pytest.PytestConfigWarning",
        ],
        plugins=[outcomes],
    )
    return outcomes.summary()


@pytest.fixture(scope="module")
def broken_schemes() -> Iterator[None]:
    pm = get_plugin_manager()
    pm.register(BrokenBackendsPlugin, name="plait-tests-broken-backends")
    try:
        yield
    finally:
        pm.unregister(name="plait-tests-broken-backends")


@pytest.fixture(scope="module")
def results(broken_schemes: None) -> dict[str, dict[str, str]]:
    return {scheme: run_suite(f"{scheme}://") for scheme in ["memory", *BROKEN]}


def test_memory_backend_passes_the_whole_suite(results: dict[str, dict[str, str]]) -> None:
    memory = results["memory"]
    assert set(memory) == set(conformance.TESTS), "not every conformance test ran"
    failed = sorted(n for n, o in memory.items() if o == "failed")
    assert not failed, f"MemoryBackend fails {failed}"
    skipped = {n for n, o in memory.items() if o == "skipped"}
    assert skipped == NEEDS_SHARED_STORE


@pytest.mark.parametrize("scheme", sorted(BROKEN))
def test_broken_backend_is_caught_by_its_named_test(
    scheme: str, results: dict[str, dict[str, str]]
) -> None:
    outcome = results[scheme]
    assert set(outcome) == set(conformance.TESTS)
    missed = [name for name in CAUGHT_BY[scheme] if outcome[name] != "failed"]
    assert not missed, f"{BROKEN[scheme].__name__} not caught by {missed}"


def test_broken_backends_are_otherwise_working(results: dict[str, dict[str, str]]) -> None:
    """The broken backends fail the guarantee they break, not everything: basic storage works."""
    basics = [
        "test_backend_implements_the_protocol",
        "test_create_run_stores_the_record_and_queues_its_workflow_task",
        "test_unknown_run_reads_as_missing",
        "test_inbox_is_fifo_with_growing_ids",
    ]
    for scheme in BROKEN:
        assert [results[scheme][name] for name in basics] == ["passed"] * len(basics), scheme


# The suite's test functions can also be called directly with a backend object.


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_direct_call_catches_two_claimers_on_one_object() -> None:
    backend = DoubleClaimBackend()
    await backend.open()
    with pytest.raises(AssertionError, match="more than one claimer"):
        await conformance.test_concurrent_claimers_never_share_a_task(backend)


@pytest.mark.anyio
async def test_direct_call_catches_missing_fencing() -> None:
    backend = NoFencingBackend()
    await backend.open()
    with pytest.raises(AssertionError):
        await conformance.test_stale_lease_commit_is_rejected_whole(backend)


@pytest.mark.anyio
async def test_direct_call_passes_on_memory() -> None:
    from plait.backends.memory import MemoryBackend

    for name in (
        "test_concurrent_claimers_never_share_a_task",
        "test_commit_applies_every_effect_together",
    ):
        backend = MemoryBackend()
        await backend.open()
        await getattr(conformance, name)(backend)
