"""MovieLens-100K: the real data, prepared into each domain split, and the source parsers."""

from __future__ import annotations

import hashlib
import io
import zipfile
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mdctr.core.errors import DataContractError, InputError
from mdctr.domains.movielens import (
    AD_ITEM_SEED, AGE_BUCKETS, SPLITS, ad_items, age_bucket, prepare_movielens, temporal_split,
)
from mdctr.domains.sources import (
    GENRES, GROUPLENS_MD5, RECBOLE_SHA256, MovieLensRaw, parse_grouplens, parse_recbole,
)
from mdctr.domains.spec import FieldKind, Role, load_spec
from mdctr.domains.validate import validate_dataset

SPARSE = ["user_id", "item_id", "age", "occupation", "gender", "zip_prefix", "release_year"]
DAY = 86_400


def merged(raw: MovieLensRaw) -> pd.DataFrame:
    """Ratings joined with users, computed independently of mdctr.domains.movielens."""
    return raw.ratings.merge(raw.users, on="user_id", how="left", validate="many_to_one")


# -- the raw data --------------------------------------------------------------------------

def test_raw_movielens_shape(ml_raw):
    r, u, i = ml_raw.ratings, ml_raw.users, ml_raw.items
    assert len(r) == 100_000
    assert len(u) == 943 and u["user_id"].is_unique and u["user_id"].max() == 943
    assert len(i) == 1682 and i["item_id"].is_unique and i["item_id"].max() == 1682
    assert int((r["rating"] >= 4).sum()) == 55_375
    assert sorted(r["rating"].unique().tolist()) == [1, 2, 3, 4, 5]
    # the file order of u.data: its first ratings are these
    assert r.iloc[:3][["user_id", "item_id", "rating", "ts"]].values.tolist() == [
        [196, 242, 3, 881250949], [186, 302, 3, 891717742], [22, 377, 1, 878887116]]
    # item-level genre counts of MovieLens-100K
    counts = pd.Series([g for gs in i["genres"] for g in gs]).value_counts()
    assert counts["Drama"] == 725 and counts["Comedy"] == 505 and counts["Action"] == 251
    assert counts["unknown"] == 2 and set(counts.index) == set(GENRES)
    assert ml_raw.checksums, "the source's checksums are recorded"


# -- the gender split ----------------------------------------------------------------------

def test_gender_counts(ml_gender_spec, ml_gender_df):
    spec, df = ml_gender_spec, ml_gender_df
    assert spec.rows == 100_000 and len(df) == 100_000
    assert df["example_id"].tolist() == list(range(100_000))
    assert int(df["label"].sum()) == 55_375
    assert [(d.name, d.role, d.rows) for d in spec.domains] == [
        ("F", Role.organic, 25_740), ("M", Role.organic, 74_260)]
    assert sum(d.positives for d in spec.domains) == 55_375
    assert df["domain"].value_counts().to_dict() == {"M": 74_260, "F": 25_740}


def test_gender_rows_match_source(ml_gender_df, ml_gender_spec, ml_raw):
    df, m = ml_gender_df, merged(ml_raw)
    np.testing.assert_array_equal(df["user_id"].to_numpy(), m["user_id"].to_numpy())
    np.testing.assert_array_equal(df["item_id"].to_numpy(), m["item_id"].to_numpy())
    np.testing.assert_array_equal(df["ts"].to_numpy(), m["ts"].to_numpy())
    np.testing.assert_array_equal(df["label"].to_numpy(), (m["rating"] >= 4).astype(np.int8).to_numpy())
    np.testing.assert_array_equal(df["domain"].to_numpy(dtype=object), m["gender"].to_numpy(dtype=object))
    # positives per domain, counted from the source
    pos = m.assign(pos=m["rating"] >= 4).groupby("gender")["pos"].sum()
    assert {d.name: d.positives for d in ml_gender_spec.domains} == {"F": pos["F"], "M": pos["M"]}
    # gender code: index into the sorted vocabulary [F, M]
    np.testing.assert_array_equal(df["gender"].to_numpy(), (m["gender"] == "M").astype(np.int64).to_numpy())


