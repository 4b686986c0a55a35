# Runs the firmware test files on the MicroPython binary (`make test-mpy`).
# Each tests/firmware/test_*.py is imported and its test_* functions called.
# A file may set MPY_SKIP = "reason" (whole file) or
# MPY_SKIP_TESTS = {"test_name": "reason"}; skips are printed with the reason.
# Ends with the line "N passed, N failed" and exits 1 on any failure.
import gc
import os
import sys

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."


def _tests(mod):
    names = [n for n in dir(mod) if n.startswith("test_")]
    names.sort()
    return names


def main(argv):
    only = argv[1:] if len(argv) > 1 else None
    files = sorted(f for f in os.listdir(_HERE) if f.startswith("test_") and f.endswith(".py"))
    passed = skipped = 0
    failed = []
    for f in files:
        name = f[:-3]
        if only and name not in only:
            continue
        try:
            mod = __import__(name)
        except Exception as e:
            print("FAIL", name, "(import)", repr(e))
            sys.print_exception(e)
            failed.append(name + " (import)")
            continue
        why = getattr(mod, "MPY_SKIP", None)
        if why:
            print("SKIP", name, "-", why)
            skipped += 1
            continue
        skip_tests = getattr(mod, "MPY_SKIP_TESTS", {})
        for t in _tests(mod):
            if t in skip_tests:
                print("SKIP", name + "::" + t, "-", skip_tests[t])
                skipped += 1
                continue
            gc.collect()  # a big allocation must not fail on an earlier test's fragments
            try:
                getattr(mod, t)()
            except KeyboardInterrupt:
                raise
            # CancelledError and SystemExit are failures of a test, not the end of the run
            except BaseException as e:
                print("FAIL", name + "::" + t, repr(e))
                sys.print_exception(e)
                failed.append(name + "::" + t)
            else:
                print("ok  ", name + "::" + t)
                passed += 1
    for f in failed:  # again at the end, where a log's tail shows them
        print("FAILED", f)
    line = "%d passed, %d failed" % (passed, len(failed))
    if skipped:
        line += ", %d skipped" % skipped
    print(line)
    return 1 if failed else 0


sys.exit(main(sys.argv))
