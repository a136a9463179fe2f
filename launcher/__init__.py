"""Starts herdless's processes on this machine: for `make run`, the tests' stacks and the load tester's.

Standard library and the runtime dependencies only, so that `make run` and the tests import it
without the load tester's extras.
"""
