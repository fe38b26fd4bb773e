"""Block skipping, two ways.

* :class:`SkipMask` — reversible, for the search. Skipping a block means it is not
  called: the hidden state passes through unchanged, as if the block returned its input.
  The mask is implemented as a *view*: the block list is temporarily replaced by the
  active blocks (same module objects, no weight copy, no reload) and per-layer
  bookkeeping (``layer_idx`` for the KV cache, ``num_hidden_layers``, ``layer_types``,
  vision block-index lists) is renumbered; :meth:`SkipMask.restore` puts everything back.
  Going through the same renumbering as the physical removal makes ``generate()`` with a
  KV cache correct under the mask, whichever blocks are skipped.
* :func:`remove_blocks` — physical removal for deployment: the same rebuild, made
  permanent; the removed blocks are dropped from the model and its config, so
  ``save_pretrained`` writes a normal, smaller model.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.models.families import Family, get_path, resolve_blocks, set_path


def _renumber(blocks: Iterable[torch.nn.Module]) -> None:
    """Set ``layer_idx`` of every submodule to its block's new position (KV cache index)."""
    for new_idx, block in enumerate(blocks):
        for mod in block.modules():
            if hasattr(mod, "layer_idx") and isinstance(mod.layer_idx, int):
                mod.layer_idx = new_idx


def _check_indices(indices: Iterable[int], n: int, what: str) -> list[int]:
    out = sorted({int(i) for i in indices})
    bad = [i for i in out if i < 0 or i >= n]
    if bad:
        raise GmSkipError(f"{what} block index {bad[0]} out of range: the model has {n} {what} "
                          f"blocks (valid 0..{n - 1})")
    if len(out) >= n:
        raise GmSkipError(f"cannot skip all {n} {what} blocks; keep at least one")
    return out


def _remap_last_kept(idx: int, removed: set[int]) -> int | None:
    """New index of the block whose output equals the old output of block ``idx``.

    If ``idx`` itself is removed, its output is the output of the last kept block before
    it (a skipped block returns its input); ``None`` if there is none.
    """
    j = idx
    while j >= 0 and j in removed:
        j -= 1
    if j < 0:
        return None
    return j - sum(1 for r in removed if r < j)


@dataclass
class _State:
    """What a rebuild changes, so that it can be undone."""

    decoder: list[torch.nn.Module]
    vision: list[torch.nn.Module] | None
    text_attrs: dict
    vision_attrs: dict
    vision_module_attrs: dict
    top_attrs: dict


class _Rebuilder:
    def __init__(self, model: torch.nn.Module, family: Family):
        self.model = model
        self.family = family
        cfg = model.config
        self.text_cfg = getattr(cfg, family.text_config_attr, None) or cfg
        self.vision_cfg = getattr(cfg, family.vision_config_attr, None)
        self.decoder_list = resolve_blocks(model, family.decoder_path, "decoder")
        self.vision_module = None
        if family.vision_path is not None:
            self.vision_list = resolve_blocks(model, family.vision_path, "vision")
            parent_path = family.vision_path.rpartition(".")[0]
            self.vision_module = get_path(model, parent_path)
        else:
            self.vision_list = None

    def snapshot(self) -> _State:
        text_attrs = {"num_hidden_layers": self.text_cfg.num_hidden_layers}
        for name in self.family.decoder_lists:
            if getattr(self.text_cfg, name, None) is not None:
                text_attrs[name] = list(getattr(self.text_cfg, name))
        vision_attrs, vision_module_attrs = {}, {}
        if self.vision_cfg is not None and self.vision_list is not None:
            vision_attrs[self.family.vision_count_key] = getattr(
                self.vision_cfg, self.family.vision_count_key)
            for name in self.family.vision_index_lists:
                vision_attrs[name] = list(getattr(self.vision_cfg, name))
                if hasattr(self.vision_module, name):
                    vision_module_attrs[name] = list(getattr(self.vision_module, name))
        top_attrs = {}
        if hasattr(self.model.config, "vision_feature_layer"):
            top_attrs["vision_feature_layer"] = self.model.config.vision_feature_layer
        return _State(list(self.decoder_list),
                      list(self.vision_list) if self.vision_list is not None else None,
                      text_attrs, vision_attrs, vision_module_attrs, top_attrs)

    def apply(self, base: _State, decoder_removed: Sequence[int],
              vision_removed: Sequence[int]) -> None:
        """Rebuild from ``base`` (the unmasked state) without the given blocks.

        Every index and every remap is checked before the model is touched: a GmSkipError
        leaves the model exactly as it was.
        """
        # 1. validate and compute everything
        n_dec = len(base.decoder)
        dec_rm = set(_check_indices(decoder_removed, n_dec, "decoder"))
        kept = [b for i, b in enumerate(base.decoder) if i not in dec_rm]
        text_lists = {name: [v for i, v in enumerate(values) if i not in dec_rm]
                      for name, values in base.text_attrs.items()
                      if name != "num_hidden_layers" and len(values) == n_dec}
        if base.vision is None:
            if vision_removed:
                raise GmSkipError(f"family {self.family.name} has no vision block path; "
                                  "pass --vision-path to skip vision blocks")
        else:
            n_vis = len(base.vision)
            vis_rm = set(_check_indices(vision_removed, n_vis, "vision"))
            vkept = [b for i, b in enumerate(base.vision) if i not in vis_rm]
            vision_lists = {name: self._remap_index_list(name, base.vision_attrs[name], vis_rm)
                            for name in self.family.vision_index_lists}
            if "vision_feature_layer" in base.top_attrs:
                feature_layer = self._remap_feature_layer(
                    base.top_attrs["vision_feature_layer"], n_vis, vis_rm)

        # 2. change the model
        set_path(self.model, self.family.decoder_path, torch.nn.ModuleList(kept))
        _renumber(kept)
        self.text_cfg.num_hidden_layers = len(kept)
        for name, values in text_lists.items():
            setattr(self.text_cfg, name, values)
        self.decoder_list = get_path(self.model, self.family.decoder_path)
        if base.vision is None:
            return
        set_path(self.model, self.family.vision_path, torch.nn.ModuleList(vkept))
        _renumber(vkept)
        self.vision_list = get_path(self.model, self.family.vision_path)
        setattr(self.vision_cfg, self.family.vision_count_key, len(vkept))
        for name, new in vision_lists.items():
            setattr(self.vision_cfg, name, new)
            if name in base.vision_module_attrs:
                setattr(self.vision_module, name, list(new))
        if "vision_feature_layer" in base.top_attrs:
            self.model.config.vision_feature_layer = feature_layer

    def _remap_index_list(self, name: str, values: list[int], removed: set[int]) -> list[int]:
        if name == "fullatt_block_indexes":
            # which blocks use full attention: a removed block simply leaves the list
            return [i - sum(1 for r in removed if r < i) for i in values if i not in removed]
        # feature taps (deepstack): the tap moves to the block whose output it now equals
        new = []
        for i in values:
            j = _remap_last_kept(i, removed)
            if j is None or j in new:
                raise GmSkipError(
                    f"removing vision blocks {sorted(removed)} leaves no distinct block for "
                    f"{name} index {i}; keep that block (or the one before it)")
            new.append(j)
        return new

    @staticmethod
    def _remap_feature_layer(value, n: int, removed: set[int]):
        """Llava's ``vision_feature_layer`` indexes hidden_states (0 = embeddings)."""
        def one(v: int) -> int:
            h = v if v >= 0 else n + 1 + v  # hidden_states index, 0..n
            if h == 0:
                return 0
            j = _remap_last_kept(h - 1, removed)
            new_h = 0 if j is None else j + 1
            return new_h - (n - len(removed) + 1) if v < 0 else new_h

        if isinstance(value, (list, tuple)):
            return [one(v) for v in value]
        return one(value)

    def restore(self, base: _State) -> None:
        set_path(self.model, self.family.decoder_path, torch.nn.ModuleList(base.decoder))
        _renumber(base.decoder)
        for name, value in base.text_attrs.items():
            setattr(self.text_cfg, name, value)
        self.decoder_list = get_path(self.model, self.family.decoder_path)
        if base.vision is not None:
            set_path(self.model, self.family.vision_path, torch.nn.ModuleList(base.vision))
            _renumber(base.vision)
            self.vision_list = get_path(self.model, self.family.vision_path)
            for name, value in base.vision_attrs.items():
                setattr(self.vision_cfg, name, value)
            for name, value in base.vision_module_attrs.items():
                setattr(self.vision_module, name, list(value))
        for name, value in base.top_attrs.items():
            setattr(self.model.config, name, value)


