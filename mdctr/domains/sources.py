"""Fetch MovieLens-100K into the user's cache, verified by checksum.

Sources, in order:

1. The GroupLens archive (``ml-100k.zip``, md5 checked), when reachable.
   Set ``MDCTR_OFFLINE=1`` to skip it.
2. The files inside the PyPI wheel ``recbole==1.2.1`` (``pip download --no-deps``; wheel
   and each file sha256 checked), folder ``recbole/dataset_example/ml-100k/``.

Both are parsed into the same three frames (:class:`MovieLensRaw`).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mdctr.core.errors import DataContractError
from mdctr.core.io import cache_dir, temp_sibling

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_MD5 = "0e33842e24a9c977be4e0107933c0723"
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_FOLDER = "recbole/dataset_example/ml-100k/"
RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]


@dataclass(frozen=True)
class MovieLensRaw:
    """ratings: user_id, item_id, rating, ts (file order); users: user_id, age, gender,
    occupation, zip; items: item_id, release_year (0 = unknown), genres (list of names)."""

    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    origin: str
    checksums: dict[str, str]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _year(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").fillna(0).astype(np.int64).to_numpy()


def parse_recbole(files: dict[str, bytes]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Parse recbole's atomic files (tab-separated, typed headers like ``user_id:token``)."""

    def read(name: str) -> pd.DataFrame:
        df = pd.read_csv(io.BytesIO(files[name]), sep="\t", dtype=str, keep_default_na=False)
        df.columns = [c.split(":")[0] for c in df.columns]
        return df

    inter, user, item = read("ml-100k.inter"), read("ml-100k.user"), read("ml-100k.item")
    ratings = pd.DataFrame({
        "user_id": inter["user_id"].astype(np.int64),
        "item_id": inter["item_id"].astype(np.int64),
        "rating": inter["rating"].astype(float).astype(np.int64),
        "ts": inter["timestamp"].astype(float).astype(np.int64),
    })
    users = pd.DataFrame({
        "user_id": user["user_id"].astype(np.int64),
        "age": user["age"].astype(np.int64),
        "gender": user["gender"].astype(str),
        "occupation": user["occupation"].astype(str),
        "zip": user["zip_code"].astype(str),
    })
    items = pd.DataFrame({
        "item_id": item["item_id"].astype(np.int64),
        "release_year": _year(item["release_year"]),
        "genres": [g.split() for g in item["class"]],
    })
    return ratings, users, items


def parse_grouplens(archive: bytes) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Parse the GroupLens ``ml-100k.zip`` (u.data, u.user, u.item)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        data = z.read("ml-100k/u.data")
        user = z.read("ml-100k/u.user")
        item = z.read("ml-100k/u.item")
    ratings = pd.read_csv(io.BytesIO(data), sep="\t", header=None,
                          names=["user_id", "item_id", "rating", "ts"], dtype=np.int64)
    users = pd.read_csv(io.BytesIO(user), sep="|", header=None, dtype=str, keep_default_na=False,
                        names=["user_id", "age", "gender", "occupation", "zip"])
    users["user_id"] = users["user_id"].astype(np.int64)
    users["age"] = users["age"].astype(np.int64)
    cols = ["item_id", "title", "release_date", "video_date", "url", *GENRES]
    it = pd.read_csv(io.BytesIO(item), sep="|", header=None, names=cols, dtype=str,
                     keep_default_na=False, encoding="latin-1")
    flags = it[GENRES].astype(np.int64).to_numpy().astype(bool)
    items = pd.DataFrame({
        "item_id": it["item_id"].astype(np.int64),
        "release_year": _year(it["release_date"].str[-4:]),
        "genres": [[g for g, on in zip(GENRES, row) if on] for row in flags],
    })
    return ratings, users, items


def _from_grouplens(cache: Path, timeout: float) -> MovieLensRaw | None:
    path = cache / "ml-100k.zip"
    if not path.exists():
        if os.environ.get("MDCTR_OFFLINE"):
            return None
        try:
            with urllib.request.urlopen(GROUPLENS_URL, timeout=timeout) as resp:
                blob = resp.read()
        except OSError:
            return None
        if hashlib.md5(blob).hexdigest() != GROUPLENS_MD5:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    blob = path.read_bytes()
    if hashlib.md5(blob).hexdigest() != GROUPLENS_MD5:
        path.unlink()
        return None
    r, u, i = parse_grouplens(blob)
    return MovieLensRaw(r, u, i, origin=GROUPLENS_URL, checksums={"ml-100k.zip(md5)": GROUPLENS_MD5})


def _download_recbole_files(dest: Path) -> None:
    tmp = temp_sibling(dest, "download")  # removed below, or by the next download if killed
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", tmp, RECBOLE_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DataContractError(
                f"cannot fetch MovieLens-100K: GroupLens unreachable and `pip download {RECBOLE_WHEEL}` "
                f"failed ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})",
                file=dest,
            )
        blob = wheels[0].read_bytes()
        if _sha256(blob) != RECBOLE_WHEEL_SHA256:
            raise DataContractError(f"checksum mismatch for the {RECBOLE_WHEEL} wheel", file=wheels[0])
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            for name in RECBOLE_SHA256:
                part = dest / f"{name}.part"
                part.write_bytes(z.read(RECBOLE_FOLDER + name))
                os.replace(part, dest / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_recbole(cache: Path) -> MovieLensRaw:
    folder = cache / "recbole-ml-100k"
    if not all((folder / n).exists() for n in RECBOLE_SHA256):
        _download_recbole_files(folder)
    files = {n: (folder / n).read_bytes() for n in RECBOLE_SHA256}
    for name, want in RECBOLE_SHA256.items():
        if _sha256(files[name]) != want:
            (folder / name).unlink()
            raise DataContractError(
                "checksum mismatch (the cached copy was removed; run again to re-fetch)",
                file=folder / name,
            )
    r, u, i = parse_recbole(files)
    return MovieLensRaw(r, u, i, origin=f"pypi:{RECBOLE_WHEEL}/{RECBOLE_FOLDER}", checksums=dict(RECBOLE_SHA256))


def load_movielens_100k(*, timeout: float = 5.0) -> MovieLensRaw:
    """MovieLens-100K from the cache, fetching it on first use (see module docstring).

    A cached copy from either source is used without touching the network.
    """
    cache = cache_dir() / "raw"
    if (cache / "ml-100k.zip").exists():
        raw = _from_grouplens(cache, timeout)
        if raw is not None:
            return raw
    if all((cache / "recbole-ml-100k" / n).exists() for n in RECBOLE_SHA256):
        return _from_recbole(cache)
    return _from_grouplens(cache, timeout) or _from_recbole(cache)
