"""The one exception type for "the user asked for something impossible".

Unknown model, method, dataset or keyword, a size a model cannot take, a bad rate, missing files: raised where the
fact is known, with one line that says what is valid. Command-line tools (`python -m benchmarks.run`,
`python -m zoo.pipeline`, `python -m zoo.publish`) print exactly this type as one line and exit with code 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["CheckpointError", "UserError", "check_kwargs"]


class UserError(ValueError):
    """A request that cannot be done as asked; the message is one line naming the valid choices."""


def check_kwargs(given: Iterable[str], valid: Iterable[str], what: str) -> None:
    """A UserError naming the valid keywords when `given` holds one that `what` does not take."""
    valid = sorted(set(valid))
    unknown = sorted(set(given) - set(valid))
    if unknown:
        close = {u: difflib.get_close_matches(u, valid, n=1) for u in unknown}
        hints = [f"{u} (did you mean {c[0]}?)" if c else u for u, c in close.items()]
        raise UserError(f"{what} takes no keyword {', '.join(hints)}; valid keywords: {', '.join(valid)}")


class CheckpointError(UserError):
    """A checkpoint problem a user can act on: missing or corrupt files, hash or architecture mismatch, bad tag."""
