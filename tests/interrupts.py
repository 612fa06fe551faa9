"""Ctrl-C or SIGTERM that stopped a test's command (`run_logs.Interrupted`) ends the test session, as
the signal would have ended pytest had no command been running, instead of failing that one test and
starting the next test's run."""

import signal

from mixed_r1_verl.run_logs import Interrupted


def pytest_runtest_makereport(item, call):
    if call.excinfo is not None and call.excinfo.errisinstance(Interrupted):
        item.session.shouldstop = f"interrupted by {signal.Signals(call.excinfo.value.signum).name}"
