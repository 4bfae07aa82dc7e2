"""DeInfoReg Zoo datasets: embedded offline defaults, real datasets from a local root, exact label noise.

Note: the Hugging Face library is also imported as `datasets`. Run from the repository root (as
`python -m benchmarks.run` does): the current directory comes first on `sys.path`, so this package wins.
"""

from . import noise
from ._base import DatasetError, DatasetInfo
from ._factory import (
    add_label_noise,
    check_noise,
    create_dataset,
    create_loader,
    get_dataset_info,
    list_datasets,
    register_dataset,
)

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "add_label_noise",
    "check_noise",
    "create_dataset",
    "create_loader",
    "get_dataset_info",
    "list_datasets",
    "noise",
    "register_dataset",
]
