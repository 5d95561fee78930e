"""Shared by the quality benchmarks: per-domain AUC and WAUC over seeds, as a table."""

from __future__ import annotations

import statistics


def summarise(results: dict[str, dict[str, list[dict]]], seeds: list[int]) -> dict:
    """``results[dataset][mode]`` = one ``metrics.json`` per seed. Prints, per dataset, the
    per-domain test AUC (mean over seeds) and WAUC mean +- std of each mode; returns
    ``{dataset: {mode: {"wauc_mean", "wauc_std", "domain_auc_mean"}}}``."""
    summary: dict = {}
    for ds, by_mode in results.items():
        domains = list(next(iter(by_mode.values()))[0]["domains"])
        print(f"\n== {ds}: per-domain test AUC (mean over seeds {seeds}) and WAUC (mean +- std)")
        print(f"{'mode':<23}" + "".join(f"{d[:9]:>10}" for d in domains) + f"{'WAUC':>18}")
        summary[ds] = {}
        for mode, runs in by_mode.items():
            waucs = [r["wauc"] for r in runs]
            mean, std = statistics.mean(waucs), statistics.stdev(waucs) if len(waucs) > 1 else 0.0
            per = [statistics.mean(r["domains"][d]["auc"] for r in runs) for d in domains]
            print(f"{mode:<23}" + "".join(f"{a:>10.4f}" for a in per) + f"{mean:>11.4f} +- {std:.4f}")
            summary[ds][mode] = {"wauc_mean": round(mean, 5), "wauc_std": round(std, 5),
                                 "domain_auc_mean": {d: round(a, 5) for d, a in zip(domains, per)}}
    return summary
