"""Credentials never leave a URI: every form a user pastes, secrets with unencoded '/', '@', ':', '?' or '#'
included, in any text that holds the URI (quotes, reprs, several URIs); text that only holds an '@' stays."""

from __future__ import annotations

import pytest

from harness.redact import redact

SECRET = "AKIAEXAMPLE:probe/SECRET"


@pytest.mark.parametrize("text, secrets, kept", [
    ("s3://AKIAEXAMPLE:probe/SECRET@bucket/runs", ["AKIAEXAMPLE", "probe", "SECRET"], ["s3://", "bucket/runs"]),
    ("s3://key:se/cr@et@bucket/path?x=1", ["key:", "se/cr", "cr@et", "et@"], ["s3://", "@bucket/path?x=1"]),
    ("s3://key:se:cr@bucket/p", ["key", "se:cr"], ["s3://", "@bucket/p"]),
    ("s3://key:se?cr#et@bucket/p", ["key", "se?cr", "cr#et"], ["s3://", "@bucket/p"]),
    ("gs://user:pw@b/p", ["user", ":pw"], ["gs://", "@b/p"]),
    ("http://u:p@host:5000/", ["u:p"], ["http://", "@host:5000/"]),
    ("https://ghp_TOKEN@github.com/org/repo", ["ghp_TOKEN"], ["https://", "@github.com/org/repo"]),
    ("s3://bucket/runs?access_key=AKID&secret_key=SE/CR+ET@X&endpoint_override=127.0.0.1:9000",
     ["AKID", "SE/CR", "CR+ET"], ["s3://bucket/runs?", "endpoint_override=127.0.0.1:9000"]),
    ("s3://b/p?region=us-east-1&X-Amz-Security-Token=T0K3N", ["T0K3N"], ["s3://b/p?region=us-east-1&"]),
    ("from s3://a:SECRET1@b1/p to gs://c:SECRET2@b2/q", ["SECRET1", "SECRET2"], ["s3://", "@b1/p to gs://", "@b2/q"]),
    ("s3://a:SECRET1@b1/p,gs://c:SECRET2@b2/q", ["SECRET1", "SECRET2"], ["@b1/p,gs://", "@b2/q"]),
    (f"storage_path='s3://{SECRET}@bucket/x' is not writable", ["AKIAEXAMPLE", "probe", "SECRET"],
     ["storage_path='s3://", "@bucket/x' is not writable"]),
    (repr({"uri": "s3://k:SE@CRET@bucket/x", "other": "gs://u:S3CR/T@c/y"}), ["SE@CRET", "CRET", "S3CR"],
     ["{'uri': 's3://", "@bucket/x', 'other': 'gs://", "@c/y'}"]),
    (repr(ValueError(f"Cannot parse URI: 's3://{SECRET}@bucket/runs' due to syntax error at character '/'")),
     ["AKIAEXAMPLE", "probe", "SECRET"], ["Cannot parse URI: 's3://", "@bucket/runs' due to"]),
    (f"(s3://{SECRET}@bucket/x)", ["probe", "SECRET"], ["(s3://", "@bucket/x)"]),
])
def test_no_part_of_a_secret_survives(text, secrets, kept):
    clean = redact(text)
    assert not [s for s in secrets if s in clean], clean
    assert all(k in clean for k in kept), clean
    assert redact(clean) == clean


@pytest.mark.parametrize("text", [
    "mail the results to someone@example.com",
    "pip install torch@2.13.0 and name@version",
    "git@github.com:org/repo.git",
    "s3://bucket/models/resnet@v2/ckpt?endpoint_override=127.0.0.1:9000",
    "sqlite:///mlflow.db and file:///tmp/a@b/c",
    "http://127.0.0.1:5000/ and ray.storage_path s3://bucket/runs",
])
def test_text_without_credentials_is_unchanged(text):
    assert redact(text) == text


def test_a_long_text_is_redacted_in_linear_time():
    """Each scheme-like run of characters is scanned once: a 200,000-character word takes milliseconds, not hours."""
    word = "a" * 200_000
    assert redact(f"s3://{word}") == f"s3://{word}" and redact(f"{word}://k:s@b") == f"{word}://***@b"


def test_a_storage_uri_with_an_unencoded_secret_is_refused_without_it(cli, tiny_sets):
    done = cli("harness.train", *tiny_sets, "--set", f"ray.storage_path=s3://{SECRET}@bucket/runs")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "s3://***@bucket/runs" in done.stderr
    assert not [s for s in ("AKIAEXAMPLE", "probe", "SECRET") if s in done.stderr], done.stderr


@pytest.mark.parametrize("uri, bare, env", [
    ("s3://KEY:SE%2FCRET@b/p?region=x", "s3://b/p?region=x", {"AWS_ACCESS_KEY_ID": "KEY", "AWS_SECRET_ACCESS_KEY": "SE/CRET"}),
    ("s3://KEY:se/cr@et@b/p", "s3://b/p", {"AWS_ACCESS_KEY_ID": "KEY", "AWS_SECRET_ACCESS_KEY": "se/cr@et"}),
    ("s3://b/p?access_key=K&secret_key=S&session_token=T&endpoint_override=h:9000", "s3://b/p?endpoint_override=h:9000",
     {"AWS_ACCESS_KEY_ID": "K", "AWS_SECRET_ACCESS_KEY": "S", "AWS_SESSION_TOKEN": "T"}),
    ("s3://b/name@v2/p", "s3://b/name@v2/p", {}),
    ("gs://user:pw@b/p", "gs://user:pw@b/p", {}),  # not S3: its keys stay with the node's environment
    ("/shared/ray", "/shared/ray", {}),
])
def test_a_sweep_hands_ray_an_s3_uri_without_its_keys(uri, bare, env):
    from harness.storage import split_credentials

    assert split_credentials(uri) == (bare, env)
