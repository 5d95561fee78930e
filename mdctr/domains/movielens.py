"""MovieLens-100K as an mdctr dataset (DESIGN.md §2).

``label = rating >= 4``; sparse fields user_id, item_id, age (bucket), occupation, gender,
zip_prefix, release_year; multi-hot genres; ``ts`` from the ratings; ``example_id`` is the
rating's row number in the source file. Domains by ``split``:

- ``gender``: F, M
- ``age``: under-18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
- ``age3``: the same ages in three groups of similar size: under-25, 25-34, 35+
- ``occupation``: the 21 occupations
- ``ads``: ``organic`` and ``ad``, the ad domain holding every rating of a fixed, seeded
  20% subset of items (users overlap). This is the cross-domain transfer setting.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from mdctr.domains.sources import GENRES, MovieLensRaw, load_movielens_100k
from mdctr.domains.spec import (
    DatasetSpec, DomainSpec, FieldKind, FieldSpec, RandomSplit, Role, SourceSpec, SplitSpec,
    TemporalSplit,
)
from mdctr.core.errors import ConfigError
from mdctr.core.io import atomic_dir
from mdctr.core.timeutil import DAY
from mdctr.domains.writer import DatasetWriter, build_table, list_array

MovieLensSplit = Literal["gender", "age", "age3", "occupation", "ads"]
SPLITS: tuple[str, ...] = ("gender", "age", "age3", "occupation", "ads")
AGE_BUCKETS = [(0, "under-18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-49"),
               (50, "50-55"), (56, "56+")]
#: ``age3``: each of AGE_BUCKETS' buckets -> one of three groups
AGE3_GROUPS = ["under-25", "25-34", "35+"]
AGE3_OF_BUCKET = np.array([0, 0, 1, 2, 2, 2, 2], dtype=np.int64)
AD_ITEM_SEED = 20240901
AD_ITEM_SHARE = 0.2


#: ``label = rating >= DEFAULT_LABEL_THRESHOLD`` (liked)
DEFAULT_LABEL_THRESHOLD = 4


def age_bucket(age: np.ndarray) -> np.ndarray:
    """Index into :data:`AGE_BUCKETS` (MovieLens-1M's buckets)."""
    edges = np.array([lo for lo, _ in AGE_BUCKETS[1:]])
    return np.searchsorted(edges, age, side="right").astype(np.int64)


def ad_items(item_ids: np.ndarray, seed: int = AD_ITEM_SEED, share: float = AD_ITEM_SHARE) -> np.ndarray:
    """The fixed, seeded subset of items whose ratings form the ``ad`` domain."""
    rng = np.random.default_rng(seed)
    ids = np.sort(np.unique(item_ids))
    return np.sort(rng.choice(ids, size=int(round(share * len(ids))), replace=False))


def _codes(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    vocab = sorted(values.unique().tolist())
    return pd.Categorical(values, categories=vocab).codes.astype(np.int64), vocab


def temporal_split(ts: np.ndarray, *, test_days: int = 14, valid_days: int = 7) -> TemporalSplit:
    """The last ``test_days`` whole UTC days test, the ``valid_days`` before validate."""
    last_day_start = int(ts.max()) // DAY * DAY
    test_start = last_day_start - (test_days - 1) * DAY
    return TemporalSplit(valid_start=test_start - valid_days * DAY, test_start=test_start)


def movielens_columns(raw: MovieLensRaw, split: MovieLensSplit,
                      label_threshold: int = DEFAULT_LABEL_THRESHOLD) -> tuple[dict, list[DomainSpec], dict]:
    """Columns of the dataset (in source order), its domains, and notes for dataset.yaml;
    ``label = rating >= label_threshold``."""
    r = raw.ratings
    users = raw.users.set_index("user_id")
    items = raw.items.set_index("item_id")
    u = users.loc[r["user_id"].to_numpy()]
    it = items.loc[r["item_id"].to_numpy()]

    occupation, occ_vocab = _codes(u["occupation"])
    gender, gender_vocab = _codes(u["gender"])
    zip_prefix, _ = _codes(u["zip"].str[:3].str.upper())
    age = age_bucket(u["age"].to_numpy())

    genre_index = {g: i for i, g in enumerate(GENRES)}
    item_genres = {iid: [genre_index[g] for g in gs] for iid, gs in zip(raw.items["item_id"], raw.items["genres"])}
    per_row = [item_genres[i] for i in r["item_id"].to_numpy()]  # 1,682 distinct lists, shared
    lengths = np.fromiter((len(g) for g in per_row), dtype=np.int64, count=len(per_row))
    offsets = np.zeros(len(per_row) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((x for g in per_row for x in g), dtype=np.int64, count=int(offsets[-1]))

    notes: dict = {"label": f"rating >= {label_threshold}", "genres": GENRES, "occupations": occ_vocab,
                   "age_buckets": [name for _, name in AGE_BUCKETS]}
    if split == "gender":
        names = gender_vocab
        domain = np.array(gender_vocab, dtype=object)[gender]
        domains = [DomainSpec(name=n) for n in names]
    elif split == "age":
        names = [name for _, name in AGE_BUCKETS]
        domain = np.array(names, dtype=object)[age]
        domains = [DomainSpec(name=n) for n in names]
    elif split == "age3":
        domain = np.array(AGE3_GROUPS, dtype=object)[AGE3_OF_BUCKET[age]]
        domains = [DomainSpec(name=n) for n in AGE3_GROUPS]
    elif split == "occupation":
        domain = np.array(occ_vocab, dtype=object)[occupation]
        domains = [DomainSpec(name=n) for n in occ_vocab]
    elif split == "ads":
        chosen = ad_items(raw.items["item_id"].to_numpy())
        is_ad = np.isin(r["item_id"].to_numpy(), chosen)
        domain = np.where(is_ad, "ad", "organic").astype(object)
        domains = [DomainSpec(name="organic", role=Role.organic), DomainSpec(name="ad", role=Role.ad)]
        notes.update({"ad_item_seed": AD_ITEM_SEED, "ad_item_share": AD_ITEM_SHARE,
                      "ad_items": int(len(chosen))})
    else:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")

    columns = {
        "example_id": np.arange(len(r), dtype=np.int64),
        "ts": r["ts"].to_numpy(np.int64),
        "domain": pa.array(domain, pa.string()),
        "label": (r["rating"].to_numpy() >= label_threshold).astype(np.int8),
        "user_id": r["user_id"].to_numpy(np.int64),
        "item_id": r["item_id"].to_numpy(np.int64),
        "age": age,
        "occupation": occupation,
        "gender": gender,
        "zip_prefix": zip_prefix,
        "release_year": it["release_year"].to_numpy(np.int64),
        "genres": list_array(offsets, flat),
    }
    return columns, domains, notes


def movielens_fields(columns: dict) -> list[FieldSpec]:
    sparse = ["user_id", "item_id", "age", "occupation", "gender", "zip_prefix", "release_year"]
    fields = [FieldSpec(name=n, kind=FieldKind.sparse, cardinality=int(columns[n].max()) + 1) for n in sparse]
    lengths = np.diff(columns["genres"].offsets.to_numpy())
    fields.append(FieldSpec(name="genres", kind=FieldKind.multi_hot, cardinality=len(GENRES),
                            max_len=int(lengths.max())))
    return fields


def prepare_movielens(
    split: MovieLensSplit,
    out: str | Path,
    *,
    split_seed: int = 0,
    overwrite: bool = False,
    raw: MovieLensRaw | None = None,
    label_threshold: int = DEFAULT_LABEL_THRESHOLD,
) -> DatasetSpec:
    """Write MovieLens-100K with the given domain ``split`` to ``out`` (atomically).

    ``label_threshold`` other than 4 makes another objective with the same rows and features
    (e.g. 3: "not disliked"), as a teacher trained for a different target would see them.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if not 2 <= label_threshold <= 5:
        raise ConfigError(f"label_threshold must be 2..5 (ratings are 1..5), got {label_threshold}")
    raw = raw if raw is not None else load_movielens_100k()
    columns, domains, notes = movielens_columns(raw, split, label_threshold)
    other = label_threshold != DEFAULT_LABEL_THRESHOLD
    ts = columns["ts"]
    notes["time_span"] = " to ".join(
        datetime.fromtimestamp(int(t), tz=timezone.utc).strftime("%Y-%m-%d") for t in (ts.min(), ts.max())
    )
    spec = DatasetSpec(
        name=f"movielens-100k-{split}" + (f"-rating{label_threshold}" if other else ""),
        rows=0,
        files=["pending"],
        fields=movielens_fields(columns),
        domains=domains,
        split=SplitSpec(random=RandomSplit(seed=split_seed), temporal=temporal_split(ts)),
        source=SourceSpec(kind="movielens-100k", origin=raw.origin, checksums=raw.checksums,
                          params={"split": split, **({"label_threshold": label_threshold} if other else {})}),
        notes=notes,
    )
    with atomic_dir(out, overwrite=overwrite) as tmp:
        writer = DatasetWriter(tmp, spec)
        writer.write(build_table(spec, columns))
        return writer.close()
