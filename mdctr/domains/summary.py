"""A dataset's per-domain summary, as rows and as a printed table."""

from __future__ import annotations

from mdctr.core.io import format_table
from mdctr.domains.spec import DatasetSpec


def domain_rows(spec: DatasetSpec) -> list[dict]:
    rows = []
    for d in spec.domains:
        n, pos = d.rows or 0, d.positives or 0
        row = {"domain": d.name, "role": d.role.value, "rows": n, "positives": pos,
               "ctr": round(pos / n, 4) if n else float("nan")}
        if d.bayes_auc is not None:
            row["bayes_auc"] = d.bayes_auc
        rows.append(row)
    return rows


def summary_text(spec: DatasetSpec) -> str:
    rows = domain_rows(spec)
    total_pos = sum(r["positives"] for r in rows)
    head = (f"{spec.name}: {spec.rows:,} rows, {total_pos:,} positives, {len(rows)} domains, "
            f"{len(spec.fields)} fields ({len(spec.sparse_fields)} sparse, "
            f"{len(spec.multi_hot_fields)} multi-hot, {len(spec.dense_fields)} dense)")
    return head + "\n" + format_table(rows)
