"""Train the project's demo VLM on rendered driving scenes (CPU, a seed, minutes).

    python -m gm_skip_ros.training.train_demo --out models/demo_vlm --seed 0

The model is a real ``transformers`` Llava (a small CLIP vision tower, a Llama decoder of
12 blocks) with a byte-level BPE tokenizer and a ``LlavaProcessor`` (CLIP image processor,
chat template) saved beside it, so it loads with ``AutoModelForImageTextToText`` /
``AutoProcessor`` -- and through :func:`gm_skip_ros.models.load_vlm` -- like a downloaded
VLM. Training follows the recipe in the project notes:

1. stage 1: the vision tower alone, mean-pooled patch tokens -> LayerNorm -> linear heads
   (class, colour, position, time of day, weather), so the from-scratch ViT learns to see;
2. stage 2: the whole VLM end to end with an answer-only loss on a mix of questions
   ("What is the main object?", "Describe the scene.", colour / position / light state /
   time of day / weather questions), vision tower at a lower learning rate.

Every random choice comes from ``--seed`` (scene rendering, initialisation, batch order).
After training the script evaluates the model on freshly rendered 640x480 frames from a
disjoint seed (classification accuracy, caption CIDEr-D vs a constant-caption baseline,
and the effect of removing each single decoder block), writes a model card with those
numbers and saves everything atomically (weights in fp16 safetensors).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gm_skip_ros.data import scenes as S
from gm_skip_ros.errors import GmSkipError

# ----------------------------------------------------------------------------- tasks

#: Questions the model is trained on. The first two are the public tasks (scenes.PROMPTS);
#: the others only enrich training (the caption needs colour, position, light and weather).
QUESTIONS: dict[str, str] = {
    "classify": S.PROMPTS["classify"],
    "caption": S.PROMPTS["caption"],
    "colour": "What colour is the main object?",
    "position": "Where is the main object?",
    "light": "What colour is the traffic light?",
    "time": "What time of day is it?",
    "weather": "What is the weather like?",
}

#: Sampling weights of the questions in stage 2 ("light" only on traffic-light frames).
TASK_WEIGHTS: dict[str, float] = {
    "classify": 0.35,
    "caption": 0.3,
    "colour": 0.1,
    "position": 0.1,
    "light": 0.05,
    "time": 0.05,
    "weather": 0.05,
}


def answer_for(truth: S.SceneTruth, task: str) -> str:
    """The canonical answer to ``QUESTIONS[task]`` for a frame's ground truth."""
    if task == "classify":
        return S.CLASS_SYNONYMS[truth.main_class][0]
    if task == "caption":
        return truth.captions[0]
    if task == "colour":
        return truth.colour
    if task == "position":
        return truth.position
    if task == "light":
        if truth.light_state is None:
            raise ValueError("light question asked about a frame without a traffic light")
        return truth.light_state
    if task == "time":
        return truth.time_of_day
    if task == "weather":
        return truth.weather
    raise ValueError(f"unknown task {task!r}")


# ----------------------------------------------------------------------------- config


@dataclass
class DemoConfig:
    """Sizes of the demo model and of the training run."""

    image_size: int = 96
    patch_size: int = 16
    vision_layers: int = 4
    vision_hidden: int = 192
    vision_heads: int = 3
    vision_mlp: int = 768
    text_layers: int = 12
    text_hidden: int = 192
    text_heads: int = 3
    text_mlp: int = 512
    max_positions: int = 256
    # data
    train_frames: int = 10000
    render_width: int = 640
    render_height: int = 480
    # stage 1 (vision tower + linear heads)
    stage1_steps: int = 1400
    stage1_batch: int = 64
    stage1_lr: float = 1e-3
    # stage 2 (whole VLM)
    stage2_steps: int = 1000
    stage2_batch: int = 32
    stage2_lr: float = 3e-4
    stage2_vision_lr: float = 1e-4
    warmup_steps: int = 30
    weight_decay: float = 0.01
    # evaluation (frames from the disjoint seed eval_seed_offset + seed)
    eval_frames: int = 200
    eval_seed_offset: int = 100_000
    max_new_tokens: int = 24


