"""Helpers shared by the benchmarks.

Timings go through ``time_calls`` (segpost.benchmarking, the same code as ``segpost bench``): a callable's
median of ``repeats`` timed calls after ``warmup`` untimed ones, or several callables timed in rounds, the
order rotating, so that drift of the machine falls on all of them alike.
"""
from segpost.benchmarking import time_calls  # noqa: F401


def print_table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
