"""Offline check of a `ray up` cluster file: the same schema and semantic checks `ray up` runs
before it talks to a cloud (it has no dry run). No network, no SSH."""

from __future__ import annotations

import contextlib
import copy
import io
import logging

from bnsweep.errors import UserError
from bnsweep.specfile import read_yaml


def validate_cluster(path: str) -> dict:
    """Validate `path` against Ray's cluster schema; returns the prepared config, or raises UserError."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config  # pinned Ray: private API

    raw = read_yaml(path, "a cluster file is a YAML mapping with keys cluster_name, provider, ... (see cluster.yaml)")
    provider = raw.get("provider")
    if not isinstance(provider, dict) or not isinstance(provider.get("type"), str):
        missing = "provider" if not isinstance(provider, dict) else "provider.type"
        raise UserError(f"{path}: {missing}: missing or not {'a mapping' if missing == 'provider' else 'a name'}; a cluster "
                        "file names its provider, e.g. provider: {type: aws, region: us-west-2} or {type: local, head_ip: ...}")
    _check_your_machines(path, raw)
    try:
        with _ray_quiet():
            cfg = prepare_config(copy.deepcopy(raw))
            validate_config(cfg)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise UserError(f"{path}: {where}: {e.message}") from None
    except (ValueError, RuntimeError, SystemExit, Exception) as e:  # click.ClickException for provider rules
        msg = getattr(e, "message", None) or str(e)
        raise UserError(f"{path}: {msg.splitlines()[0] if msg else type(e).__name__}") from None
    return cfg


@contextlib.contextmanager
def _ray_quiet():
    """Ray's config checks log their refusal (PANIC lines, tracebacks) and then raise: keep only the exception."""
    logging.disable(100)  # above every level, Ray's PANIC included
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _check_your_machines(path: str, raw: dict) -> None:
    """A `local` (on-premise) file must name its machines and login; the shipped one leaves them unset on purpose.

    Ray's own refusal of missing IPs is a PANIC log line plus an exception; this is one line, and also names
    `auth.ssh_user`, which the shipped file leaves unset too. `worker_ips: []` (a head-only cluster) is allowed.
    """
    provider = raw.get("provider") if isinstance(raw, dict) else None
    if not isinstance(provider, dict) or provider.get("type") != "local" or "coordinator_address" in provider:
        return
    auth = raw.get("auth") if isinstance(raw.get("auth"), dict) else {}
    missing = [k for k, v in (("provider.head_ip", provider.get("head_ip")), ("provider.worker_ips",
               provider.get("worker_ips", "")), ("auth.ssh_user", auth.get("ssh_user"))) if v is None or v == ""]
    if missing:
        raise UserError(f"{path}: {', '.join(missing)} not set: add your machines (IPs or host names SSH reaches; "
                        "worker_ips is a list) and your login on them")