TINY = dict(image_size=32, patch_size=16, vision_layers=1, vision_hidden=32, vision_heads=2,
            vision_mlp=64, text_layers=2, text_hidden=32, text_heads=2, text_mlp=64,
            train_frames=8, render_width=96, render_height=72, stage1_steps=2,
            stage1_batch=4, stage2_steps=3, stage2_batch=4, warmup_steps=1, eval_frames=4,
            max_new_tokens=4)


# ----------------------------------------------------------------------------- tokenizer

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '\\n' }}{% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>")


def tokenizer_corpus() -> list[str]:
    """Every word the model reads or writes: prompts, answers, synonyms, all captions."""
    texts = [f"USER: \n{q}\nASSISTANT:" for q in QUESTIONS.values()]
    for syns in S.CLASS_SYNONYMS.values():
        texts.extend(syns)
    texts.extend(S.COLOURS)
    texts.extend(S.LIGHT_STATES + S.POSITIONS + S.TIMES_OF_DAY + S.WEATHERS)
    for cls in S.CLASSES:
        colours = S.LIGHT_STATES if cls == "traffic_light" else tuple(S.COLOURS)
        for colour in colours:
            for pos in S.POSITIONS:
                for tod in S.TIMES_OF_DAY:
                    for weather in S.WEATHERS:
                        truth = S.SceneTruth(
                            main_class=cls,
                            light_state=colour if cls == "traffic_light" else None,
                            position=pos, colour=colour, time_of_day=tod, weather=weather)
                        texts.extend(S.make_captions(truth))
    return texts


def build_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer over the task vocabulary (no unknown tokens possible)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(sorted(set(tokenizer_corpus())), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, model_max_length=256,
        padding_side="right", clean_up_tokenization_spaces=False,
    )


def build_processor(tokenizer, cfg: DemoConfig):
    """LlavaProcessor: CLIP image processor (squash to a square, no crop) + chat template."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    side = {"height": cfg.image_size, "width": cfg.image_size}
    image_processor = CLIPImageProcessor(
        size=side, crop_size=side, do_resize=True, do_center_crop=False, resample=3,
        do_rescale=True, do_normalize=True, do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(cfg: DemoConfig, tokenizer):
    """A randomly initialised LlavaForConditionalGeneration of the demo size (float32)."""
    import torch
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)

    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_mlp,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_mlp, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_positions, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    n_image_tokens = (cfg.image_size // cfg.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=n_image_tokens, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(config).to(torch.float32)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    gc.pad_token_id = tokenizer.pad_token_id
    gc.do_sample = False
    gc.max_new_tokens = cfg.max_new_tokens
    return model


# ----------------------------------------------------------------------------- encoding


class Encoder:
    """Fast batch encoding for training: pixels once per frame, prompt ids once per task.

    The prompt's token ids do not depend on the image (fixed image size, fixed number of
    image tokens), so they come from one :func:`gm_skip_ros.models.build_inputs` call per
    question -- the same function the search and the runtime use. An example is the
    prompt, the answer's tokens as ``build_inputs(..., answer)`` makes them, and ``</s>``
    (checked token for token in the tests); the loss covers the answer and ``</s>`` only.
    """

    def __init__(self, processor):
        from gm_skip_ros.models import build_inputs

        self.processor = processor
        self.tok = processor.tokenizer
        probe = np.zeros((32, 32, 3), np.uint8)
        self.prompt_ids = {t: build_inputs(processor, probe, q)[0]["input_ids"][0].tolist()
                           for t, q in QUESTIONS.items()}
        self._ans_cache: dict[str, list[int]] = {}

    def pixels(self, images: Sequence[np.ndarray]):
        return self.processor.image_processor(images=list(images),
                                              return_tensors="pt")["pixel_values"]

    def answer_ids(self, answer: str) -> list[int]:
        ids = self._ans_cache.get(answer)
        if ids is None:
            ids = self.tok(" " + answer, add_special_tokens=False)["input_ids"]
            ids = ids + [self.tok.eos_token_id]
            self._ans_cache[answer] = ids
        return ids

    def batch(self, tasks: Sequence[str], answers: Sequence[str]):
        """input_ids / attention_mask / labels (right-padded) for a list of examples."""
        import torch

        seqs, labs = [], []
        for t, a in zip(tasks, answers):
            p, ans = self.prompt_ids[t], self.answer_ids(a)
            seqs.append(p + ans)
            labs.append([-100] * len(p) + ans)
        n = max(len(s) for s in seqs)
        pad = self.tok.pad_token_id
        ids = torch.full((len(seqs), n), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        labels = torch.full((len(seqs), n), -100, dtype=torch.long)
        for i, (s, lab) in enumerate(zip(seqs, labs)):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            labels[i, : len(lab)] = torch.tensor(lab)
        return ids, mask, labels


# ----------------------------------------------------------------------------- data


@dataclass
class FrameSet:
    pixels: Any  # N x 3 x S x S float16 tensor (processor output)
    truths: list
    images: list = field(default_factory=list)  # kept only for evaluation sets


def render_frames(encoder: Encoder, n: int, seed: int, width: int, height: int,
                  keep_images: bool = False, chunk: int = 64, log=print) -> FrameSet:
    import torch

    pix, truths, images = [], [], []
    buf: list[np.ndarray] = []
    t0 = time.time()
    for i, (img, truth) in enumerate(S.generate_scenes(n, seed, width, height)):
        buf.append(img)
        truths.append(truth)
        if keep_images:
            images.append(img)
        if len(buf) == chunk or i == n - 1:
            pix.append(encoder.pixels(buf).to(torch.float16))
            buf = []
        if (i + 1) % 1000 == 0:
            log(f"  rendered {i + 1}/{n} frames ({time.time() - t0:.0f} s)")
    return FrameSet(torch.cat(pix), truths, images)


# ----------------------------------------------------------------------------- training


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * prog))


_HEADS = {
    "class": (lambda t: S.CLASSES.index(t.main_class), len(S.CLASSES)),
    "colour": (lambda t: list(S.COLOURS).index(t.colour), len(S.COLOURS)),
    "position": (lambda t: S.POSITIONS.index(t.position), len(S.POSITIONS)),
    "time": (lambda t: S.TIMES_OF_DAY.index(t.time_of_day), len(S.TIMES_OF_DAY)),
    "weather": (lambda t: S.WEATHERS.index(t.weather), len(S.WEATHERS)),
}


def train_vision(model, frames: FrameSet, cfg: DemoConfig, rng: np.random.Generator,
                 log=print) -> dict:
    """Stage 1: the vision tower with linear heads on its mean-pooled patch tokens."""
    import torch
    from torch import nn

    tower = model.model.vision_tower
    hid = cfg.vision_hidden
    heads = nn.ModuleDict({k: nn.Sequential(nn.LayerNorm(hid), nn.Linear(hid, n))
                           for k, (_, n) in _HEADS.items()})
    targets = {k: torch.tensor([f(t) for t in frames.truths]) for k, (f, _) in _HEADS.items()}
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.stage1_lr, weight_decay=cfg.weight_decay)
    tower.train()
    n = len(frames.truths)
    t0 = time.time()
    hist = []
    for step in range(cfg.stage1_steps):
        for g in opt.param_groups:
            g["lr"] = cfg.stage1_lr * _lr_factor(step, cfg.stage1_steps, cfg.warmup_steps)
        idx = torch.from_numpy(rng.choice(n, cfg.stage1_batch, replace=False))
        px = frames.pixels[idx].float()
        feats = tower(pixel_values=px).last_hidden_state[:, 1:].mean(1)
        loss = 0.0
        correct = {}
        for k, head in heads.items():
            logits = head(feats)
            loss = loss + nn.functional.cross_entropy(logits, targets[k][idx])
            correct[k] = (logits.argmax(-1) == targets[k][idx]).float().mean().item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        hist.append((loss.item(), correct["class"]))
        if (step + 1) % 50 == 0 or step == cfg.stage1_steps - 1:
            last = hist[-50:]
            log(f"  stage 1 step {step + 1}/{cfg.stage1_steps}: loss "
                f"{np.mean([h[0] for h in last]):.3f}, class acc "
                f"{np.mean([h[1] for h in last]):.3f} ({time.time() - t0:.0f} s)")
    tower.eval()
    last = hist[-50:]
    return {"steps": cfg.stage1_steps, "seconds": round(time.time() - t0, 1),
            "final_loss": round(float(np.mean([h[0] for h in last])), 4),
            "final_train_class_accuracy": round(float(np.mean([h[1] for h in last])), 4)}


def sample_tasks(truths: Sequence, rng: np.random.Generator) -> list[str]:
    names = list(TASK_WEIGHTS)
    p = np.array([TASK_WEIGHTS[k] for k in names], dtype=float)
    no_light = p.copy()
    no_light[names.index("light")] = 0.0
    p, no_light = p / p.sum(), no_light / no_light.sum()
    return [names[rng.choice(len(names), p=p if t.main_class == "traffic_light" else no_light)]
            for t in truths]


def train_vlm(model, encoder: Encoder, frames: FrameSet, cfg: DemoConfig,
              rng: np.random.Generator, log=print) -> dict:
    """Stage 2: the whole VLM end to end, answer-only loss, mixed questions."""
    import torch

    vision = list(model.model.vision_tower.parameters())
    vision_ids = {id(p) for p in vision}
    rest = [p for p in model.parameters() if id(p) not in vision_ids]
    groups = [{"params": vision, "base_lr": cfg.stage2_vision_lr},
              {"params": rest, "base_lr": cfg.stage2_lr}]
    opt = torch.optim.AdamW(groups, lr=cfg.stage2_lr, weight_decay=cfg.weight_decay)
    model.train()
    n = len(frames.truths)
    t0 = time.time()
    losses = []
    for step in range(cfg.stage2_steps):
        f = _lr_factor(step, cfg.stage2_steps, cfg.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * f
        idx = rng.choice(n, cfg.stage2_batch, replace=False)
        truths = [frames.truths[i] for i in idx]
        tasks = sample_tasks(truths, rng)
        answers = [answer_for(t, k) for t, k in zip(truths, tasks)]
        ids, mask, labels = encoder.batch(tasks, answers)
        px = frames.pixels[torch.from_numpy(idx)].float()
        out = model(input_ids=ids, attention_mask=mask, pixel_values=px, labels=labels,
                    use_cache=False)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
        if (step + 1) % 50 == 0 or step == cfg.stage2_steps - 1:
            log(f"  stage 2 step {step + 1}/{cfg.stage2_steps}: answer loss "
                f"{np.mean(losses[-50:]):.4f} ({time.time() - t0:.0f} s)")
    model.eval()
    return {"steps": cfg.stage2_steps, "seconds": round(time.time() - t0, 1),
            "final_loss": round(float(np.mean(losses[-50:])), 4)}


# ----------------------------------------------------------------------------- evaluation


def accuracy(predictions: Sequence[str], truths: Sequence) -> float:
    """The search's classification accuracy metric (class synonyms accepted)."""
    from gm_skip_ros.search.metrics import get_metric

    refs = [S.CLASS_SYNONYMS[t.main_class] for t in truths]
    return float(get_metric("accuracy")(list(predictions), refs))


