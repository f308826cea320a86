"""How the benchmarks time their variants: interleaved latency rounds, throughput rounds
(steps back to back, one wait at the end), and the summary rows with paired ratios.

A variant is `(run, info)`: `run(sync=True)` runs one step and waits for it unless
`sync=False`; `info` is a dict of the variant's figures ("framework", "method", ...).
"""

from __future__ import annotations

import statistics
import time


def time_interleaved(variants, *, steps: int, warmup: int) -> dict[str, list[float]]:
    """Latency: runs `warmup` then `steps` rounds; each round runs every variant once, in
    turn, each step waited for (`run()` synchronizes)."""
    times = {label: [] for label in variants}
    for r in range(warmup + steps):
        for label, (run, _) in variants.items():
            t0 = time.perf_counter()
            run()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[label].append(dt)
    return times


def time_throughput(variants, *, steps: int, rounds: int) -> dict[str, list[float]]:
    """Throughput: per round and variant, `steps` steps dispatched back to back, only the
    last one waited for (`run(sync=False)`, then `run()`); seconds per step of each round.
    Variants take turns within a round, as in `time_interleaved`."""
    times = {label: [] for label in variants}
    if steps <= 0:
        return times
    for _ in range(rounds):
        for label, (run, _) in variants.items():
            t0 = time.perf_counter()
            for _ in range(steps - 1):
                run(sync=False)
            run()
            times[label].append((time.perf_counter() - t0) / steps)
    return times


def summarize(variants, times, batch, throughput=None) -> list[dict]:
    rows = []
    throughput = throughput or {}
    for label, (_, info) in variants.items():
        med = statistics.median(times[label])
        row = dict(
            info,
            label=label,
            ms_per_step=1e3 * med,
            ms_min=1e3 * min(times[label]),
            images_per_s=batch / med,
        )
        if throughput.get(label):
            t_med = statistics.median(throughput[label])
            row.update(throughput_ms_per_step=1e3 * t_med, throughput_images_per_s=batch / t_med)
        rows.append(row)
    by_label = {r["label"]: r for r in rows}

    def paired(label, ref):
        """Median over rounds of the per-round time ratio (robust to load swings)."""
        return statistics.median(a / b for a, b in zip(times[label], times[ref]))

    for r in rows:
        label = r["label"]
        refs = {
            "ratio_to_kd": label.replace(f"/{r['method']}", "/kd", 1),
            "jax_over_torch": f"torch/{r['method']}" if r["framework"] == "jax" else None,
            "fast_over_plain": label.split("/fast_conv=")[0] if "/fast_conv=" in label else None,
        }
        for key, ref in refs.items():
            if ref in by_label:
                r[key] = paired(label, ref)
                if "throughput_ms_per_step" in r and "throughput_ms_per_step" in by_label[ref]:
                    rt = r["throughput_ms_per_step"] / by_label[ref]["throughput_ms_per_step"]
                    r[f"throughput_{key}"] = rt
    return rows


def print_table(rows: list[dict]) -> None:
    """The summary rows as a text table, then their throughput lines."""
    columns = (
        "ms/step",
        "min",
        "img/s",
        "/KD",
        "JAX/PT",
        "fast/plain",
        "extra",
        "state",
        "compile",
    )
    widths = (9, 8, 8, 6, 7, 10, 9, 10, 8)
    print(f"{'variant':36s} " + " ".join(f"{c:>{w}s}" for c, w in zip(columns, widths)))
    for r in rows:
        ratio, jt, fp = (
            f"{r[k]:.3f}" if k in r else "-"
            for k in ("ratio_to_kd", "jax_over_torch", "fast_over_plain")
        )
        print(
            f"{r['label']:36s} {r['ms_per_step']:9.1f} {r['ms_min']:8.1f} {r['images_per_s']:8.1f} "
            f"{ratio:>6s} {jt:>7s} {fp:>10s} {r['extra_params']:9d} "
            f"{r.get('state_numbers', 0):10d} {r['compile_s']:7.1f}s"
        )
    for r in rows:
        if "throughput_ms_per_step" in r:
            print(
                f"[throughput] {r['label']:36s} {r['throughput_ms_per_step']:9.2f} ms/step "
                f"{r['throughput_images_per_s']:10.1f} img/s"
            )
