"""tests/firmware/test_loop.py (link/loop, the firmware's scheduler) on the real
MicroPython binary: its awaitables are generators, which CPython cannot await."""

from tests.support.mpy import run_mpy


def test_loop_tests_pass_on_micropython() -> None:
    code = "sys.argv[:] = ['mpy_runner', 'test_loop']\nimport mpy_runner\n"
    out = run_mpy(code, timeout=60)  # the runner exits 1 on a failure: CalledProcessError
    last = out.splitlines()[-1]
    assert last.endswith(" passed, 0 failed") and int(last.split()[0]) >= 12, out