def cider(predictions: Sequence[str], truths: Sequence) -> float:
    """CIDEr-D against every reference caption of each frame (the search's metric)."""
    from gm_skip_ros.search.metrics import cider_d

    return float(cider_d(list(predictions), [list(t.captions) for t in truths]))


def generate_answers(model, encoder: Encoder, frames: FrameSet, task: str,
                     max_new_tokens: int, batch: int = 50) -> list[str]:
    """Greedy answers to QUESTIONS[task] for every frame (all prompts have equal length)."""
    import torch

    tok = encoder.tok
    prompt = torch.tensor(encoder.prompt_ids[task])
    outs: list[str] = []
    with torch.no_grad():
        for s in range(0, len(frames.truths), batch):
            px = frames.pixels[s: s + batch].float()
            ids = prompt.unsqueeze(0).repeat(px.shape[0], 1)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 pixel_values=px, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
            outs.extend(tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True))
    return [o.strip() for o in outs]


def answer_nll(model, encoder: Encoder, frames: FrameSet, tasks: Sequence[str],
               batch: int = 50) -> float:
    """Mean per-token negative log-likelihood of the canonical answers (teacher forcing)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for task in tasks:
            for s in range(0, len(frames.truths), batch):
                truths = frames.truths[s: s + batch]
                ids, mask, labels = encoder.batch([task] * len(truths),
                                                  [answer_for(t, task) for t in truths])
                px = frames.pixels[s: s + batch].float()
                logits = model(input_ids=ids, attention_mask=mask, pixel_values=px,
                               use_cache=False).logits[:, :-1]
                tgt = labels[:, 1:]
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1),
                    ignore_index=-100, reduction="sum")
                total += nll.item()
                count += int((tgt != -100).sum())
    return total / max(1, count)


def evaluate(model, encoder: Encoder, frames: FrameSet, max_new_tokens: int) -> dict:
    """Classification accuracy, caption CIDEr-D and answer NLL on ``frames``."""
    cls_out = generate_answers(model, encoder, frames, "classify", 6)
    cap_out = generate_answers(model, encoder, frames, "caption", max_new_tokens)
    return {
        "accuracy": accuracy(cls_out, frames.truths),
        "cider": cider(cap_out, frames.truths),
        "nll": answer_nll(model, encoder, frames, ("classify", "caption")),
        "examples": [{"class": t.main_class, "answer": a, "caption": c,
                      "reference": t.captions[0]}
                     for t, a, c in list(zip(frames.truths, cls_out, cap_out))[:6]],
    }


def constant_caption_baseline(train_truths: Sequence, frames: FrameSet) -> tuple[str, float]:
    """CIDEr-D of always answering the most frequent training caption."""
    caption = Counter(t.captions[0] for t in train_truths).most_common(1)[0][0]
    return caption, cider([caption] * len(frames.truths), frames.truths)


def block_table(model, encoder: Encoder, frames: FrameSet, max_new_tokens: int,
                log=print) -> list[dict]:
    """Accuracy / CIDEr-D / answer NLL with each single decoder block removed."""
    from gm_skip_ros.models import SkipMask, family_for_model_type

    mask = SkipMask(model, family_for_model_type(model.config.model_type))
    rows = []
    for i in range(mask.num_decoder):
        with mask.skipping(decoder=[i]):
            r = evaluate(model, encoder, frames, max_new_tokens)
        rows.append({"removed_block": i, "accuracy": r["accuracy"], "cider": r["cider"],
                     "nll": r["nll"]})
        log(f"  without block {i:2d}: accuracy {r['accuracy']:.3f}  CIDEr-D {r['cider']:.3f}"
            f"  answer NLL {r['nll']:.4f}")
    return rows


# ----------------------------------------------------------------------------- saving


def count_parameters(model) -> dict:
    m = model.model
    vision = sum(p.numel() for p in m.vision_tower.parameters())
    proj = sum(p.numel() for p in m.multi_modal_projector.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "vision_tower": vision, "projector": proj,
            "language_model": total - vision - proj}


def model_card(report: dict) -> str:
    cfg = report["config"]
    ev = report["eval"]
    p = report["parameters"]
    lines = [
        "# gm_skip_ros demo VLM",
        "",
        "A small driving-scene vision-language model trained by this repository's own script",
        "on frames rendered by `gm_skip_ros.data.scenes`. It is the default model of",
        "`make demo`: the GM-Skip search removes decoder blocks from it. It is a real",
        "`transformers` architecture and loads with `AutoModelForImageTextToText` and",
        "`AutoProcessor` (local files, safetensors, no remote code).",
        "",
        "## Architecture",
        "",
        f"- `LlavaForConditionalGeneration`: CLIP vision tower ({cfg['vision_layers']} layers, "
        f"hidden {cfg['vision_hidden']}, {cfg['image_size']}x{cfg['image_size']} px, patch "
        f"{cfg['patch_size']}, {(cfg['image_size'] // cfg['patch_size']) ** 2} image tokens), "
        "a 2-layer GELU projector, and a Llama decoder of "
        f"**{cfg['text_layers']} blocks** (hidden {cfg['text_hidden']}, {cfg['text_heads']} "
        f"heads, MLP {cfg['text_mlp']}).",
        f"- Parameters: {p['total']:,} (vision tower {p['vision_tower']:,}, projector "
        f"{p['projector']:,}, language model {p['language_model']:,}); weights stored in "
        "float16 safetensors.",
        f"- Tokenizer: byte-level BPE ({report['vocab_size']} tokens) trained on the task "
        "vocabulary, special tokens `<s>`, `</s>`, `<pad>`, `<image>`.",
        "- Processor: `LlavaProcessor` with a `CLIPImageProcessor` that squashes the camera "
        f"frame to {cfg['image_size']}x{cfg['image_size']} (no crop) and a chat template "
        "`<s>USER: <image>\\n{question}\\nASSISTANT:` (answer follows, ended by `</s>`).",
        "",
        "## Tasks",
        "",
        "| question | answer |",
        "|---|---|",
        "| `What is the main object?` | class name: car, truck, bus, pedestrian, cyclist, "
        "traffic light, stop sign, traffic cone |",
        "| `Describe the scene.` | a short caption, e.g. `a red car on the left at night in "
        "the rain` |",
        "| `What colour is the traffic light?` | red / yellow / green |",
        "| `What colour is the main object?`, `Where is the main object?`, "
        "`What time of day is it?`, `What is the weather like?` | one word |",
        "",
        "## Training",
        "",
        f"- Data: {cfg['train_frames']} frames rendered at {cfg['render_width']}x"
        f"{cfg['render_height']} by `generate_scenes(n, seed={report['seed']})`; one "
        "question per frame per step, sampled with weights "
        + ", ".join(f"{k} {v}" for k, v in TASK_WEIGHTS.items())
        + "; captions trained on the canonical reference (`captions[0]`); loss on the "
        "answer tokens only.",
        f"- Stage 1 (vision tower alone, linear heads on mean-pooled patch tokens for class, "
        f"colour, position, time of day, weather): {cfg['stage1_steps']} steps of batch "
        f"{cfg['stage1_batch']}, AdamW lr {cfg['stage1_lr']}, "
        f"{report['stage1']['seconds']} s.",
        f"- Stage 2 (whole VLM end to end): {cfg['stage2_steps']} steps of batch "
        f"{cfg['stage2_batch']}, AdamW lr {cfg['stage2_lr']} (vision tower "
        f"{cfg['stage2_vision_lr']}), warm-up {cfg['warmup_steps']} steps then cosine, "
        f"{report['stage2']['seconds']} s; final answer loss {report['stage2']['final_loss']}.",
        f"- Wall time of the whole run (rendering, training, evaluation, saving): "
        f"**{report['wall_seconds'] / 60:.1f} min** on {report['machine']} with "
        f"{report['threads']} torch threads.",
        "",
        "Reproduce:",
        "",
        "```",
        report["command"],
        "```",
        "",
        "## Held-out evaluation",
        "",
        f"{cfg['eval_frames']} fresh frames at 640x480 from seed "
        f"{report['eval_seed']} (disjoint from training), through the processor, greedy "
        "decoding, float32:",
        "",
        "| metric | value |",
        "|---|---|",
        f"| classification accuracy (`What is the main object?`, any synonym) | "
        f"**{ev['accuracy']:.3f}** |",
        f"| caption CIDEr-D (`Describe the scene.`, all references) | **{ev['cider']:.3f}** |",
        f"| constant-caption baseline CIDEr-D (`{report['baseline_caption']}`) | "
        f"{report['baseline_cider']:.3f} |",
        f"| answer NLL per token (class + canonical caption) | {ev['nll']:.4f} |",
        "",
        "Examples:",
        "",
        "| class | answer | caption | reference |",
        "|---|---|---|---|",
    ]
    for e in ev["examples"]:
        lines.append(f"| {e['class']} | {e['answer']} | {e['caption']} | {e['reference']} |")
    lines += [
        "",
        "## Removing one decoder block",
        "",
        "Held-out metrics with each single decoder block skipped (`SkipMask`: the block is",
        "taken out, the others renumbered); the unpruned model is the first row. The",
        "search has a landscape to work with where these differ.",
        "",
        "| removed block | accuracy | CIDEr-D | answer NLL |",
        "|---|---|---|---|",
        f"| none | {ev['accuracy']:.3f} | {ev['cider']:.3f} | {ev['nll']:.4f} |",
    ]
    for r in report["blocks"]:
        lines.append(f"| {r['removed_block']} | {r['accuracy']:.3f} | {r['cider']:.3f} | "
                     f"{r['nll']:.4f} |")
    lines += ["", "Produced by `gm_skip_ros/training/train_demo.py`; the numbers above are "
              "written by the training run itself (see `training_report.json`).", ""]
    return "\n".join(lines)


def save(out: Path, model, processor, report: dict) -> None:
    import torch
    from gm_skip_ros.io import atomic_directory

    with atomic_directory(out) as tmp:
        model.to(torch.float16).save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(report))
        (tmp / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    model.to(torch.float32)


# ----------------------------------------------------------------------------- main


def _machine() -> str:
    """E.g. "AMD EPYC 9R14 (x86_64, 2 cores)"."""
    import os

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({platform.machine()}, {os.cpu_count()} cores)"


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m gm_skip_ros.training.train_demo",
        description="Train the demo driving-scene VLM (Llava: CLIP + 12-block Llama) on "
                    "rendered scenes and save it with its processor and a model card.")
    ap.add_argument("--out", required=True, type=Path, help="output model directory")
    ap.add_argument("--seed", type=int, default=0, help="seed of data, init and batch order")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--tiny", action="store_true",
                    help="a tiny model and 2-3 steps (smoke test of the script, no quality)")
    ap.add_argument("--no-block-table", action="store_true",
                    help="skip the per-block removal table (faster)")
    for f in DemoConfig.__dataclass_fields__.values():
        if f.name in ("eval_seed_offset",):
            continue
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                        help=f"(default {f.default})")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import torch

    t_start = time.time()
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg = DemoConfig(**(TINY if args.tiny else {}))
    for name in DemoConfig.__dataclass_fields__:
        v = getattr(args, name, None)
        if v is not None:
            setattr(cfg, name, v)
    if cfg.text_layers < 1 or cfg.image_size % cfg.patch_size:
        raise GmSkipError("text_layers must be >= 1 and image_size a multiple of patch_size")
    rng = np.random.default_rng(args.seed)

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:6.0f} s] {msg}", flush=True)

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, cfg)
    model = build_model(cfg, tokenizer)
    encoder = Encoder(processor)
    params = count_parameters(model)
    log(f"model: {params['total']:,} parameters, vocabulary {len(tokenizer)}")

    log(f"rendering {cfg.train_frames} training frames ({cfg.render_width}x"
        f"{cfg.render_height}, seed {args.seed})")
    train = render_frames(encoder, cfg.train_frames, args.seed, cfg.render_width,
                          cfg.render_height, log=log)
    eval_seed = cfg.eval_seed_offset + args.seed
    log(f"rendering {cfg.eval_frames} held-out frames (640x480, seed {eval_seed})")
    held = render_frames(encoder, cfg.eval_frames, eval_seed, 640, 480, keep_images=True,
                         log=log)

    log("stage 1: vision tower")
    stage1 = train_vision(model, train, cfg, rng, log=log)
    log("stage 2: whole VLM")
    stage2 = train_vlm(model, encoder, train, cfg, rng, log=log)

    log("evaluating on held-out frames")
    ev = evaluate(model, encoder, held, cfg.max_new_tokens)
    base_caption, base_cider = constant_caption_baseline(train.truths, held)
    log(f"held-out accuracy {ev['accuracy']:.3f}, CIDEr-D {ev['cider']:.3f} (constant "
        f"caption {base_cider:.3f}), answer NLL {ev['nll']:.4f}")
    blocks = [] if args.no_block_table else block_table(model, encoder, held,
                                                        cfg.max_new_tokens, log=log)
    cmd_args = [a for a in (sys.argv[1:] if argv is None else list(argv))]
    report = {
        "seed": args.seed,
        "eval_seed": eval_seed,
        "config": asdict(cfg),
        "parameters": params,
        "vocab_size": len(tokenizer),
        "stage1": stage1,
        "stage2": stage2,
        "eval": ev,
        "baseline_caption": base_caption,
        "baseline_cider": base_cider,
        "blocks": blocks,
        "threads": args.threads,
        "machine": _machine(),
        "torch": torch.__version__,
        "command": "python -m gm_skip_ros.training.train_demo " + " ".join(cmd_args),
    }
    report["wall_seconds"] = round(time.time() - t_start, 1)
    save(args.out, model, processor, report)
    log(f"saved {args.out} (wall time {report['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GmSkipError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
