"""polytask's benchmark machinery: suites, their report, the overhead benchmark, LibMTL's side.

Why here, in the repository's ``benchmarks/`` folder and not in the installed package: these are
measuring instruments for polytask's developers, not part of the library users install. They
carry the benchmark targets, drive LibMTL (installed with ``--no-deps``) and build workloads no
user needs; shipped in the wheel, each would become a supported API. And they use polytask's
public API only, like any user's code (``tests/bench/test_public_api_only.py`` checks it), so a
benchmark measures what a user gets and the library's internals stay free to change.

Entry points, from a checkout: ``python benchmarks/suite.py run|report``, ``python
benchmarks/overhead.py``; ``polytask bench run|report`` imports :mod:`polytask_bench.suite` from
the checkout the ``polytask`` package was installed from (``pip install -e .``).
"""