def test_fields_and_cardinalities(ml_gender_spec, ml_gender_df):
    spec, df = ml_gender_spec, ml_gender_df
    assert [f.name for f in spec.sparse_fields] == SPARSE
    assert [(f.name, f.kind) for f in spec.multi_hot_fields] == [("genres", FieldKind.multi_hot)]
    assert spec.dense_fields == []
    card = {f.name: f.cardinality for f in spec.fields}
    assert card == {"user_id": 944, "item_id": 1683, "age": 7, "occupation": 21, "gender": 2,
                    "zip_prefix": int(df["zip_prefix"].max()) + 1, "release_year": 1999, "genres": 19}
    for name in SPARSE:
        assert df[name].min() >= 0 and df[name].max() == card[name] - 1, name
    lengths = df["genres"].map(len)
    assert spec.field("genres").max_len == lengths.max() == 6
    assert lengths.min() == 1  # every item has at least one genre (possibly 'unknown')


def test_genres_match_items(ml_gender_df, ml_raw):
    items = ml_raw.items.set_index("item_id")
    df = ml_gender_df
    rng = np.random.default_rng(0)
    for eid in rng.choice(len(df), size=500, replace=False):
        row = df.loc[eid]
        want = [GENRES.index(g) for g in items.loc[row["item_id"], "genres"]]
        assert list(row["genres"]) == want, eid
    # release year: item 1 is Toy Story (1995); 0 marks an unknown year (item 267)
    by_item = df.drop_duplicates("item_id").set_index("item_id")
    assert by_item.loc[1, "release_year"] == 1995
    assert by_item.loc[267, "release_year"] == 0
    assert list(by_item.loc[267, "genres"]) == [GENRES.index("unknown")]


def test_time_range_utc(ml_gender_spec, ml_gender_df):
    spec = ml_gender_spec
    lo, hi = spec.time_range
    assert (lo, hi) == (int(ml_gender_df["ts"].min()), int(ml_gender_df["ts"].max()))
    day = lambda t: datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d")  # noqa: E731
    assert (day(lo), day(hi)) == ("1997-09-20", "1998-04-22")
    assert spec.notes["time_span"] == "1997-09-20 to 1998-04-22"


def test_temporal_split_recorded(ml_gender_spec):
    t = ml_gender_spec.split.temporal
    assert t is not None
    # the last 14 whole UTC days test (1998-04-09 ..), the 7 before validate (1998-04-02 ..)
    assert t.test_start == int(datetime(1998, 4, 9, tzinfo=timezone.utc).timestamp()) == 892_080_000
    assert t.valid_start == int(datetime(1998, 4, 2, tzinfo=timezone.utc).timestamp()) == 891_475_200
    assert t.test_start - t.valid_start == 7 * DAY


def test_temporal_split_function():
    ts = np.array([0, 5 * DAY + 3, 30 * DAY + 100])
    t = temporal_split(ts, test_days=2, valid_days=3)
    assert (t.test_start, t.valid_start) == (29 * DAY, 26 * DAY)


def test_checksums_and_fingerprint(ml_gender_spec, ml_gender_dir, ml_raw):
    spec = ml_gender_spec
    assert spec.source.kind == "movielens-100k"
    assert spec.source.params == {"split": "gender"}
    assert spec.source.checksums == ml_raw.checksums
    assert spec.source.checksums in (dict(RECBOLE_SHA256), {"ml-100k.zip(md5)": GROUPLENS_MD5})
    for v in spec.source.checksums.values():
        assert len(v) in (32, 64) and int(v, 16) >= 0
    h = hashlib.sha256()
    for f in spec.files:
        h.update((ml_gender_dir / f).read_bytes())
    assert spec.fingerprint == h.hexdigest()


def test_split_seed_recorded(ml_prepare, ml_gender_spec):
    assert ml_gender_spec.split.random.seed == 0
    spec7 = load_spec(ml_prepare("gender", split_seed=7))
    assert spec7.split.random.seed == 7
    assert (spec7.split.random.train, spec7.split.random.valid) == (0.8, 0.1)
    # the seed changes the spec, not the data
    assert spec7.fingerprint == ml_gender_spec.fingerprint


def test_prepare_is_deterministic(tmp_path, ml_raw, ml_gender_spec, ml_gender_dir):
    spec = prepare_movielens("gender", tmp_path / "again", raw=ml_raw)
    assert spec.fingerprint == ml_gender_spec.fingerprint
    assert (tmp_path / "again" / "dataset.yaml").read_text() == (ml_gender_dir / "dataset.yaml").read_text()


