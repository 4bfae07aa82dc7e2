"""`python -m benchmarks.publish`: publish a harness checkpoint into the zoo, measured on its dataset's splits.

    python -m benchmarks.publish runs/<run>/runs/resnet18-deinforeg-noise0-seed0/checkpoint \
        --name resnet18.deinforeg_digits --half --default [--hub org/resnet18-deinforeg-digits]

The checkpoint's config names its dataset and image size; this resolves them (the library never reads a dataset by
name) and hands `zoo.publish.publish` the validation and test loaders. The manifest records both metrics: the exit
was chosen on validation, so the test metric is the one to quote. `--hub org/name` also pushes the published folder
to the Hugging Face Hub with a model card (`zoo.publish.push_to_hub`). Exit codes: 0 done, 2 a user error (one line).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import datasets
from zoo.checkpoints import read_config
from zoo.errors import UserError
from zoo.hub import DEFAULT_MANIFEST, hf_offline, parse_hf_hub
from zoo.publish import data_spec, publish, push_to_hub

from .build import dataset_info, eval_loader, user_errors

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.publish", description=__doc__.split("\n")[0])
    p.add_argument("src", help="checkpoint folder written by the harness")
    p.add_argument("--name", required=True, help="arch.tag under which to publish (e.g. resnet18.deinforeg_digits)")
    p.add_argument("--half", action="store_true", help="store float16 weights (loaded back as float32)")
    p.add_argument("--manifest", default=None, help=f"manifest to update (default {DEFAULT_MANIFEST})")
    p.add_argument("--dataset", default=None, help="dataset to measure on (default: the checkpoint's)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the checkpoint's)")
    p.add_argument("--description", default=None)
    p.add_argument("--default", action="store_true", help="the tag a bare `arch` with pretrained=True resolves to")
    p.add_argument("--exit", choices=("last", "best"), default=None, help="exit policy (default: best unless bp)")
    p.add_argument("--hub", default=None, metavar="ORG/NAME", help="also push to this Hugging Face Hub model repo")
    p.add_argument("--hub-revision", default=None, help="branch to push to (default: main)")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m benchmarks.publish " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        if args.hub:  # fail before the local publish, not after
            parse_hf_hub(args.hub)
            if hf_offline():
                raise UserError(f"--hub {args.hub}: HF_HUB_OFFLINE is set; cannot push to the Hugging Face Hub")
        config = read_config(args.src)
        ds, size = data_spec({**config, **({"dataset": args.dataset} if args.dataset else {})})
        size = args.image_size or size
        info = dataset_info(ds)
        with user_errors():
            splits = {s: eval_loader(datasets.create_dataset(ds, s, image_size=size), 128) for s in ("val", "test")}
        meta = {"dataset": ds, "image_size": size or info.image_size, "mean": list(info.mean), "std": list(info.std)}
        entry = publish(
            args.src, args.name, splits, half=args.half, manifest=args.manifest, metadata=meta,
            description=args.description, command=command, default=args.default, exit_policy=args.exit,
        )  # fmt: skip
        if args.hub:
            manifest = Path(args.manifest) if args.manifest else DEFAULT_MANIFEST
            info = push_to_hub(
                manifest.parent / args.name, args.hub, manifest=manifest, revision=args.hub_revision,
                private=args.private or None, commit_message=f"Publish {args.name}",
            )  # fmt: skip
            entry = {**entry, "hf_hub": getattr(info, "commit_url", None) or str(info)}
    except UserError as e:
        print(f"python -m benchmarks.publish: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({args.name: entry}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
