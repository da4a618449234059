"""Help without type clutter. Typer prints each parameter's Python type beside it (`--type <str>`,
`--force <bool>`, `--limit <int range>`), which tells a person nothing the help text does not; the
CLI shows only what helps: the choices of a value that has them, or a metavar a command gives."""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption


def _shown_type(param: TyperArgument | TyperOption, ctx: Any) -> str:
    if param.metavar is not None:
        return param.metavar
    if isinstance(param, TyperOption) and param.is_flag:
        return ""
    if param.type_descriptor.is_choice:
        return param.display_type(ctx)  # `<queued|running|...>`
    return ""


def install() -> None:
    """Applies to every command of this process (the CLI's own, once, at import)."""
    TyperOption.display_type_rich = _shown_type  # type: ignore[assignment,method-assign]
    TyperArgument.display_type_rich = _shown_type  # type: ignore[assignment,method-assign]