def test_prepared_dataset_validates(ml_gender_dir):
    spec, checker = validate_dataset(ml_gender_dir)
    assert checker.rows == 100_000
    assert checker.domain_rows == {"F": 25_740, "M": 74_260}
    assert sum(checker.domain_positives.values()) == 55_375


# -- the other splits ----------------------------------------------------------------------

def test_age_split(ml_prepare, ml_raw):
    spec = load_spec(ml_prepare("age"))
    names = [name for _, name in AGE_BUCKETS]
    assert [d.name for d in spec.domains] == names
    assert sum(d.rows for d in spec.domains) == 100_000
    assert sum(d.positives for d in spec.domains) == 55_375
    # independent bucketing of the source ages
    m = merged(ml_raw)
    bucket = pd.cut(m["age"], bins=[-1, 17, 24, 34, 44, 49, 55, 200], labels=names)
    assert {d.name: d.rows for d in spec.domains} == bucket.value_counts().to_dict()
    assert all(d.rows > 0 for d in spec.domains)


def test_age3_split_groups_the_source_ages(ml_prepare, ml_raw):
    spec = load_spec(ml_prepare("age3"))
    assert [d.name for d in spec.domains] == ["under-25", "25-34", "35+"]
    m = merged(ml_raw)
    group = pd.cut(m["age"], bins=[-1, 24, 34, 200], labels=["under-25", "25-34", "35+"])
    assert {d.name: d.rows for d in spec.domains} == group.value_counts().to_dict()
    assert sum(d.positives for d in spec.domains) == 55_375
    # three groups of similar size (none under a fifth of the rows)
    assert min(d.rows for d in spec.domains) > 20_000


def test_age_bucket_edges():
    ages = np.array([1, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73])
    assert age_bucket(ages).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]


def test_occupation_split(ml_prepare, ml_raw):
    spec = load_spec(ml_prepare("occupation"))
    assert len(spec.domains) == 21
    m = merged(ml_raw)
    assert [d.name for d in spec.domains] == sorted(m["occupation"].unique().tolist())
    assert {d.name: d.rows for d in spec.domains} == m["occupation"].value_counts().to_dict()
    assert sum(d.rows for d in spec.domains) == 100_000
    assert spec.notes["occupations"] == [d.name for d in spec.domains]


def test_ads_split(ml_prepare, ml_raw):
    out = ml_prepare("ads")
    spec = load_spec(out)
    assert [(d.name, d.role) for d in spec.domains] == [("organic", Role.organic), ("ad", Role.ad)]
    chosen = ad_items(ml_raw.items["item_id"].to_numpy())
    assert len(chosen) == 336 == round(0.2 * 1682) == spec.notes["ad_items"]
    assert len(np.unique(chosen)) == 336 and set(chosen) <= set(range(1, 1683))
    assert spec.notes["ad_item_seed"] == AD_ITEM_SEED
    # fixed: the same seed picks the same items, another seed others
    np.testing.assert_array_equal(chosen, ad_items(ml_raw.items["item_id"].to_numpy()))
    assert set(ad_items(ml_raw.items["item_id"].to_numpy(), seed=1)) != set(chosen)

    df = pq.read_table(out / spec.files[0]).to_pandas()
    is_ad = df["domain"] == "ad"
    # the ad domain holds exactly the ratings of the chosen items
    assert set(df.loc[is_ad, "item_id"]) == set(chosen)
    assert not df.loc[~is_ad, "item_id"].isin(chosen).any()
    n_ad = int(ml_raw.ratings["item_id"].isin(chosen).sum())
    assert spec.domains[1].rows == n_ad == int(is_ad.sum())
    assert spec.domains[0].rows == 100_000 - n_ad
    assert 0.1 < n_ad / 100_000 < 0.35
    # users overlap between the domains
    overlap = set(df.loc[is_ad, "user_id"]) & set(df.loc[~is_ad, "user_id"])
    assert len(overlap) > 500


def test_unknown_split_rejected(tmp_path, ml_raw):
    with pytest.raises(ValueError, match="--split must be one of"):
        prepare_movielens("colour", tmp_path / "x", raw=ml_raw)
    assert not (tmp_path / "x").exists()
    assert SPLITS == ("gender", "age", "age3", "occupation", "ads")


