"""W&B's mode as its users run it: online when wandb would find their credentials, offline when not, WANDB_MODE when
set; a run ends with its URL or the `wandb sync` line."""

import logging

import pytest

from lightning_da import wandb_mode

NETRC = "machine {host}\n  login user\n  password {key}\n"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("environ", "netrc", "mode"), [
    ({}, None, "offline"),                                                   # not logged in: never block on the network
    ({"WANDB_API_KEY": "k" * 40}, None, "online"),                          # an API key in the environment
    ({}, NETRC.format(host="api.wandb.ai", key="k" * 40), "online"),        # `wandb login`'s ~/.netrc entry
    ({}, NETRC.format(host="github.com", key="x"), "offline"),              # a netrc, but not for W&B
    ({"WANDB_BASE_URL": "https://wandb.example.org"}, NETRC.format(host="api.wandb.ai", key="k"), "offline"),
    ({"WANDB_BASE_URL": "https://wandb.example.org"}, NETRC.format(host="wandb.example.org", key="k"), "online"),  # a server of one's own
    ({"WANDB_API_KEY": "k" * 40, "WANDB_MODE": "offline"}, None, "offline"),  # WANDB_MODE says so
    ({"WANDB_MODE": "online"}, None, "online"),
    ({}, "machine api.wandb.ai login", "offline"),                          # an unreadable netrc: not logged in
])
def test_runs_are_online_exactly_when_wandb_finds_credentials_or_the_mode_says_so(home, environ, netrc, mode):
    if netrc is not None:
        (home / ".netrc").write_text(netrc)
    environ = dict(environ)
    assert wandb_mode.choose_mode(environ) == mode
    assert environ.get("WANDB_MODE", "online") == mode  # what wandb.init then reads


def test_netrc_is_read_where_NETRC_points(home, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(NETRC.format(host="api.wandb.ai", key="k"))
    assert wandb_mode.logged_in({"NETRC": str(elsewhere)}) and not wandb_mode.logged_in({})


def test_an_offline_run_ends_with_the_sync_line_and_no_key_is_logged(tmp_path, caplog, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(project="lightning_da_tests", dir=str(tmp_path))
    sync_dir = run.settings.sync_dir
    with caplog.at_level(logging.INFO, logger="lightning_da.wandb_mode"):
        wandb_mode.finish(run)
    ours = [r.getMessage() for r in caplog.records if r.name == "lightning_da.wandb_mode"]
    assert ours == [f"W&B run logged offline; upload it with: wandb sync {sync_dir}"]
    assert str(tmp_path) in sync_dir
