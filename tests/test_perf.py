import sys

import pytest

from resa_utils.core import perf


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_allocator_applies_once_and_is_idempotent():
    assert perf.tune_allocator() is True
    assert perf.tune_allocator() is True and perf._TUNED
