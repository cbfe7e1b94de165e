import datetime as dt

import pytest

from core.settings import ConfigError, load_platforms, load_settings
from core.sources import PlatformMapping


def test_layers_and_overrides_apply_in_order():
    # GIVEN base + local overlay WHEN a --set override is given THEN it wins, typed
    s = load_settings("local", ["spark.shuffle_partitions=3", "generate.defect_rate=0.05"])
    assert s.spark.master == "local[2]"          # from conf/local.yaml
    assert s.spark.shuffle_partitions == 3       # from --set
    assert s.generate.defect_rate == 0.05
    assert s.as_of == dt.date(2026, 6, 30)


def test_as_of_argument_overrides_config():
    assert load_settings("local", as_of=dt.date(2026, 5, 1)).as_of == dt.date(2026, 5, 1)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"spark\.shufle_partitions: Extra inputs are not permitted"):
        load_settings("local", ["spark.shufle_partitions=3"])


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"generate\.defect_rate: Input should be less than or equal to 0\.5"):
        load_settings("local", ["generate.defect_rate=0.9"])


def test_unknown_env_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown --env 'prod'.*known: cluster, local"):
        load_settings("prod")


def test_set_needs_key_value():
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_settings("local", ["spark.master"])


def test_base_currency_must_map_to_one():
    with pytest.raises(ConfigError, match="fx_to_base must map the base currency CNY to 1.0"):
        load_settings("local", ["refine.fx_to_base={CNY: 2.0}"])


def test_lake_root_env_var_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("IPSYNERGY_LAKE_ROOT", str(tmp_path / "elsewhere"))
    assert load_settings("local").lake_root == str(tmp_path / "elsewhere")


def test_shipped_platform_mappings_are_valid():
    mappings = load_platforms()
    assert sorted(mappings) == ["globalearn", "ketang", "tingshu", "zhixue"]
    assert {m.format for m in mappings.values()} == {"json", "csv", "parquet"}


def _mapping(**over):
    base = {
        "name": "demo", "format": "csv",
        "events": {"path": "events", "columns": ["id", "who", "what", "when"],
                   "fields": {"source_event_id": "id", "account_id": "who", "event_type": "what", "event_ts": "when"},
                   "timestamp": {"format": "epoch_s"}, "event_types": {"v": "view"}},
        "accounts": {"path": "accounts", "columns": ["who"], "fields": {"account_id": "who"}},
    }
    base["events"].update(over)
    return base


def test_mapping_rejects_unknown_unified_field():
    bad = _mapping(fields={"source_event_id": "id", "account_id": "who", "event_type": "what", "event_ts": "when",
                           "colour": "id"})
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        PlatformMapping.model_validate(bad)


def test_mapping_rejects_unknown_event_type_target():
    with pytest.raises(ValueError, match="event_types.v"):
        PlatformMapping.model_validate(_mapping(event_types={"v": "watch"}))


def test_mapping_csv_fields_must_be_columns():
    with pytest.raises(ValueError, match=r"events\.fields refer to columns not in events\.columns: \['when'\]"):
        PlatformMapping.model_validate(_mapping(columns=["id", "who", "what"]))


def test_mapping_rejects_unknown_time_zone():
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        PlatformMapping.model_validate(_mapping(timestamp={"format": "epoch_s", "timezone": "Mars/Olympus"}))


def test_settings_carry_the_validated_platform_mappings():
    s = load_settings("local")
    assert s.platforms["tingshu"].format == "csv"
    assert s.platforms["zhixue"].events.event_types["zan"] == "like"


def test_a_bad_mapping_file_is_named(tmp_path):
    (tmp_path / "demo.yaml").write_text("name: demo\nformat: xml\n")
    with pytest.raises(ConfigError, match=r"demo\.yaml(.|\n)*format: Input should be 'json', 'csv' or 'parquet'"):
        load_platforms(tmp_path)


def test_mapping_name_must_match_its_file(tmp_path):
    import yaml
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(_mapping()))
    with pytest.raises(ConfigError, match="other.yaml: name 'demo' must equal the file name 'other'"):
        load_platforms(tmp_path)


def test_gold_period_must_fit_in_the_lookback():
    with pytest.raises(ConfigError, match=r"gold: Value error, period_days must not exceed lookback_days"):
        load_settings("local", ["gold.period_days=120"])


def test_quality_weights_name_known_signals():
    with pytest.raises(ConfigError, match=r"gold\.quality_weights\.popularity"):
        load_settings("local", ["gold.quality_weights={popularity: 1.0}"])


def test_persona_k_range_must_be_ordered():
    with pytest.raises(ConfigError, match=r"personas: Value error, k_max must be >= k_min"):
        load_settings("local", ["personas.k_min=6", "personas.k_max=4"])


def test_a_remote_lake_needs_a_tracking_server(monkeypatch):
    monkeypatch.delenv("IPSYNERGY_LAKE_ROOT", raising=False)
    with pytest.raises(ConfigError, match=r"mlflow\.tracking_uri must be set when the lake is not on a local disk"):
        load_settings("local", ["lake.root=s3a://bucket/lake"])
    ok = load_settings("local", ["lake.root=s3a://bucket/lake", "mlflow.tracking_uri=http://127.0.0.1:5000"])
    assert ok.tracking_uri == "http://127.0.0.1:5000"


