"""Offline check of a `ray up` cluster file: the same schema and semantic checks `ray up` runs
before it talks to a cloud (it has no dry run). No network, no SSH."""

from __future__ import annotations

import copy

from bnsweep.errors import UserError
from bnsweep.specfile import read_yaml


def validate_cluster(path: str) -> dict:
    """Validate `path` against Ray's cluster schema; returns the prepared config, or raises UserError."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config  # pinned Ray: private API

    raw = read_yaml(path)
    try:
        cfg = prepare_config(copy.deepcopy(raw))
        validate_config(cfg)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise UserError(f"{path}: {where}: {e.message}") from None
    except (ValueError, RuntimeError, SystemExit, Exception) as e:  # click.ClickException for provider rules
        msg = getattr(e, "message", None) or str(e)
        raise UserError(f"{path}: {msg.splitlines()[0] if msg else type(e).__name__}") from None
    return cfg
