"""Fault injection: crashes, dead dependencies, concurrency, hostile input and secrets (issue #10).

Each scenario is a plain function returning a :class:`tests.reliability.outcome.FaultOutcome`; the tests assert
on it and ``bench/faults.py`` runs the same functions and prints the table the README quotes.
"""
