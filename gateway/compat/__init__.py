"""The only places the gateway touches a library below its public API.

One module per library. Each names what it relies on, and a contract test in
``tests/test_compat_*.py`` fails by name when an upgrade moves it; the
library's version is capped in ``pyproject.toml`` at the minors the suite has
passed on, and CI installs from ``constraints.txt``.
"""
