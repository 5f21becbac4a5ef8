"""Typed configs: YAML files in `configs/` load into dataclasses, and the named presets live in one registry.

A config file is a nested mapping whose keys must be fields of the target dataclass; an unknown key is an
error that names the key and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from rest.errors import RestError

MAX_SEED = 2**64 - 1  # seeds of generation: torch.Generator takes 0 .. 2**64 - 1 (a negative one would alias)

T = TypeVar("T")


class ConfigError(RestError, ValueError):
    """A config file or mapping does not match its dataclass."""


#################################################################################
#                              Architecture configs                             #
#################################################################################


@dataclass(frozen=True)
class VAEArch:
    """Architecture of the causal video VAE (the constructor arguments of `CausalVideoVAE`)."""

    in_channels: int = 3  # RGB
    latent_channels: int = 32  # channels of the KL latent
    patch_size: int = 4  # space-to-depth factor applied before the first convolution
    block_out_channels: tuple[int, ...] = (32, 64, 128)  # one entry per resolution level
    temporal_downsample: tuple[bool, ...] = (True, True)  # one entry per level transition; True halves time
    layers_per_block: int = 1  # residual blocks per level (decoder: one more, as is usual)
    mid_layers: int = 1  # residual blocks at the lowest resolution
    scaling_factor: float = 1.0  # latents are multiplied by this after `shift_factor` is subtracted
    shift_factor: float = 0.0
    # Normalisation in the residual blocks: "rms" (per-pixel RMS over channels) or "none" (a learned gain only).
    # "none" tolerates a higher learning rate and learnt faster from scratch on SynthTalk (docs/experiments.md);
    # "rms" stays the default, for the weights already shipped.
    norm: Literal["rms", "none"] = "rms"

    @property
    def spatial_compression(self) -> int:
        return self.patch_size * 2 ** (len(self.block_out_channels) - 1)

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(self.temporal_downsample)


@dataclass(frozen=True)
class DiTSize:
    """Size of the denoiser transformer."""

    depth: int  # number of blocks
    width: int  # hidden size
    heads: int  # attention heads


@dataclass(frozen=True)
class Preset:
    """A named system size: resolution, VAE, denoiser and streaming window (docs/design.md, "Presets")."""

    name: str
    resolution: int  # square frames, pixels
    vae: VAEArch
    dit: DiTSize
    fps: int = 25
    chunk_latent_frames: int = 1  # latent frames generated per streaming chunk
    context_chunks: int = 3  # chunks kept in the Context-Cache

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae.spatial_compression

    @property
    def tokens_per_latent_frame(self) -> int:
        return self.latent_size**2

    @property
    def chunk_frames(self) -> int:
        return self.chunk_latent_frames * self.vae.temporal_compression


PRESETS: dict[str, Preset] = {
    # 16x spatial (patch 4 * 2^2), 4x temporal, 32 latent channels: 128x128 -> 8x8 tokens per latent frame.
    "tiny": Preset(
        name="tiny",
        resolution=128,
        vae=VAEArch(
            latent_channels=32,
            patch_size=4,
            block_out_channels=(32, 64, 128),
            temporal_downsample=(True, True),
            layers_per_block=1,
        ),
        dit=DiTSize(depth=8, width=256, heads=4),
    ),
    # 32x spatial (patch 4 * 2^3), 8x temporal, 128 latent channels: 512x512 -> 16x16 tokens per latent frame.
    "base": Preset(
        name="base",
        resolution=512,
        vae=VAEArch(
            latent_channels=128,
            patch_size=4,
            block_out_channels=(128, 256, 512, 512),
            temporal_downsample=(True, True, True),
            layers_per_block=2,
            mid_layers=2,
        ),
        dit=DiTSize(depth=28, width=1152, heads=16),
    ),
}


def get_preset(name: str) -> Preset:
    """Look a preset up by name; an unknown name lists the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


#################################################################################
#                          Mapping -> dataclass loading                         #
#################################################################################


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass `cls` from a nested mapping, refusing unknown keys and wrong types.

    `where` names the origin (file and key path) in error messages.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} for {cls.__name__} (valid keys: {', '.join(sorted(names))})"
        )
    kwargs = {key: _coerce(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where}: {err}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, where)
        for a in inner:  # first type that accepts the value
            try:
                return _coerce(a, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    if tp is Path and isinstance(value, str):
        return Path(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f)
    return {} if data is None else data


def load_config(cls: type[T], path: str | Path, overrides: dict | None = None) -> T:
    """Load YAML file `path` into dataclass `cls`; `overrides` (a nested mapping) is merged on top."""
    data = load_yaml(path)
    if overrides:
        data = merge(data, overrides)
    return from_dict(cls, data, where=str(path))


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; values of `update` win."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict:
    """Turn command-line `a.b.c=value` strings into a nested mapping (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict/list (for JSON and YAML dumps)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


__all__ = [
    "ConfigError",
    "DiTSize",
    "MAX_SEED",
    "PRESETS",
    "Preset",
    "VAEArch",
    "from_dict",
    "get_preset",
    "load_config",
    "load_yaml",
    "merge",
    "parse_overrides",
    "to_dict",
]
