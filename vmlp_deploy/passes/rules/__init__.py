"""The rewrite rules, one per file, each with its test beside it (``<rule>_test.py``).

A rule names itself, says in one line what it does, matches (or declines with a reason) and rewrites; see
:mod:`..rule` for the protocol and :mod:`..rule_sets` for which rules run for which target, in which order.
"""
