"""The HTTP test suite: the real attnlm-server on loopback ports, every tests/http/test_*.py.

Run from the repository root:
    ATTNLM_SERVER=build/attnlm-server ATTNLM_CLI=build/attnlm python3 tests/http/run.py [NAME ...]
NAME picks modules, classes or tests (test_lifecycle, test_errors.TestApiKey, ...); none: all.
Under the sanitizer build (build/san/attnlm-server) a leak or error report makes a server's exit
status non-zero, which fails the test that owns the server: every server a test starts is
stopped with SIGTERM and must exit 0 (tests/lib/attnlm_server.py starts them).
Standard library only.  The API is described in docs/API.md.
"""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from servercase import CLI, SERVER  # noqa: E402


def main(names):
    for what, path in (("server", SERVER), ("command-line tool", CLI)):
        if not os.access(path, os.X_OK):
            sys.exit("no %s binary at %s (set ATTNLM_SERVER and ATTNLM_CLI)" % (what, path))
    loader = unittest.defaultTestLoader
    suite = loader.loadTestsFromNames(names) if names else loader.discover(HERE, "test_*.py", HERE)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
