"""The one exception type for "the user asked for something impossible".

Unknown model, method, dataset or keyword, a size a model cannot take, a bad rate, missing files: raised where the
fact is known, with one line that says what is valid. Command-line tools (`python -m benchmarks.run`,
`python -m zoo.pipeline`, `python -m zoo.publish`) print exactly this type as one line and exit with code 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """A request that cannot be done as asked; the message is one line naming the valid choices."""
