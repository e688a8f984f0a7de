"""Shared fixtures: a small synthetic phantom written once, and the BUSI folder."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from bcseg.data.phantom import write_phantom

REPO = Path(__file__).resolve().parents[1]
BUSI = REPO.parent / "shared/datasets/busi"

# The session phantom: 4 specimens of 12 slices of 48x48 pixels, with truth masks.
PHANTOM_N = 4
PHANTOM_SHAPE = (12, 48, 48)


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt in the tests, however the suite was started.

    A shell without job control starts a background job ('make test &' in a script,
    nohup) with SIGINT ignored, and Python then keeps it ignored: the tests that stop
    bcseg with SIGINT would see nothing happen (bcseg itself rightly leaves an ignored
    signal ignored; test_a_stop_signal_ignored_by_the_caller_stays_ignored checks that)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A phantom dataset (images/, masks/observer{1,2}/, truth/) written once.

    Read it, never write into it: every test of the session shares it.
    """
    root = tmp_path_factory.mktemp("phantom") / "data"
    write_phantom(root, n=PHANTOM_N, shape=PHANTOM_SHAPE, truth=True)
    return root


@pytest.fixture(scope="session")
def busi_root() -> Path:
    """The BUSI dataset beside the repository, or a skip when it is absent."""
    if not (BUSI / "folds.csv").is_file():
        pytest.skip("BUSI not found at ../shared/datasets/busi")
    return BUSI


# A two-channel phantom: images/us/ and images/pa/ (PA as float32), channels.json.
TWO_CHANNEL_N = 3
TWO_CHANNEL_SHAPE = (8, 32, 32)


@pytest.fixture(scope="session")
def two_channel_root(tmp_path_factory) -> Path:
    """A phantom of ultrasound and photoacoustic channels, written once. Read only."""
    root = tmp_path_factory.mktemp("two_channels") / "data"
    write_phantom(root, n=TWO_CHANNEL_N, shape=TWO_CHANNEL_SHAPE, channels=("us", "pa"))
    return root
