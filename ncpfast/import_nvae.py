"""python -m ncpfast.import_nvae CHECKPOINT --out RUN_DIR: an NVAE (NVlabs/NVAE)
checkpoint as an ncpfast run directory (config.json, the stage-1 checkpoint, and a
provenance note), ready for `python -m ncpfast.train --stage 2 --from RUN_DIR`,
`python -m ncpfast.sample` and `python -m ncpfast.evaluate`.

The checkpoint is read with weights_only=True; the one class it may name is
argparse.Namespace (NVAE's training arguments). Its optimiser and scheduler
states are ignored.
"""
import argparse
import dataclasses
import os
import sys
from typing import Optional

import torch

from . import checkpoint
from .atomic_files import atomic_write
from .config import Config, HierarchyConfig, resolve_config, save_config
from .models import HierarchicalVAE
from .models.nvae_checkpoint import NVAE_ARG_DEFAULTS, convert_state_dict, nvae_model_config
from .run_dir import RunDir

# ncpfast's preset for each imported data set: its training and evaluation settings
# (batch sizes, NLL samples) go with the imported model; the model fields come from the checkpoint.
PRESET_OF_DATASET = {"mnist": "mnist", "cifar10": "cifar10", "celeba64": "celeba64", "celebahq256": "celebahq256",
                     "ffhq256": "celebahq256"}
NOTE_NAME = "IMPORTED_FROM_NVAE.txt"


def read_nvae_checkpoint(path: str) -> tuple[argparse.Namespace, dict]:
    """(args with NVAE's defaults filled in, state_dict) of an NVAE checkpoint; ValueError
    saying what was expected for anything else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"NVAE checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  foreign or truncated bytes fail in torch.load in many ways
        # (UnpicklingError, RuntimeError, EOFError, KeyError, BadZipFile...): all mean "not a readable checkpoint".
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is not a readable NVAE checkpoint (expected a torch.save file holding a dict "
                         f"with 'args' and 'state_dict'; a truncated or foreign file?): {first_line}") from None
    if not isinstance(state, dict) or not isinstance(state.get("args"), argparse.Namespace) \
            or not isinstance(state.get("state_dict"), dict):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not an NVAE checkpoint: expected a dict with 'args' (an argparse.Namespace) "
                         f"and 'state_dict', found {found}")
    args = argparse.Namespace(**{**NVAE_ARG_DEFAULTS, **vars(state["args"])})  # as NVAE's evaluate.py does
    return args, state["state_dict"]


def import_checkpoint(path: str, out: str, dataset: Optional[str] = None,
                      data_dir: Optional[str] = None) -> Config:
    """Writes the run directory `out` for the NVAE checkpoint at `path`; returns its config.
    dataset/data_dir: where stage 2 and the evaluation read the images (default: the
    data set NVAE trained on, its files to be named with --data-dir later)."""
    args, nvae_state = read_nvae_checkpoint(path)
    model_config, trained_on = nvae_model_config(args)
    model = HierarchicalVAE(model_config)
    state = convert_state_dict(nvae_state, model)
    model.load_state_dict(state)  # strict: the map covers every key
    preset = PRESET_OF_DATASET[trained_on]
    config = resolve_config(preset, {**_model_settings(model_config), "data.dataset": dataset or trained_on,
                                     "data.data_dir": data_dir, "run.run_dir": out})
    run = RunDir(out)
    if run.is_run_dir():
        raise ValueError(f"{out} already holds a run (config.json); choose a new --out directory")
    os.makedirs(run.checkpoints_dir, exist_ok=True)
    save_config(config, run.config_path)
    checkpoint.save_atomic(dict(format=1, config=dataclasses.asdict(config), step=0, model=model.state_dict(),
                                ema=None, imported_from=os.path.abspath(path)), run.latest_checkpoint)
    with atomic_write(os.path.join(out, NOTE_NAME)) as f:
        f.write(f"Imported from the NVAE checkpoint {os.path.abspath(path)}\n"
                f"(epoch {getattr(args, 'epoch', 'unknown')} of NVAE's training; its args:)\n")
        for key, value in sorted(vars(args).items()):
            f.write(f"  {key} = {value!r}\n")
        f.write(f"ncpfast preset {preset!r} (training and evaluation settings); NVAE trained on {trained_on!r}, "
                f"the run reads {config.data.dataset!r}.\n")
    return config


def _model_settings(model_config) -> dict:
    """The config's model section (dotted) for an imported model's NVAEConfig."""
    hierarchy = {f.name for f in dataclasses.fields(HierarchyConfig)}
    return {"model.kind": "nvae", "model.in_channels": model_config.in_channels,
            "model.image_size": model_config.image_size, "model.likelihood": model_config.output,
            "model.num_mix": model_config.num_mix, "model.channels": model_config.channels,
            **{f"model.nvae.{name}": getattr(model_config, name) for name in hierarchy}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ncpfast.import_nvae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="an NVAE checkpoint (checkpoint.pt of NVlabs/NVAE's train.py)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="the run directory to write (new)")
    parser.add_argument("--dataset", metavar="NAME", help="the data set stage 2 and the evaluation read (default: "
                        "the one NVAE trained on: mnist, cifar10, celeba64, celebahq256 or ffhq256)")
    parser.add_argument("--data-dir", metavar="DIR", help="directory of that data set's files")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .cli.common import USER_ERRORS, report_user_error

    try:
        config = import_checkpoint(args.checkpoint, args.out, args.dataset, args.data_dir)
    except USER_ERRORS as error:
        return report_user_error(error)
    print(f"wrote {args.out}: preset {config.run.preset}, data set {config.data.dataset}; next: "
          f"python -m ncpfast.train --stage 2 --from {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
