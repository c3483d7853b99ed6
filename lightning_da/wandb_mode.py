"""Where W&B logs, as its users run it: online for a user who is logged in (an API key in the environment, an identity
token, or a `.netrc` entry for the W&B host, the places wandb itself looks), offline otherwise, and whatever
`WANDB_MODE` says when it is set. An offline run is uploaded later with `wandb sync`; each run ends by saying where it
went. Nothing here prints or logs a key."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.wandb.ai"


def logged_in(environ=os.environ) -> bool:
    """Whether wandb would find credentials for its host without asking (it asks, or blocks on the network, otherwise)."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(environ.get("WANDB_BASE_URL") or DEFAULT_HOST).netloc
    for path in ([environ["NETRC"]] if environ.get("NETRC") else ["~/.netrc", "~/_netrc"]):
        path = Path(path).expanduser()
        if not path.is_file():
            continue
        try:
            entry = netrc.netrc(str(path)).authenticators(host)
        except (netrc.NetrcParseError, OSError):
            return False
        return bool(entry and entry[2])  # the key is the entry's password
    return False


def choose_mode(environ=os.environ) -> str:
    """Set WANDB_MODE to offline unless it is set or the user is logged in; the mode runs will use."""
    if not environ.get("WANDB_MODE") and not logged_in(environ):
        environ["WANDB_MODE"] = "offline"
    return environ.get("WANDB_MODE") or "online"


def finish(run) -> None:
    """Finish a W&B run (a `wandb.Run`), then one line: its URL, or the `wandb sync` command that uploads it."""
    disabled, url, sync_dir = getattr(run, "disabled", False), None if run.offline else run.url, run.settings.sync_dir
    run.finish()
    if disabled:
        return
    if url:
        log.info("W&B run: %s", url)
    else:
        log.info("W&B run logged offline; upload it with: wandb sync %s", sync_dir)
