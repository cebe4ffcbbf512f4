"""Secrets never leave the process: key names by whole words, free text by shape, and the write
boundaries that apply them (MLflow params/tags/config.yaml, Optuna fail reasons, the report)."""

from __future__ import annotations

import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial

from sweeps.tracking.redact import (MASK, flatten, is_secret_env, is_secret_key, redact, redact_override, redact_yaml,
                           scrub_text)
from sweeps.search.storage import mask_url

HF = "hf_" + "Qx7Lm2Pz9Rt4Vw8Ks1Nb6Yc3Hd5Jf0Gt"
SK = "sk-proj-" + "T3stK3yAbCdEfGhIjKlMnOpQrSt"
AKIA = "AKIA" + "Z7QW3ERT5YUI8OPA"


@pytest.mark.parametrize("key", ["pad_token", "eos_token_id", "max_new_tokens", "bos_token", "tokenizer_name",
                                 "num_tokens", "pad_token_id", "additional_special_tokens", "tokenizer",
                                 "lora.target_modules", "sort_key", "public_key", "key_path", "aws_region",
                                 "AWS_DEFAULT_REGION", "PWD", "mlflow.tracking_uri", "model.name_or_path"])
def test_harmless_keys_are_not_secret(key):
    assert not is_secret_key(key)


@pytest.mark.parametrize("key", ["hf_token", "token", "api_key", "apikey", "apiKey", "access_token", "auth_token",
                                 "password", "db_passwd", "client_secret", "aws_secret_access_key", "private_key",
                                 "credentials", "key", "secret_key", "access_key", "HF_TOKEN", "HFToken",
                                 "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "model.hf_token", "X-Amz-Security-Token",
                                 "clientSecret", "authorization", "PGPASSWORD"])
def test_secret_keys_are_secret(key):
    assert is_secret_key(key)


def test_secret_named_keys_and_url_passwords_are_masked():
    cfg = {"model": {"name_or_path": "x", "hf_token": "hf_abc", "pad_token": "[PAD]", "eos_token_id": 2},
           "mlflow": {"tracking_uri": "postgresql://bob:s3cret@db:5432/mlflow"},
           "db_password": "pw", "AWS_SECRET_ACCESS_KEY": "k", "client_secret": "c", "api_key": "a",
           "credentials": {"user": "u", "pass": "p"}, "tokenizer": "keep-me", "max_new_tokens": 16,
           "env_token": "${oc.env:HF_TOKEN}", "urls": ["redis://:hunter22@cache:6379"]}
    out = flatten(redact(cfg))
    assert out["model.hf_token"] == MASK and out["db_password"] == MASK and out["credentials"] == MASK
    assert out["AWS_SECRET_ACCESS_KEY"] == MASK and out["client_secret"] == MASK and out["api_key"] == MASK
    assert out["mlflow.tracking_uri"] == "postgresql://bob:***@db:5432/mlflow"
    assert out["urls"] == ["redis://:***@cache:6379"]
    # whole words: a tokenizer's special tokens and generation lengths stay readable
    assert out["model.pad_token"] == "[PAD]" and out["model.eos_token_id"] == 2 and out["max_new_tokens"] == 16
    assert out["tokenizer"] == "keep-me" and out["model.name_or_path"] == "x"
    # a pointer to an environment variable is not the secret; keeping it lets tools recompose the config
    assert out["env_token"] == "${oc.env:HF_TOKEN}"
    assert "s3cret" not in repr(out) and "hf_abc" not in repr(out) and "hunter22" not in repr(out)


def test_override_lines_are_masked_by_key_name():
    assert redact_override(f"+model.hf_token={HF}") == "+model.hf_token=***"
    assert redact_override("++train.api_key=plainvalue123") == "++train.api_key=***"
    assert redact_override("+db.password='with spaces and, commas'") == "+db.password=***"
    assert (redact_override("mlflow.tracking_uri=postgresql://u:pw9876@h/db")
            == "mlflow.tracking_uri=postgresql://u:***@h/db")
    assert redact_override("+model.hf_token=${oc.env:HF_TOKEN}") == "+model.hf_token=${oc.env:HF_TOKEN}"
    for harmless in ("lora.r=8", "model=custom", "+tokenizer.pad_token=<pad>", "train.max_steps=6", "~data.path"):
        assert redact_override(harmless) == harmless
    # lists of override lines (Hydra's overrides.yaml, the study's stored overrides) too
    assert redact(["+train.api_key=abc def", "lora.r=4"]) == ["+train.api_key=***", "lora.r=4"]


