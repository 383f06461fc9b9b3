"""Test and benchmark support, not shipped with hotloop: a controller simulator with a virtual clock
(sim.py), a minimal streaming completions server for load-generator tests (mock_server.py), and
helpers that launch `hotloop serve ...` processes and wait for their URL line (launch.py), and
in-memory fakes of the backends seam for whole runs without processes (fakes.py).

Tests import it as ``support`` (tests/ is on sys.path through tests/conftest.py); benchmarks put
tests/ on sys.path first.
"""