def test_prepare_refuses_non_empty_out(tmp_path, ml_raw, ml_gender_spec):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="output exists"):
        prepare_movielens("gender", out, raw=ml_raw)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    spec = prepare_movielens("gender", out, raw=ml_raw, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.yaml", "part-00000.parquet"]
    assert spec.fingerprint == ml_gender_spec.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary siblings left


# -- parsers, on a hand-made archive ---------------------------------------------------------

def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


U_DATA = "196\t242\t3\t881250949\n186\t302\t5\t891717742\n22\t267\t4\t878887116\n196\t1\t1\t881251000\n"
U_USER = "22|25|M|writer|40206\n186|39|F|executive|00000\n196|49|M|writer|T8H1N\n"
U_ITEM = (
    f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
    f"{_flags('Animation', 'Children' + chr(39) + 's', 'Comedy')}\n"
    f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{_flags('Comedy')}\n"
    f"267|unknown||||{_flags('unknown')}\n"
    f"302|L.A. Confidential (1997)|01-Jan-1997||http://x|{_flags('Crime', 'Film-Noir', 'Mystery', 'Thriller')}\n"
    f"1311|\u00c1 k\u00f6ldum klaka (Cold Fever) (1994)|01-Jan-1994||http://x|{_flags('Comedy', 'Drama')}\n"
)

EXPECTED_RATINGS = pd.DataFrame({
    "user_id": np.array([196, 186, 22, 196], dtype=np.int64),
    "item_id": np.array([242, 302, 267, 1], dtype=np.int64),
    "rating": np.array([3, 5, 4, 1], dtype=np.int64),
    "ts": np.array([881250949, 891717742, 878887116, 881251000], dtype=np.int64),
})
EXPECTED_USERS = pd.DataFrame({
    "user_id": np.array([22, 186, 196], dtype=np.int64),
    "age": np.array([25, 39, 49], dtype=np.int64),
    "gender": ["M", "F", "M"],
    "occupation": ["writer", "executive", "writer"],
    "zip": ["40206", "00000", "T8H1N"],
})
EXPECTED_ITEMS = pd.DataFrame({
    "item_id": np.array([1, 242, 267, 302, 1311], dtype=np.int64),
    "release_year": np.array([1995, 1997, 0, 1997, 1994], dtype=np.int64),
    "genres": [["Animation", "Children's", "Comedy"], ["Comedy"], ["unknown"],
               ["Crime", "Film-Noir", "Mystery", "Thriller"], ["Comedy", "Drama"]],
})


def grouplens_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ml-100k/u.data", U_DATA.encode())
        z.writestr("ml-100k/u.user", U_USER.encode())
        z.writestr("ml-100k/u.item", U_ITEM.encode("latin-1"))
        z.writestr("ml-100k/README", b"not read")
    return buf.getvalue()


def recbole_files() -> dict[str, bytes]:
    """The same data in recbole's atomic-file format."""
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + U_DATA
    user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n" + U_USER.replace("|", "\t")
    item = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
            "1\tToy Story\t1995\tAnimation Children's Comedy\n242\tKolya\t1997\tComedy\n"
            "267\tunkonwn\tunkonwn\tunknown\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
            "1311\t\u00c1 k\u00f6ldum klaka\t1994\tComedy Drama\n")
    return {"ml-100k.inter": inter.encode(), "ml-100k.user": user.encode(), "ml-100k.item": item.encode()}


def test_parse_grouplens():
    ratings, users, items = parse_grouplens(grouplens_zip())
    pd.testing.assert_frame_equal(ratings, EXPECTED_RATINGS)
    pd.testing.assert_frame_equal(users, EXPECTED_USERS)
    pd.testing.assert_frame_equal(items, EXPECTED_ITEMS)


def test_parse_recbole_matches_grouplens():
    for got, want in zip(parse_recbole(recbole_files()), parse_grouplens(grouplens_zip())):
        pd.testing.assert_frame_equal(got, want)