def test_free_text_masks_tokens_that_are_not_urls(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "Zq81vX0pLk")  # short: masked as a whole word only
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    text = (f"HTTPError 401 for https://hub.example/api/models/x?revision=main&access_token=tok4567xyz&page=2 "
            f"(headers {{'Authorization': 'Bearer {HF}'}}); Authorization: Basic dXNlcjpwYXNzd29yZA== ; "
            f"retry with bearer eyJhbGciOiJIUzI1NiJ9xx; key {SK} id {AKIA}; "
            f"api_key='k-123456' password=hunter22 pad_token=<pad> eos_token_id=2; "
            f"from env Zq81vX0pLk and wJalrXUtnFEMI%2FK7MDENG%2FbPxRfiCYEXAMPLEKEY; region eu-west-1; "
            f"db postgresql://bob:s3cretpw@db/optuna; "
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----")
    out = scrub_text(text)
    for secret in ("tok4567xyz", HF, "dXNlcjpwYXNzd29yZA", "eyJhbGciOiJIUzI1NiJ9xx", SK, AKIA, "k-123456",
                   "hunter22", "Zq81vX0pLk", "wJalrXUtnFEMI", "s3cretpw", "MIIEow"):
        assert secret not in out, secret
    # what an engineer needs to read the error survives
    for kept in ("HTTPError 401", "revision=main", "page=2", "Authorization: Basic ***", "Bearer ***",
                 "pad_token=<pad>", "eos_token_id=2", "region eu-west-1", "postgresql://bob:***@db/optuna"):
        assert kept in out, kept
    assert is_secret_env("AWS_SECRET_ACCESS_KEY") and not is_secret_env("AWS_REGION")


def test_short_env_secret_masks_whole_words_only(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "postgres")
    assert scrub_text("user postgres on postgresql://db/x") == "user *** on postgresql://db/x"
    monkeypatch.setenv("FLAG_TOKEN", "1")  # too short to be a secret: "1" elsewhere stays
    assert scrub_text("step 1 of 10") == "step 1 of 10"


def test_config_yaml_is_masked_like_params_and_untouched_without_secrets():
    text = ("model:\n  name_or_path: x\n  hf_token: " + HF + "\n  pad_token: '[PAD]'\n"
            "mlflow:\n  tracking_uri: http://u:pw4242@mlflow:5000\ntrain:\n  api_key: abc\n  lr: 0.001\n")
    out = redact_yaml(text)
    data = yaml.safe_load(out)
    assert data["model"] == {"name_or_path": "x", "hf_token": MASK, "pad_token": "[PAD]"}
    assert data["mlflow"]["tracking_uri"] == "http://u:***@mlflow:5000"
    assert data["train"] == {"api_key": MASK, "lr": 0.001}
    plain = "lora:\n  r: 8   # comment kept\n"
    assert redact_yaml(plain) == plain


def test_runbook_masks_config_yaml_params_and_tags(tmp_path, monkeypatch):
    """The MLflow write boundary: a child run's config.yaml artifact, params and error tag."""
    from sweeps.tracking.runbook import RunBook

    monkeypatch.setenv("HF_TOKEN", HF)
    book = RunBook(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp")
    config = {"model": {"hf_token": HF, "pad_token": "[PAD]"}, "mlflow": {"tracking_uri": "http://u:pw4242@h:5000"}}
    yaml_text = f"model:\n  hf_token: {HF}\n  pad_token: '[PAD]'\nmlflow:\n  tracking_uri: http://u:pw4242@h:5000\n"
    run_id = book.open_trial("k", "trial-0", config, {"note": "see ?token=abcdef123"}, yaml_text)
    book.close_trial("k", "FAILED", tags={"error": f"HTTPError: 401 (Authorization: Bearer {HF})",
                                           "traceback": f"  File x\nValueError: {SK}"})
    run = book.client.get_run(run_id)
    artifact = (tmp_path / "mlartifacts").rglob("config.yaml").__next__().read_text()
    stored = repr(run.data.params) + repr(run.data.tags) + artifact
    assert HF not in stored and "pw4242" not in stored and SK not in stored and "abcdef123" not in stored
    assert yaml.safe_load(artifact)["model"] == {"hf_token": MASK, "pad_token": "[PAD]"}
    assert run.data.params["model.pad_token"] == "[PAD]" and "Bearer ***" in run.data.tags["error"]


def test_fail_reason_is_masked_when_a_trial_is_failed_from_outside():
    from sweeps.search.study import fail_trial

    study = optuna.create_study()
    trial = study.ask()
    assert fail_trial(study, trial._trial_id, f"worker died while fetching https://h/x?token={HF}")
    assert study.trials[0].user_attrs["fail_reason"] == "worker died while fetching https://h/x?token=***"


def test_report_failed_reasons_table_masks_old_unmasked_reasons(tmp_path):
    """A study written before masking (or by another tool) still gets a clean report."""
    from analysis.report import build_report

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="old")
    for secret in (HF, HF[:-1] + "Z"):  # two tokens, one reason once masked
        study.add_trial(create_trial(state=TrialState.FAIL,
                                     user_attrs={"fail_reason": f"OSError: 401 Authorization: Bearer {secret}"}))
    md = (build_report(storage, "old", tmp_path / "r", log_to_mlflow=False) / "report.md").read_text()
    assert HF not in md and HF[:-1] not in md
    assert "Authorization: Bearer ***" in md and "| 2" in md.split("Failed trials by reason")[1]


def test_log_handlers_write_masked_messages_and_tracebacks():
    """A single run's Hydra log file gets the same masking (install_log_scrubbing on its handlers)."""
    import io
    import logging

    from sweeps.tracking.redact import install_log_scrubbing

    stream = io.StringIO()
    logger = logging.getLogger("test_redact.scrub")
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(stream))
    install_log_scrubbing(logger)
    install_log_scrubbing(logger)  # idempotent: one filter per handler
    assert len(logger.handlers[0].filters) == 1
    logger.warning("fetching %s with api_key=%s", "https://h/m?access_token=abc123456", "plain987654")
    try:
        raise PermissionError(f"401 Authorization: Bearer {HF}")
    except PermissionError:
        logger.exception("download failed")
    out = stream.getvalue()
    assert "abc123456" not in out and "plain987654" not in out and HF not in out
    assert "access_token=***" in out and "Bearer ***" in out and "PermissionError" in out


def test_mask_url_leaves_passwordless_urls_alone():
    assert mask_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert mask_url("http://u:p@h:5000") == "http://u:***@h:5000"
    assert scrub_text("sqlite:////tmp/a.db and journal:///x.log") == "sqlite:////tmp/a.db and journal:///x.log"
