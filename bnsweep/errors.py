"""The one exception type for mistakes a user can fix (bad spec, missing data, bad resources).

The CLI prints it as a single line and exits with status 2; everything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import typing


class UserError(Exception):
    """A mistake in the user's input, with a message that names the bad value and what is allowed."""


def unknown(kind: str, name: object, known: list[str] | tuple[str, ...]) -> UserError:
    """The error for a name missing from a registry: lists every known name."""
    from bnsweep.limits import short

    return UserError(f"unknown {kind} {short(name)}; known: {', '.join(sorted(known))}")


MAX_PARTS = 5  # errors named in one message: a list of 10^5 bad values gives one line, not 10^5


def _where(loc: tuple) -> str:
    """('grid', 0, 'lr', 1) -> 'grid[0].lr[1]'."""
    from bnsweep.limits import short

    out = ""
    for part in loc:
        if not isinstance(part, int) and not (str(part).isprintable() and len(str(part)) <= 80):
            part = short(str(part))  # a key of a hostile file: no newlines, no megabytes
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validation_error(e, prefix: tuple = ()) -> UserError:
    """A pydantic ValidationError as one line: every bad field with what was wrong and what it got (cut short)."""
    from bnsweep.limits import short

    parts, errors = [], e.errors(include_url=False)
    for err in errors[:MAX_PARTS]:
        loc = prefix + tuple(err["loc"])
        msg, kind = err["msg"].removeprefix("Value error, "), err["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(e, tuple(err["loc"]))
            msg = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif kind == "union_tag_invalid":
            ctx = err["ctx"]
            msg = f"unknown {loc[-1]} {short(ctx['tag'])}; known: {ctx['expected_tags'].replace(chr(39), '')}"
        elif kind == "too_short":
            msg = f"must list at least {err['ctx']['min_length']} value (got {short(err['input'])})"
        elif kind not in ("missing", "value_error", "assertion_error") and loc:
            msg += f" (got {short(err['input'])})"
        parts.append(f"{_where(loc)}: {msg}" if loc else msg)
    more = f"; and {len(errors) - MAX_PARTS} more errors" if len(errors) > MAX_PARTS else ""
    return UserError("; ".join(parts) + more)


def _models_in(annotation, depth: int = 4) -> list:
    """The pydantic models an annotation names: itself, or the members of an Optional, a union or Annotated."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for a in typing.get_args(annotation) if depth else ():
        found += [m for m in _models_in(a, depth - 1) if m not in found]
    return found


def _allowed_keys(e, loc: tuple) -> list[str]:
    """The keys the model at `loc`'s parent accepts, found by walking the schema from the root.

    A location part that is no field name is a discriminated union's tag (`dataset.digits`): the
    member whose `name` field defaults to that tag is taken.
    """
    root = _MODELS_BY_TITLE.get(e.title)
    candidates = [root] if root else []
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        owner = next((c for c in candidates if part in c.model_fields), None)
        if owner is not None:
            candidates = _models_in(owner.model_fields[part].annotation)
        else:
            candidates = [c for c in candidates if "name" in c.model_fields and c.model_fields["name"].default == part]
    return list(candidates[0].model_fields) if len(candidates) == 1 else []


_MODELS_BY_TITLE: dict = {}


def register_model(cls):
    """Let error messages list the allowed keys of `cls` when it is a validation root."""
    _MODELS_BY_TITLE[cls.__name__] = cls
    return cls