def test_default_tracking_store_is_sqlite_beside_the_lake(tmp_path, monkeypatch):
    monkeypatch.delenv("IPSYNERGY_LAKE_ROOT", raising=False)
    s = load_settings("local", [f"lake.root={tmp_path}"])
    assert s.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db" and s.artifact_root == f"{tmp_path}/mlartifacts"


def test_sweep_entries_are_validated_like_the_network_settings():
    with pytest.raises(ConfigError, match=r"train: Value error, sweep\[1\]\.hiden: Extra inputs are not permitted"):
        load_settings("local", ["train.sweep=[{hidden: [8]}, {hiden: [3]}]"])
    with pytest.raises(ConfigError, match=r"sweep\[0\]\.loss: Input should be 'ziln' or 'tweedie'"):
        load_settings("local", ["train.sweep=[{loss: mse}]"])
    nets = load_settings("local", ["train.sweep=[{hidden: [8]}, {loss: tweedie}]"]).train.sweep_nets()
    assert [(n.hidden, n.loss) for n in nets] == [((8,), "ziln"), ((64, 32), "tweedie")]


def test_the_mlflow_ui_reads_the_same_settings_as_the_jobs(tmp_path, monkeypatch):
    from core.tracking import ui_command

    monkeypatch.delenv("IPSYNERGY_LAKE_ROOT", raising=False)
    command = ui_command(load_settings("local", [f"lake.root={tmp_path}/mine"]), 5001)
    assert command[1:] == ["-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{tmp_path}/mine/mlflow.db", "--host", "127.0.0.1",
                           "--port", "5001"]
    assert ui_command(load_settings("local", ["mlflow.tracking_uri=http://127.0.0.1:5000"]), 5001) is None


def test_a_users_platforms_folder_replaces_the_demo_mappings(tmp_path):
    import yaml

    (tmp_path / "shop.yaml").write_text(yaml.safe_dump({
        "name": "shop", "format": "csv", "encoding": "GBK",
        "events": {"columns": ["id", "who", "day", "usd"],
                   "fields": {"source_event_id": "id", "account_id": "who", "event_ts": "day", "amount": "usd",
                              "event_type": {"const": "purchase"}, "currency": {"const": "USD"}},
                   "timestamp": {"format": "yyyyMMdd"}}}))
    s = load_settings("local", [f"platforms_dir={tmp_path}"])
    assert sorted(s.platforms) == ["shop"]  # no demo platform
    shop = s.platforms["shop"]
    assert shop.accounts is None and list(shop.parts) == ["events"] and shop.encoding == "gbk"
    assert shop.events.vocabulary["purchase"] == "purchase"  # unified names need no event_types entry
    with pytest.raises(ConfigError, match="platforms_dir '/nowhere': no such folder"):
        load_settings("local", ["platforms_dir=/nowhere"])


def test_mapping_constants_and_encodings_are_checked():
    with pytest.raises(ValueError, match=r"fields\.event_type: the constant 'buy' is neither a unified event type"):
        PlatformMapping.model_validate(_mapping(fields={"source_event_id": "id", "account_id": "who",
                                                        "event_type": {"const": "buy"}, "event_ts": "when"}))
    bad = {**_mapping(), "encoding": "klingon-8"}
    with pytest.raises(ValueError, match="unknown encoding 'klingon-8'"):
        PlatformMapping.model_validate(bad)


def test_an_amount_needs_a_currency():
    with pytest.raises(ValueError, match=r"fields\.amount needs fields\.currency"):
        PlatformMapping.model_validate(_mapping(fields={"source_event_id": "id", "account_id": "who",
                                                        "event_type": "what", "event_ts": "when", "amount": "id"}))


def test_experiments_open_on_their_runs_in_the_mlflow_ui(tmp_path, monkeypatch):
    """MLflow 3's UI shows an experiment of unknown kind as a GenAI one; ours are model training,
    with a description saying what to compare. An experiment made by an older release gains both."""
    import mlflow

    from core import tracking

    monkeypatch.delenv("IPSYNERGY_LAKE_ROOT", raising=False)
    settings = load_settings("local", [f"lake.root={tmp_path}/lake"])
    previous = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(settings.tracking_uri)
        old = mlflow.create_experiment(f"{settings.mlflow.experiment_prefix}-personas")  # no tags: an older release's
        assert tracking.experiment(settings, "personas") == old
        new = tracking.experiment(settings, "revenue")
        for exp_id, name in ((old, "personas"), (new, "revenue")):
            tags = mlflow.get_experiment(exp_id).tags
            assert tags["mlflow.experimentKind"] == "custom_model_development"
            assert tags["mlflow.note.content"] == tracking.DESCRIPTIONS[name]
    finally:
        mlflow.set_tracking_uri(previous)
