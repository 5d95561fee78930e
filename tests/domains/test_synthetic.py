"""The seeded synthetic generator: determinism, shape, planted signal, chunking."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mdctr.core.errors import ConfigError
from mdctr.domains.spec import FieldKind, Role, load_spec
from mdctr.domains.synthetic import (
    GroundTruth, SyntheticConfig, binned_auc, generate_synthetic, load_synthetic_config,
)
from mdctr.domains.validate import validate_dataset

REPO = Path(__file__).resolve().parents[2]


def sha256_files(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def read_df(directory: Path):
    spec = load_spec(directory)
    return pq.read_table([directory / f for f in spec.files][0]).to_pandas() if len(spec.files) == 1 else None


def exact_auc(p: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties."""
    order = np.argsort(p, kind="stable")
    ranks = np.empty(len(p), dtype=np.float64)
    sp = p[order]
    # average ranks over runs of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sp)) + 1]
    ends = np.r_[starts[1:], len(sp)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def default_50k(tmp_path_factory):
    """The default config (8 domains, 2 of them ads), 50,000 rows."""
    cfg = SyntheticConfig(rows=50_000)
    out = tmp_path_factory.mktemp("synth50k") / "ds"
    spec = generate_synthetic(cfg, out, progress=False)
    return cfg, out, spec


def test_same_seed_byte_identical(tmp_path, small_synth_cfg, small_synth_dir):
    a = generate_synthetic(small_synth_cfg, tmp_path / "a", progress=False)
    files = sha256_files(tmp_path / "a")
    assert set(files) == {"dataset.yaml", "part-00000.parquet"}
    assert files == sha256_files(small_synth_dir)  # also identical to the session's copy
    assert (tmp_path / "a" / "dataset.yaml").read_text() == (small_synth_dir / "dataset.yaml").read_text()
    assert a.fingerprint == files["part-00000.parquet"]


def test_different_seed_differs(tmp_path, small_synth_cfg, small_synth_dir):
    other = small_synth_cfg.model_copy(update={"seed": small_synth_cfg.seed + 1})
    spec = generate_synthetic(other, tmp_path / "b", progress=False)
    assert spec.fingerprint != load_spec(small_synth_dir).fingerprint
    a, b = read_df(small_synth_dir), read_df(tmp_path / "b")
    assert len(a) == len(b) == 3000
    assert (a["label"] != b["label"]).mean() > 0.2
    assert (a["user_id"] != b["user_id"]).mean() > 0.5
    assert spec.source.params["seed"] == small_synth_cfg.seed + 1


def test_rows_and_roles_as_configured(tmp_path):
    cfg = SyntheticConfig.model_validate({
        "rows": 12_000, "users": 500, "items": 200, "seed": 11,
        "domains": [{"name": "web", "share": 2.0}, {"name": "app", "share": 1.0},
                    {"name": "banner", "role": "ad", "share": 1.0}],
    })
    spec = generate_synthetic(cfg, tmp_path / "ds", progress=False)
    assert spec.rows == 12_000
    assert [(d.name, d.role) for d in spec.domains] == [
        ("web", Role.organic), ("app", Role.organic), ("banner", Role.ad)]
    rows = {d.name: d.rows for d in spec.domains}
    assert sum(rows.values()) == 12_000
    # shares 2:1:1
    assert rows["web"] / 12_000 == pytest.approx(0.5, abs=0.02)
    assert rows["app"] / 12_000 == pytest.approx(0.25, abs=0.02)
    assert rows["banner"] / 12_000 == pytest.approx(0.25, abs=0.02)
    _, checker = validate_dataset(tmp_path / "ds")
    assert checker.domain_rows == rows


def test_fields(small_synth_dir, small_synth_cfg):
    cfg = small_synth_cfg
    spec = load_spec(small_synth_dir)
    assert [(f.name, f.kind, f.cardinality) for f in spec.fields] == [
        ("user_id", FieldKind.sparse, cfg.users + 1), ("item_id", FieldKind.sparse, cfg.items + 1),
        ("category", FieldKind.sparse, cfg.categories + 1), ("city", FieldKind.sparse, 41),
        ("tags", FieldKind.multi_hot, cfg.tags), ("dense_0", FieldKind.dense, None),
        ("dense_1", FieldKind.dense, None)]
    df = read_df(small_synth_dir)
    assert df["user_id"].between(1, cfg.users).all()
    assert df["item_id"].between(1, cfg.items).all()
    assert df["category"].between(1, cfg.categories).all()
    assert df["city"].between(1, 40).all()
    lengths = df["tags"].map(len)
    assert lengths.min() >= 1 and lengths.max() <= cfg.max_tags_per_item
    assert all(0 <= t < cfg.tags for ts in df["tags"] for t in ts)
    # an item's tags (and category) are fixed: the same item always carries the same ones
    per_item = df.groupby("item_id")["tags"].agg(lambda s: len({tuple(t) for t in s}))
    assert per_item.max() == 1
    assert df.groupby("item_id")["category"].nunique().max() == 1
    for c in ("dense_0", "dense_1"):
        x = df[c].to_numpy()
        assert x.dtype == np.float32 and np.isfinite(x).all()
        assert abs(x.mean()) < 0.1 and 0.9 < x.std() < 1.1
    # power-law ids: the most popular user is far above the mean user
    counts = df["user_id"].value_counts()
    assert counts.iloc[0] > 5 * counts.mean()


def test_time_range(small_synth_dir, small_synth_cfg):
    spec = load_spec(small_synth_dir)
    t0 = 1_704_067_200  # 2024-01-01 UTC
    lo, hi = spec.time_range
    assert t0 <= lo < t0 + 86_400 and t0 + 29 * 86_400 <= hi < t0 + 30 * 86_400
    t = spec.split.temporal
    # days=30: the last 3 days test, the 3 before validate
    assert (t.valid_start, t.test_start) == (t0 + 24 * 86_400, t0 + 27 * 86_400)


def test_chunked_generation(tmp_path):
    cfg = SyntheticConfig(rows=5000, chunk_rows=1000, users=400, items=100)
    spec = generate_synthetic(cfg, tmp_path / "ds", progress=False)
    meta = pq.ParquetFile(tmp_path / "ds" / spec.files[0]).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [1000] * 5
    df = read_df(tmp_path / "ds")
    np.testing.assert_array_equal(df["example_id"].to_numpy(), np.arange(5000))
    ts = df["ts"].to_numpy()
    assert np.all(np.diff(ts) >= 0)
    # each chunk covers its own fifth of the time span
    span = cfg.time.days * 86_400
    t0 = spec.time_range[0] // 86_400 * 86_400
    for c in range(5):
        part = ts[c * 1000:(c + 1) * 1000] - t0
        assert c * span / 5 - 1 <= part.min() and part.max() < (c + 1) * span / 5 + 1
    # chunk c draws from rng([seed, c]): chunk 0 draws the same users and items whatever the
    # row count (its timestamps, hence drifted interests and labels, scale with the row count)
    spec2 = generate_synthetic(cfg.model_copy(update={"rows": 2000}), tmp_path / "ds2", progress=False)
    df2 = read_df(tmp_path / "ds2")
    assert spec2.rows == 2000
    np.testing.assert_array_equal(df2["user_id"].to_numpy()[:1000], df["user_id"].to_numpy()[:1000])
    np.testing.assert_array_equal(df2["item_id"].to_numpy()[:1000], df["item_id"].to_numpy()[:1000])
    np.testing.assert_array_equal(df2["domain"].to_numpy()[:1000], df["domain"].to_numpy()[:1000])


def test_bayes_auc_default_config(default_50k):
    cfg, out, spec = default_50k
    assert [(d.name, d.role) for d in spec.domains] == (
        [(f"d{i}", Role.organic) for i in range(6)] + [("ad0", Role.ad), ("ad1", Role.ad)])
    assert spec.rows == 50_000
    for d in spec.domains:
        assert d.bayes_auc is not None and 0.6 < d.bayes_auc < 0.95, d
        assert 0.1 < d.positives / d.rows < 0.9, d
    # the recorded (binned) AUC is the AUC of the true probabilities against the labels
    truth = GroundTruth(cfg)
    columns, dom, p = truth.chunk(0, 0, cfg.rows)
    df = read_df(out)
    np.testing.assert_array_equal(columns["label"], df["label"].to_numpy())
    for j, d in enumerate(spec.domains):
        rows = dom == j
        assert exact_auc(p[rows], columns["label"][rows]) == pytest.approx(d.bayes_auc, abs=2e-3), d.name
    # labels are Bernoulli(p): calibration overall and in the top/bottom deciles
    y = columns["label"].astype(np.float64)
    assert y.mean() == pytest.approx(p.mean(), abs=0.01)
    lo, hi = np.quantile(p, [0.1, 0.9])
    assert y[p <= lo].mean() == pytest.approx(p[p <= lo].mean(), abs=0.02)
    assert y[p >= hi].mean() == pytest.approx(p[p >= hi].mean(), abs=0.02)


def test_users_overlap_organic_and_ad(default_50k):
    _, out, spec = default_50k
    df = read_df(out)
    ad = df["domain"].isin([d.name for d in spec.domains if d.role is Role.ad])
    ad_users, org_users = set(df.loc[ad, "user_id"]), set(df.loc[~ad, "user_id"])
    shared = ad_users & org_users
    assert len(shared) > 0.5 * len(ad_users)
    # ...but not every user is everywhere: some are active in one domain only
    per_user = df.groupby("user_id")["domain"].nunique()
    assert (per_user == 1).sum() > 0 and (per_user == 8).sum() > 0


def test_binned_auc():
    assert binned_auc(np.array([0, 0, 5]), np.array([5, 0, 0])) == 1.0
    assert binned_auc(np.array([5, 0, 0]), np.array([0, 0, 5])) == 0.0
    assert binned_auc(np.array([0, 4, 0]), np.array([0, 4, 0])) == 0.5  # ties count 1/2
    assert binned_auc(np.array([1, 1]), np.array([1, 1])) == 0.5
    assert np.isnan(binned_auc(np.array([0, 0]), np.array([3, 1])))


def test_config_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: tiny\nseed: 4\nrows: 2000\ndomains:\n  - {name: a}\n  - {name: b, role: ad}\n"
                    "signal: {shared: 2.0}\ntime: {start: 2023-06-01, days: 10}\n")
    cfg = load_synthetic_config(path)
    assert (cfg.name, cfg.seed, cfg.rows, cfg.signal.shared, cfg.signal.domain) == ("tiny", 4, 2000, 2.0, 0.8)
    assert [(d.name, d.role) for d in cfg.domains] == [("a", Role.organic), ("b", Role.ad)]
    spec = generate_synthetic(cfg, tmp_path / "ds", progress=False)
    assert spec.name == "tiny" and spec.rows == 2000
    assert spec.time_range[0] >= 1_685_577_600  # 2023-06-01 UTC
    assert spec.time_range[1] < 1_685_577_600 + 10 * 86_400


def test_shipped_config_loads():
    cfg = load_synthetic_config(REPO / "configs" / "synthetic.yaml")
    assert len(cfg.domains) >= 2 and any(d.role is Role.ad for d in cfg.domains)


@pytest.mark.parametrize("text, match", [
    ("rows: 100\ncolour: red\n", "unknown key 'colour'"),
    ("signal: {shard: 1.0}\n", "unknown key 'signal.shard'"),
    ("rows: [1, 2\n", "malformed YAML at line"),
    ("rows: -5\n", "'rows'"),
    ("chunk_rows: 10\n", "'chunk_rows'"),
    ("domains: [{name: a}, {name: a}]\n", "names must be unique"),
    ("domains: []\n", "at least one domain"),
    ("extra_fields: [{name: user_id, cardinality: 3}]\n", "clashes with a built-in field"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_bad_config(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_synthetic_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert info.value.file == str(path)


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_synthetic_config(tmp_path / "nope.yaml")
