"""No kubeconfig credential in any output: the bearer token and the client key/certificate of the user's
kubeconfig never reach stdout, stderr or the ``--json`` NDJSON, on success or on any error (403, 401,
unreachable, ``--debug``). Greps every output for the secrets, raw and base64."""

from __future__ import annotations

import base64
import secrets
import traceback
from pathlib import Path

import pytest
import yaml
from fakeapi import FakeApiServer

from kstap.errors import ExitCode, KstapError

BEARER = "kstap-kubeconfig-secret-" + secrets.token_hex(16)
KEY = f"-----BEGIN PRIVATE KEY-----\nKSTAPKEY{secrets.token_hex(24)}\n-----END PRIVATE KEY-----\n"
CERT = f"-----BEGIN CERTIFICATE-----\nKSTAPCERT{secrets.token_hex(24)}\n-----END CERTIFICATE-----\n"


def forms() -> dict[str, str]:
    """Each secret as it could show up: raw, its distinctive line, and base64 as kubeconfigs hold it."""
    out = {"bearer token": BEARER}
    for name, pem in (("client key", KEY), ("client certificate", CERT)):
        out[name] = pem.splitlines()[1]
        out[f"{name} (base64)"] = base64.b64encode(pem.encode()).decode()
    return out


def kubeconfig_with_secrets(server: FakeApiServer, path: Path, *, token: str = BEARER) -> Path:
    server.write_kubeconfig(path, token=token)
    doc = yaml.safe_load(path.read_text())
    user = doc["users"][0]["user"]
    user["client-key-data"] = base64.b64encode(KEY.encode()).decode()
    user["client-certificate-data"] = base64.b64encode(CERT.encode()).decode()
    path.write_text(yaml.safe_dump(doc))
    return path


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for what, form in forms().items():
            assert form not in text, f"the kubeconfig's {what} appears in the output"


@pytest.fixture
def secret_kubeconfig(cluster, apiserver: FakeApiServer, tmp_path: Path) -> Path:
    cluster.token = BEARER  # the fake accepts exactly this bearer token
    return kubeconfig_with_secrets(apiserver, tmp_path / "kubeconfig")


@pytest.mark.parametrize("args", [
    ["manifests", "-n", "a", "-n", "b"],
    ["tap", "-n", "a", "--dry-run"],
    ["tap", "-A", "--dry-run", "--json"],
    ["clean"],
])
def test_successful_commands_show_no_kubeconfig_secret(cli, secret_kubeconfig: Path, args: list[str]) -> None:
    r = cli(*args, "--kubeconfig", str(secret_kubeconfig))
    assert r.code == 0, r.err
    assert_no_secret(r.out, r.err)


def test_errors_show_no_kubeconfig_secret(cli, cluster, secret_kubeconfig: Path, apiserver: FakeApiServer,
                                          tmp_path: Path) -> None:
    cluster.forbid("list", "pods", "b")
    r = cli("manifests", "-n", "a", "-n", "b", "--kubeconfig", str(secret_kubeconfig))
    assert r.code == ExitCode.ENVIRONMENT and "forbidden" in r.err
    assert_no_secret(r.out, r.err)
    wrong = kubeconfig_with_secrets(apiserver, tmp_path / "wrong", token=BEARER + "-revoked")
    gone = kubeconfig_with_secrets(apiserver, tmp_path / "gone")
    doc = yaml.safe_load(gone.read_text())
    doc["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    gone.write_text(yaml.safe_dump(doc))
    for args, message in ((["clean", "--kubeconfig", str(wrong)], "rejected the credentials"),
                          (["tap", "-n", "a", "--dry-run", "--json", "--kubeconfig", str(gone)], "cannot reach")):
        r = cli(*args)
        assert r.code == ExitCode.ENVIRONMENT and message in r.err, r.err
        assert_no_secret(r.out, r.err)
        with pytest.raises(KstapError) as err:  # --debug lets the exception out: its traceback is shown
            cli("--debug", *args)
        assert_no_secret("".join(traceback.format_exception(err.value)), repr(err.value.__dict__))
