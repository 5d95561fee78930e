from pathlib import Path

import pytest

from mdctr.core.errors import ConfigError
from mdctr.platform.config import load_train_config
from mdctr.platform.model import feature_layout
from mdctr.domains.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["shared", "domain_feature", "separate"])
def test_shipped_movielens_configs_load(name):
    cfg = load_train_config(REPO / "configs" / f"movielens_gender_{name}.yaml")
    assert cfg.data == "movielens-100k:gender"
    assert cfg.baseline.value == {"domain_feature": "shared_domain_feature"}.get(name, name)


def test_unknown_key_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: movielens-100k:gender\nmodel: {tower: mlp, hiden: [8]}\n")
    with pytest.raises(ConfigError) as err:
        load_train_config(bad)
    assert str(bad) in str(err.value) and "model.hiden" in str(err.value)


def test_invalid_values_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nmodel: {tower: transformer}\n")
    with pytest.raises(ConfigError, match="model.tower"):
        load_train_config(bad)
    bad.write_text("data: x\ntrain: {epochs: 0}\n")
    with pytest.raises(ConfigError, match="train.epochs"):
        load_train_config(bad)


def test_fingerprint_tracks_settings(make_config):
    a, b = make_config("d"), make_config("d")
    assert a.fingerprint() == b.fingerprint()
    assert make_config("d", train={"seed": 1}).fingerprint() != a.fingerprint()


def test_layout_sizes_tables_from_dataset(ml_gender, make_config):
    spec = load_spec(ml_gender)
    layout = feature_layout(spec, make_config(ml_gender).model, make_config(ml_gender).baseline)
    assert layout.keys == ["user_id", "item_id", "age", "occupation", "gender", "zip_prefix", "release_year", "genres"]
    assert layout.rows["user_id"] == 944 and layout.rows["item_id"] == 1683 and layout.rows["genres"] == 19
    capped = make_config(ml_gender, model={"max_table_rows": 500, "table_rows": {"genres": 7}})
    layout = feature_layout(spec, capped.model, capped.baseline)
    assert layout.rows["user_id"] == 500 and layout.rows["item_id"] == 500 and layout.rows["genres"] == 7
    dom = make_config(ml_gender, baseline="shared_domain_feature")
    assert feature_layout(spec, dom.model, dom.baseline).rows["__domain__"] == 2
    with pytest.raises(ValueError, match="table_rows names fields the dataset lacks"):
        bad = make_config(ml_gender, model={"table_rows": {"nope": 3}})
        feature_layout(spec, bad.model, bad.baseline)
