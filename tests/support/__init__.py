"""Helpers the tests share: databases, worker processes, waiting, the command line,
private servers, handler modules for worker processes, the secret watch.

Test modules (``tests/test_*.py``) import helpers from here only: never from another
test module, and never from ``conftest.py``, which holds the fixtures and hooks
(tests/test_suite_layout.py holds both rules). Each helper that creates something (a
database, a role, a process, a directory) removes it whether the code inside it
passes or fails.
"""
