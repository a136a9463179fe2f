"""REDIS_SENTINELS and REDIS_SENTINEL_MASTER: validated at start, and turned into kombu's sentinel broker URL."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import Settings, describe_validation_error
from shared.tasks import celery_config


def test_sentinels_give_the_broker_a_sentinel_url_with_the_password_and_db_of_redis_url() -> None:
    settings = Settings(
        redis_url="redis://:s3cret@ignored:6379/3",
        redis_sentinels="10.0.0.1:26379, sentinel-b:26380",
        redis_sentinel_master="cache",
    )
    assert settings.sentinel_addresses == [("10.0.0.1", 26379), ("sentinel-b", 26380)]
    assert settings.celery_broker_url == "sentinel://:s3cret@10.0.0.1:26379/3;sentinel://:s3cret@sentinel-b:26380/3"
    options = celery_config(settings)["broker_transport_options"]
    # The sentinel transport is kombu's Redis transport: the deployment's key prefix stays.
    assert options["master_name"] == "cache" and options["global_keyprefix"] == "hl:3:"


def test_without_sentinels_the_broker_is_redis_url_and_has_no_master_name() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:6379/0")
    assert settings.celery_broker_url == "redis://127.0.0.1:6379/0"
    assert "master_name" not in celery_config(settings)["broker_transport_options"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"redis_sentinels": "10.0.0.1"}, "REDIS_SENTINELS"),
        ({"redis_sentinels": "10.0.0.1:0"}, "REDIS_SENTINELS"),
        ({"redis_sentinels": "10.0.0.1:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"redis_sentinels": "10.0.0.1:26379", "redis_sentinel_master": "a b"}, "REDIS_SENTINEL_MASTER"),
        ({"redis_sentinels": "h:1", "redis_sentinel_master": "m", "redis_cluster": True}, "REDIS_CLUSTER"),
        ({"celery_broker_url": "sentinel://h:26379/0"}, "REDIS_SENTINEL_MASTER"),
    ],
)
def test_a_bad_sentinel_setting_stops_start_up_naming_the_variable(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(**fields)  # type: ignore[arg-type]
    assert named in describe_validation_error(exc.value)