def test_prepare_from_handmade_raw(tmp_path):
    r, u, i = parse_grouplens(grouplens_zip())
    raw = MovieLensRaw(r, u, i, origin="test", checksums={"u.zip": "0" * 64})
    spec = prepare_movielens("age", tmp_path / "ds", raw=raw, split_seed=3)
    df = pq.read_table(tmp_path / "ds" / spec.files[0]).to_pandas()
    assert df["example_id"].tolist() == [0, 1, 2, 3]
    assert df["label"].tolist() == [0, 1, 1, 0]
    assert df["item_id"].tolist() == [242, 302, 267, 1]
    assert df["release_year"].tolist() == [1997, 1997, 0, 1995]
    assert [list(g) for g in df["genres"]] == [[5], [6, 10, 13, 16], [0], [3, 4, 5]]
    # users 196 (49, writer, T8H), 186 (39, executive, 000), 22 (25, writer, 402)
    assert df["domain"].tolist() == ["45-49", "35-44", "25-34", "45-49"]
    assert df["age"].tolist() == [4, 3, 2, 4]
    assert df["occupation"].tolist() == [1, 0, 1, 1]  # vocabulary [executive, writer]
    assert df["gender"].tolist() == [1, 0, 1, 1]  # [F, M]
    assert df["zip_prefix"].tolist() == [2, 0, 1, 2]  # [000, 402, T8H]
    assert {d.name: d.rows for d in spec.domains} == {
        "under-18": 0, "18-24": 0, "25-34": 1, "35-44": 1, "45-49": 2, "50-55": 0, "56+": 0}
    assert {d.name: d.positives for d in spec.domains if d.rows} == {"25-34": 1, "35-44": 1, "45-49": 0}
    assert spec.split.random.seed == 3
    assert spec.source.checksums == {"u.zip": "0" * 64}
    assert spec.time_range == (878887116, 891717742)
    assert spec.field("genres").max_len == 4


# -- built-in dataset references -------------------------------------------------------------

def test_resolve_builtin_ref(tmp_path, monkeypatch, ml_raw, ml_gender_spec):
    from mdctr.domains.datasets import is_builtin_ref, prepare_builtin, resolve_data
    from mdctr.core.io import cache_dir

    real_raw = cache_dir() / "raw"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "raw").symlink_to(real_raw, target_is_directory=True)
    monkeypatch.setenv("MDCTR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MDCTR_OFFLINE", "1")

    assert is_builtin_ref("movielens-100k:ads") and not is_builtin_ref("some/dir") and not is_builtin_ref("x:y")
    out = resolve_data("movielens-100k:gender")
    assert out == tmp_path / "cache" / "datasets" / "movielens-100k-gender"
    assert load_spec(out).fingerprint == ml_gender_spec.fingerprint
    mtime = (out / "dataset.yaml").stat().st_mtime_ns
    assert resolve_data("movielens-100k:gender") == out  # prepared once, then reused
    assert (out / "dataset.yaml").stat().st_mtime_ns == mtime
    assert resolve_data(str(out)) == out  # a directory resolves to itself
    with pytest.raises(DataContractError, match="not a dataset"):
        resolve_data(tmp_path / "cache")
    with pytest.raises(ValueError, match="unknown dataset 'movielens-1m'"):
        prepare_builtin("movielens-1m", "gender", tmp_path / "x")
    with pytest.raises(ValueError, match="must be one of gender, age, age3, occupation, ads"):
        prepare_builtin("movielens-100k", "zip", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_label_threshold_makes_another_objective_on_the_same_rows(tmp_path, ml_raw, ml_gender_df):
    """``label_threshold`` 3 ("not disliked"): same rows and features, labels from the
    source ratings; the spec names it so it cannot pass for the default objective."""
    spec = prepare_movielens("gender", tmp_path / "r3", raw=ml_raw, label_threshold=3)
    df = pq.read_table(tmp_path / "r3" / spec.files[0]).to_pandas()
    m = merged(ml_raw)
    np.testing.assert_array_equal(df["label"].to_numpy(), (m["rating"] >= 3).astype(np.int8).to_numpy())
    np.testing.assert_array_equal(df["item_id"].to_numpy(), ml_gender_df["item_id"].to_numpy())
    assert spec.name == "movielens-100k-gender-rating3" and spec.notes["label"] == "rating >= 3"
    assert spec.source.params == {"split": "gender", "label_threshold": 3}
    assert sum(d.positives for d in spec.domains) == int((m["rating"] >= 3).sum())
    with pytest.raises(ValueError, match="label_threshold must be 2..5"):
        prepare_movielens("gender", tmp_path / "r6", raw=ml_raw, label_threshold=6)
    assert not (tmp_path / "r6").exists()
