"""Secrets never reach MLflow: one redaction function for params, tags and artifacts."""

from sweeps.redact import MASK, flatten, redact
from sweeps.storage import mask_url


def test_secret_named_keys_and_url_passwords_are_masked():
    cfg = {"model": {"name_or_path": "x", "hf_token": "hf_abc"},
           "mlflow": {"tracking_uri": "postgresql://bob:s3cret@db:5432/mlflow"},
           "db_password": "pw", "AWS_SECRET_ACCESS_KEY": "k", "client_secret": "c", "api_key": "a",
           "tokenizer": "keep-me"}
    out = flatten(redact(cfg))
    assert out["model.hf_token"] == MASK and out["db_password"] == MASK
    assert out["AWS_SECRET_ACCESS_KEY"] == MASK and out["client_secret"] == MASK and out["api_key"] == MASK
    assert out["mlflow.tracking_uri"] == "postgresql://bob:***@db:5432/mlflow"
    assert out["tokenizer"] == "keep-me" and out["model.name_or_path"] == "x"
    assert "s3cret" not in repr(out) and "hf_abc" not in repr(out)


def test_mask_url_leaves_passwordless_urls_alone():
    assert mask_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert mask_url("http://u:p@h:5000") == "http://u:***@h:5000"
