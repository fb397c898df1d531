"""`virtual-mcp serve` whose token manager's clock runs ahead by the seconds written in a file the test controls:
`python -m tests.fleet.clock_child FILE serve ARGS...`. The test moves every replica's clock at once (a token's
lifetime passes without anyone waiting); a missing or empty file is no offset.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tests.serve_child import announce_ready
from virtual_mcp.cli import main
from virtual_mcp.outbound.token_manager import TokenManager


def clock_from(path: Path) -> None:
    init = TokenManager.__init__

    def init_with_clock(self: TokenManager, *args: Any, **kwargs: Any) -> None:
        clock = kwargs.get("clock", time.time)  # the one `serve` passes in

        def moved() -> float:
            try:
                return clock() + float(path.read_text() or 0)
            except (OSError, ValueError):
                return clock()

        kwargs["clock"] = moved
        init(self, *args, **kwargs)

    TokenManager.__init__ = init_with_clock  # type: ignore[method-assign]


if __name__ == "__main__":
    clock_from(Path(sys.argv[1]))
    announce_ready()
    sys.exit(main(sys.argv[2:]))
