"""A dataset's per-domain summary, as rows and as a printed table."""

from __future__ import annotations

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


def format_table(rows: list[dict]) -> str:
    """Plain fixed-width table of dict rows (same keys in each).

    >>> print(format_table([{"a": 1, "bb": "x"}, {"a": 22, "bb": "yy"}]))
    a   bb
    1   x
    22  yy
    """
    if not rows:
        return ""
    keys = list(rows[0])
    cells = [[str(k) for k in keys]] + [[_fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def summary_text(spec: DatasetSpec) -> str:
    rows = domain_rows(spec)
    total_pos = sum(r["positives"] for r in rows)
    head = (f"{spec.name}: {spec.rows:,} rows, {total_pos:,} positives, {len(rows)} domains, "
            f"{len(spec.fields)} fields ({len(spec.sparse_fields)} sparse, "
            f"{len(spec.multi_hot_fields)} multi-hot, {len(spec.dense_fields)} dense)")
    return head + "\n" + format_table(rows)
