"""Secrets in params never leave the queue in clear (issue 18): one masking rule (sweeper/masking.py)
for show, show --json, the CSV, the report, MLflow params, tags and run names, the worker's log and
stored errors; the job itself gets the real values. Fuzzed with hypothesis."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper.masking import MASK, Secrets, is_secret_key, mask_params
from tests.conftest import run_cli

PASSWORD = "S3cretPW-u8"
TOKEN = "tok-S3cret-41"
KEY = "ak-S3cret-77"
SECRETS = (PASSWORD, TOKEN, KEY)

KIND = '''\
"""A kind without a param model: it gets its params as written (and records them as they are)."""

import json
from pathlib import Path

from sweeper.context import JobFailed


def run(ctx, params):
    ctx.log(f"connecting to {params['db_url']} with token {params['api_token']}")
    if params["mode"] == "fail":
        raise JobFailed(f"could not log in to {params['db_url']} with {params['api_token']} / {params['api_key']}", retry=False)
    Path(params["out"]).write_text(json.dumps(params))  # what the job was given
    return {"value": 1.0}
'''


def test_a_secret_param_never_appears_in_clear(tmp_path: Path):
    (tmp_path / "secretkind.py").write_text(KIND)
    out = tmp_path / "given.json"
    (tmp_path / "g.yaml").write_text(
        f"""\
sweep: secrets
stages:
  s:
    kind: secretkind:run
    params:
      db_url: postgresql://alice:{PASSWORD}@db.example.org/x
      api_key: {KEY}
      out: {out}
    grid:
      mode: [fail, ok]
      api_token: [{TOKEN}]
"""
    )
    state = str(tmp_path / "state")
    enq = run_cli("enqueue", "g.yaml", "--state", state, cwd=tmp_path)
    assert enq.returncode == 0, enq.stderr
    work = run_cli("work", "--workers", "1", "--state", state, cwd=tmp_path)
    assert work.returncode == 0, work.stderr
    given = json.loads(out.read_text())
    assert (given["api_token"], given["api_key"]) == (TOKEN, KEY) and PASSWORD in given["db_url"]

    db = f"sqlite:///{tmp_path / 'state' / 'queue.db'}"
    exported = run_cli("export", "--csv", "-", "--db", db, cwd=tmp_path).stdout
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert {r["status"] for r in rows} == {"done", "failed"}
    assert rows[0]["params.api_key"] == MASK and "alice:***@db.example.org" in rows[0]["params.db_url"]
    seen = {"enqueue": enq.stdout + enq.stderr, "work log": work.stdout + work.stderr, "csv": exported}
    for r in rows:
        seen[f"show {r['status']}"] = run_cli("show", r["id"], "--state", state, cwd=tmp_path, COLUMNS="200").stdout
        seen[f"show --json {r['status']}"] = run_cli("show", r["id"], "--json", "--state", state, cwd=tmp_path).stdout
    seen["status"] = run_cli("status", "--json", "--state", state, cwd=tmp_path).stdout
    assert run_cli("report", "--out", "rep", "--state", state, "--no-plots", cwd=tmp_path).returncode == 0
    seen["report"] = (tmp_path / "rep" / "report.md").read_text()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("secrets")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and all(r.data.params["api_key"] == MASK for r in runs)
    seen["mlflow"] = json.dumps([{"params": r.data.params, "tags": r.data.tags} for r in runs])

    failed = json.loads(seen["show --json failed"])
    # a kind without a param model records what it was given (masked when shown)
    assert failed["params_effective"] == {**failed["params_written"], "api_token": MASK}
    assert failed["params_effective"]["api_key"] == MASK and failed["params_effective"]["mode"] == "fail"
    assert "could not log in to postgresql://alice:***@db.example.org/x with ***" in failed["error"]
    assert "connecting to postgresql://alice:***@" in seen["work log"]
    for where, text in seen.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} in clear in {where}"


# -- the rule, fuzzed -------------------------------------------------------------------------

SECRET_KEYS = ["password", "db_password", "passwd", "secret", "client_secret", "api_token", "token", "api_key",
               "aws_secret_access_key", "apiKey", "authToken", "private-key", "PASSWORD"]  # fmt: skip
PLAIN_KEYS = ["lr", "batch_size", "max_tokens", "keyboard", "key", "monkey", "seed", "conv2", "url", "tokenizer"]

# Secrets from an alphabet no plain value uses, so that finding one in the output means a leak.
secret_text = st.text(alphabet="QXZqxz#%!", min_size=3, max_size=12)
plain_leaf = st.one_of(
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(alphabet="abcdefgh_/.: ", max_size=10),
)


@st.composite
def params_with_secrets(draw, depth: int = 0) -> tuple[dict, list[str]]:
    out: dict = {}
    secrets: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["plain", "secret_key", "url", "nested"] if depth < 2 else ["plain", "url"]))
        if kind == "plain":
            out[draw(st.sampled_from(PLAIN_KEYS))] = draw(plain_leaf)
        elif kind == "secret_key":
            value = draw(secret_text)
            secrets.append(value)
            out[draw(st.sampled_from(SECRET_KEYS))] = draw(st.sampled_from([value, [value], {"v": value}]))
        elif kind == "url":
            pw = draw(secret_text.filter(lambda s: "@" not in s))
            secrets.append(pw)
            scheme = draw(st.sampled_from(["postgresql", "postgresql+psycopg", "mysql", "https", "redis"]))
            out[draw(st.sampled_from(PLAIN_KEYS))] = f"{scheme}://user:{pw}@host.example:5432/db"
        else:
            inner, found = draw(params_with_secrets(depth + 1))
            secrets.extend(found)
            out[draw(st.sampled_from(PLAIN_KEYS))] = inner
    # a key drawn twice keeps its last value: only the secrets still there count
    dumped = json.dumps(out)
    return out, [s for s in secrets if s in dumped]


@settings(max_examples=300, deadline=None)
@given(params_with_secrets())
def test_masking_hides_every_secret_and_keeps_the_rest(case):
    params, secrets = case
    masked = mask_params(params)
    text = json.dumps(masked)
    for secret in secrets:
        assert secret not in text
    scrubbed = Secrets.of(params).scrub(f"error: {json.dumps(params)} and again {' '.join(secrets)}")
    for secret in secrets:
        assert secret not in scrubbed
    assert params == json.loads(json.dumps(params))  # the job's own params are untouched


@given(st.dictionaries(st.sampled_from(PLAIN_KEYS), plain_leaf, max_size=6))
def test_masking_leaves_plain_params_alone(params):
    assert mask_params(params) == params


def test_which_keys_name_a_secret():
    assert all(is_secret_key(k) for k in SECRET_KEYS)
    assert not any(is_secret_key(k) for k in PLAIN_KEYS)
