"""Save and load the state of any thermoai.bayes method: safetensors for the tensors, JSON for the rest.

::

    save_state("chain.safetensors", state, generator=gen)      # gen: the torch.Generator the updates use
    ...
    gen = torch.Generator()
    state = load_state("chain.safetensors", generator=gen)     # the chain continues bit for bit

A state is a tree (NamedTuples, dicts, lists, tuples, None) of tensors and Python scalars: the states of
every method (SGMCMC, VI with its optimiser state, Laplace, EKF) and of ensembles (the same NamedTuples
with a leading member dimension). The file holds

- every tensor leaf, bit for bit with its dtype and shape (safetensors; no pickle: loading runs no code),
  and the device it came from;
- in the header, the tree's structure as JSON: NamedTuple classes by module and name (only classes in
  ``thermoai`` are imported by name; pass ``like=`` for others), dict keys, Python scalars;
- optionally the state of a ``torch.Generator`` (``generator=``; ``torch.default_generator`` for the
  global RNG that ``vmap``-ed ensembles draw from), restored by :func:`load_state` or :func:`load_generator`;
- a SHA-256 digest of every tensor, checked when loading.

The file is written to a temporary name and renamed, so an interruption never leaves a half-written file
under ``path``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["save_state", "load_state", "load_generator"]

FORMAT = "thermoai.bayes.state"
VERSION = "1"
_GENERATOR = "__generator__"


def save_state(
    path: str | os.PathLike, state: Any, generator: torch.Generator | None = None, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``state`` (and the state of ``generator``) to ``path`` atomically; returns the path.

    Args:
        path: the file to write (conventionally ``*.safetensors``); its directory must exist.
        state: a tree of tensors and Python scalars (any thermoai.bayes state, an ensemble state).
        generator: a ``torch.Generator`` whose state is saved too (the one passed to ``update``, or
            ``torch.default_generator`` for the global RNG).
        metadata: extra string key/values kept in the header (e.g. the step or the run's settings).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"path: directory {str(path.parent)!r} does not exist")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("metadata must map strings to strings")
    tensors: dict[str, Tensor] = {}
    devices: dict[str, str] = {}
    seen: set[int] = set()
    structure = _encode(state, tensors, devices, seen, "state")
    if generator is not None:
        tensors[_GENERATOR] = generator.get_state().clone()
    header = {
        "format": FORMAT,
        "version": VERSION,
        "structure": json.dumps(structure),
        "devices": json.dumps(devices),
        "generator_device": "" if generator is None else str(generator.device),
        "sha256": json.dumps({name: _digest(t) for name, t in tensors.items()}, sort_keys=True),
        "user": json.dumps(metadata or {}),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=header)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_state(
    path: str | os.PathLike, generator: torch.Generator | None = None, like: Any = None,
    device: str | torch.device | None = None, verify: bool = True,
) -> Any:
    """Read a state written by :func:`save_state`.

    Args:
        path: the file.
        generator: if given, the saved generator state is written into it (``ValueError`` if the file has
            none); pass the generator the next updates will use (``torch.default_generator`` to restore
            the global RNG).
        like: a state of the same structure (e.g. ``transform.init(params)``) whose NamedTuple classes
            are used; needed only for classes outside ``thermoai``.
        device: where to put the tensors; default the device each was saved from.
        verify: check the SHA-256 digest of every tensor.

    Returns the state: fresh tensors with the saved dtypes, shapes and values, bit for bit.
    """
    tensors, header = _read(path, verify)
    structure = json.loads(header["structure"])
    devices = json.loads(header["devices"])
    template = None if like is None else _template(like)
    state = _decode(structure, tensors, devices, device, template, str(path))
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
        if _GENERATOR not in tensors:
            raise ValueError(f"generator: {str(path)!r} holds no generator state (save_state was called without one)")
        generator.set_state(tensors[_GENERATOR])
    return state


def load_generator(path: str | os.PathLike, verify: bool = True) -> torch.Generator:
    """A new ``torch.Generator`` (on the saved device) in the state saved with the file."""
    tensors, header = _read(path, verify)
    if _GENERATOR not in tensors:
        raise ValueError(f"{str(path)!r} holds no generator state (save_state was called without one)")
    generator = torch.Generator(device=header.get("generator_device") or "cpu")
    generator.set_state(tensors[_GENERATOR])
    return generator


# ------------------------------------------------------------------------------------------ encoding


def _encode(node: Any, tensors: dict[str, Tensor], devices: dict[str, str], seen: set[int], where: str) -> Any:
    if isinstance(node, Tensor):
        name = str(len(tensors))
        t = node.detach()
        if t.is_conj() or t.is_neg():
            t = t.resolve_conj().resolve_neg()
        storage = t.untyped_storage().data_ptr() if t.numel() else None
        # safetensors refuses tensors that share memory or are not contiguous: write a copy of those
        if not t.is_contiguous() or (storage is not None and storage in seen):
            t = t.contiguous().clone()
        if storage is not None:
            seen.add(t.untyped_storage().data_ptr())
        devices[name] = str(node.device)
        tensors[name] = t.cpu() if t.device.type != "cpu" else t
        return {"t": "tensor", "key": name}
    if node is None:
        return {"t": "none"}
    if isinstance(node, bool):
        return {"t": "bool", "v": node}
    if isinstance(node, int):
        return {"t": "int", "v": node}
    if isinstance(node, float):
        return {"t": "float", "v": repr(node)}  # repr round-trips, including nan and inf
    if isinstance(node, str):
        return {"t": "str", "v": node}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        cls = type(node)
        return {
            "t": "namedtuple", "class": f"{cls.__module__}:{cls.__qualname__}", "fields": list(cls._fields),
            "items": [_encode(v, tensors, devices, seen, f"{where}.{f}") for f, v in zip(cls._fields, node)],
        }
    if isinstance(node, (list, tuple)):
        return {
            "t": "tuple" if isinstance(node, tuple) else "list",
            "items": [_encode(v, tensors, devices, seen, f"{where}[{i}]") for i, v in enumerate(node)],
        }
    if isinstance(node, dict):
        keys = list(node)
        for k in keys:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"state: dict keys must be str or int; {where} has a key of type {type(k).__name__}")
        return {
            "t": "dict", "keys": [[type(k).__name__, k] for k in keys],
            "values": [_encode(node[k], tensors, devices, seen, f"{where}[{k!r}]") for k in keys],
        }
    raise TypeError(
        f"state: cannot save {where} of type {type(node).__name__}; states are trees of tensors, numbers, "
        "strings and None in NamedTuples, dicts, lists and tuples"
    )


def _template(like: Any) -> Any:
    """The NamedTuple classes of ``like``, in the shape of the encoded structure."""
    if isinstance(like, tuple) and hasattr(like, "_fields"):
        return (type(like), [_template(v) for v in like])
    if isinstance(like, (list, tuple)):
        return (None, [_template(v) for v in like])
    if isinstance(like, dict):
        return (None, {k: _template(v) for k, v in like.items()})
    return None


def _decode(node: Any, tensors: dict[str, Tensor], devices: dict[str, str], device: Any, template: Any, path: str) -> Any:
    try:
        kind = node["t"]
        if kind == "tensor":
            key = node["key"]
            return tensors[key].to(_target(device, devices[key], path))
        if kind == "none":
            return None
        if kind in ("bool", "int", "str"):
            return node["v"]
        if kind == "float":
            return float(node["v"])
        sub = template[1] if isinstance(template, tuple) else None
        if kind in ("list", "tuple"):
            items = [_decode(v, tensors, devices, device, _at(sub, i), path) for i, v in enumerate(node["items"])]
            return items if kind == "list" else tuple(items)
        if kind == "dict":
            keys = [int(v) if t == "int" else v for t, v in node["keys"]]
            return {k: _decode(v, tensors, devices, device, _at(sub, k), path) for k, v in zip(keys, node["values"])}
        if kind == "namedtuple":
            items = [_decode(v, tensors, devices, device, _at(sub, i), path) for i, v in enumerate(node["items"])]
            cls = template[0] if isinstance(template, tuple) and template[0] is not None else _named_class(node["class"], path)
            if tuple(getattr(cls, "_fields", ())) != tuple(node["fields"]):
                raise ValueError(
                    f"{path!r}: {node['class']} was saved with fields {node['fields']}, but {cls.__qualname__} has "
                    f"{list(getattr(cls, '_fields', ()))}"
                )
            return cls(*items)
    except (KeyError, IndexError, TypeError) as err:
        raise ValueError(f"{path!r}: the saved state structure is corrupted ({type(err).__name__}: {err})") from err
    raise ValueError(f"{path!r}: unknown node kind {kind!r} in the saved state structure")


def _at(sub: Any, key: Any) -> Any:
    if isinstance(sub, list):
        return sub[key] if isinstance(key, int) and key < len(sub) else None
    if isinstance(sub, dict):
        return sub.get(key)
    return None


def _named_class(spec: str, path: str) -> type:
    module, _, qualname = spec.partition(":")
    if not (module == "thermoai" or module.startswith("thermoai.")):
        raise ValueError(
            f"{path!r}: the state holds a {spec} NamedTuple from outside thermoai; pass like= (a state of the "
            "same structure) so that no module is imported by a name read from a file"
        )
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")):
        raise ValueError(f"{path!r}: {spec} is not a NamedTuple class")
    return obj


def _target(device: Any, saved: str, path: str) -> torch.device:
    target = torch.device(device) if device is not None else torch.device(saved)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{path!r}: the state was saved from {saved}, which is not available here; pass device='cpu'")
    return target


# ------------------------------------------------------------------------------------------ reading


def _digest(t: Tensor) -> str:
    data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(memoryview(data)).hexdigest()


def _read(path: str | os.PathLike, verify: bool) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no state file at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for truncated headers or data
        raise ValueError(f"{str(path)!r} is not a readable safetensors file (corrupted or truncated): {err}") from err
    if header.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a thermoai.bayes state (header format {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise ValueError(f"{str(path)!r}: state format version {header.get('version')!r} is not supported (expected {VERSION})")
    if verify:
        digests = json.loads(header["sha256"])
        if set(digests) != set(tensors):
            raise ValueError(f"{str(path)!r} is corrupted: its tensors do not match the header")
        for name, t in tensors.items():
            if digests[name] != _digest(t):
                raise ValueError(f"{str(path)!r} is corrupted: the checksum of tensor {name} does not match")
    return tensors, header

