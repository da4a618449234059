"""Writes the gateway's OpenAPI schema, from which the console's typed client is generated
(`npm run schema` in web/). `python -m api.console.schema_export [PATH]`; a test keeps the committed
copy current."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import SecretStr

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "web" / "openapi.json"


def schema() -> dict[str, Any]:
    """The schema as `create_app` declares it; settings with throwaway secrets (none ends up in it)."""
    from api.app import create_app
    from bitinglip.config import Settings
    from bitinglip.home_secrets import SECRETS

    with tempfile.TemporaryDirectory() as home:
        made = {name: SecretStr(make()) for name, (_, make) in SECRETS.items()}
        settings = Settings(home=Path(home), **made)  # type: ignore[arg-type]
        return create_app(settings).openapi()


def render() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    path.write_text(render())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
