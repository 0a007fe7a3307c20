"""The QLens benchmark harness: `python -m bench` (or `nox -s bench`); see bench/README.md.

Not part of the test suite. Everything listens on 127.0.0.1 and every load loop is bounded in
request count and wall time.
"""
