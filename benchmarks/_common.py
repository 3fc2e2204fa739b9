"""Small timing helpers shared by the benchmarks."""
from segpost.benchmarking import median_time  # noqa: F401  (the same code as `segpost bench`)


def print_table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def paired_medians(fns, repeats):
    """Median seconds of each of ``fns`` ({name: callable}), timed in rounds: every round calls each once,
    the order rotating, so that drift of the machine (clock, the other core) falls on all of them alike."""
    import statistics
    import time

    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