class SkipMask:
    """Reversible skipping of decoder/vision blocks on a loaded model.

    >>> mask = SkipMask(model, family)
    >>> with mask.skipping(decoder=[5, 7]):
    ...     out = model.generate(**inputs)      # blocks 5 and 7 pass their input through
    >>> mask.skipped  # ((), ()) again

    Indices always refer to the *original* (unmasked) numbering.
    """

    def __init__(self, model: torch.nn.Module, family: Family):
        self._rb = _Rebuilder(model, family)
        self._base = self._rb.snapshot()
        self.num_decoder = len(self._base.decoder)
        self.num_vision = len(self._base.vision) if self._base.vision is not None else 0
        self.skipped: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())

    def set(self, decoder: Iterable[int] = (), vision: Iterable[int] = ()) -> None:
        decoder, vision = tuple(sorted(set(decoder))), tuple(sorted(set(vision)))
        if (decoder, vision) == self.skipped:
            return
        self._rb.restore(self._base)
        if decoder or vision:
            try:
                self._rb.apply(self._base, decoder, vision)
            except BaseException:
                self._rb.restore(self._base)
                self.skipped = ((), ())
                raise
        self.skipped = (decoder, vision)

    def restore(self) -> None:
        self.set((), ())

    class _Ctx:
        def __init__(self, mask: "SkipMask", decoder, vision):
            self.mask, self.decoder, self.vision = mask, decoder, vision

        def __enter__(self):
            self.prev = self.mask.skipped
            self.mask.set(self.decoder, self.vision)
            return self.mask

        def __exit__(self, *exc):
            self.mask.set(*self.prev)
            return False

    def skipping(self, decoder: Iterable[int] = (), vision: Iterable[int] = ()) -> "SkipMask._Ctx":
        """Context manager: skip the given blocks inside the ``with`` body only."""
        return SkipMask._Ctx(self, tuple(decoder), tuple(vision))


def remove_blocks(model: torch.nn.Module, family: Family, decoder: Iterable[int] = (),
                  vision: Iterable[int] = ()) -> torch.nn.Module:
    """Physically remove blocks (original indices) in place and return the model.

    Renumbers every ``layer_idx``, sets ``num_hidden_layers``/``depth``, shortens
    per-layer config lists and remaps block-index lists, so that ``generate()`` with a KV
    cache and ``save_pretrained``/``from_pretrained`` work on the result.
    """
    rb = _Rebuilder(model, family)
    base = rb.snapshot()
    rb.apply(base, list(decoder), list(vision))
    return model
