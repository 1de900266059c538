"""The environment names a setting is read from."""

from __future__ import annotations

from pydantic import AliasChoices


def env_aliases(name: str, *seed_names: str) -> AliasChoices:
    """The environment names of a field: `OAI_SERVER_<NAME>`, then the seed system's own names, if any.

    The field's plain name is not one of them (a stray `HOST` or `DEVICE` in the environment is not read);
    code still passes values by field name (`populate_by_name`).
    """
    return AliasChoices(f"OAI_SERVER_{name.upper()}", *seed_names)
