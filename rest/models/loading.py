"""Loading exported models from local folders only, with messages that say what to put where."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from rest.errors import RestError

M = TypeVar("M")


def load_local(cls: type[M], folder: str | Path, what: str | None = None) -> M:
    """`cls.from_pretrained(folder)` for a local `save_pretrained` folder; never reaches for a hub.

    A missing folder, config or weights file is a RestError naming the file that should be there.
    """
    folder = Path(folder)
    what = what or cls.__name__
    if not folder.is_dir():
        raise RestError(
            f"{what} weights folder not found: {folder}. Put a save_pretrained folder there "
            f"(config.json + diffusion_pytorch_model.safetensors), e.g. the export/ folder of a training run."
        )
    if not (folder / "config.json").is_file():
        raise RestError(f"{folder}: no config.json; this is not a {what} folder written by save_pretrained")
    if not any(folder.glob("*.safetensors")):
        raise RestError(f"{folder}: no *.safetensors weights file next to config.json")
    try:
        return cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:  # wrong class, shapes or a corrupt file
        raise RestError(f"{folder}: cannot load {what} ({type(err).__name__}: {err})") from None
