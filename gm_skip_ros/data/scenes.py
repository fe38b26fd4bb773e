"""Synthetic driving scenes: a seeded OpenCV renderer with exact ground truth.

Each frame shows a road under varying light and weather with ONE main object a car
cares about (large, near the camera) and sometimes a few smaller distractors further
away. The main object is drawn big enough to stay recognisable after the VLM's
processor shrinks the frame to 64-96 px, and the classes differ in shape and colour.

Everything is a pure function of a ``numpy.random.Generator``: scene ``i`` of
``generate_scenes(n, seed)`` is rendered from ``np.random.default_rng([seed, i])``,
so any subset is reproducible on its own.

Images are H x W x 3 uint8 RGB (colour tuples below are RGB).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import cv2
import numpy as np

from gm_skip_ros.data.sample import Sample
from gm_skip_ros.errors import GmSkipError

CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "bus",
    "pedestrian",
    "cyclist",
    "traffic_light",
    "stop_sign",
    "traffic_cone",
)
LIGHT_STATES: tuple[str, ...] = ("red", "yellow", "green")
POSITIONS: tuple[str, ...] = ("left", "centre", "right")
TIMES_OF_DAY: tuple[str, ...] = ("day", "dusk", "night")
WEATHERS: tuple[str, ...] = ("clear", "rain", "fog")

PROMPTS: dict[str, str] = {
    "classify": "What is the main object?",
    "caption": "Describe the scene.",
}

#: Human-readable class names ("traffic_light" -> "traffic light").
DISPLAY_NAMES: dict[str, str] = {c: c.replace("_", " ") for c in CLASSES}

#: Acceptable answers per class; the first entry is the display name (canonical answer).
CLASS_SYNONYMS: dict[str, tuple[str, ...]] = {
    "car": ("car", "automobile", "sedan", "vehicle"),
    "truck": ("truck", "lorry", "semi truck", "delivery truck"),
    "bus": ("bus", "coach", "city bus", "school bus"),
    "pedestrian": ("pedestrian", "person", "man", "woman", "walker"),
    "cyclist": ("cyclist", "bicycle", "bicyclist", "bike", "rider"),
    "traffic_light": ("traffic light", "traffic signal", "signal", "stoplight", "stop light"),
    "stop_sign": ("stop sign", "stop", "sign", "road sign"),
    "traffic_cone": ("traffic cone", "cone", "road cone", "pylon"),
}

#: Named colours (RGB) used for objects; the name goes into the ground truth.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 25, 25),
    "blue": (30, 70, 200),
    "white": (235, 235, 235),
    "black": (25, 25, 30),
    "silver": (165, 170, 178),
    "grey": (120, 120, 125),
    "green": (30, 150, 50),
    "yellow": (240, 195, 20),
    "orange": (245, 120, 15),
    "purple": (120, 40, 150),
}

# Colour names each class may take (the main object's body / clothing colour).
_CLASS_COLOURS: dict[str, tuple[str, ...]] = {
    "car": ("red", "blue", "white", "black", "silver", "green"),
    "truck": ("red", "blue", "white", "green", "orange", "grey"),
    "bus": ("yellow", "red", "blue", "white", "green"),
    "pedestrian": ("red", "blue", "green", "yellow", "black", "white", "purple"),
    "cyclist": ("red", "blue", "green", "yellow", "black", "white", "orange"),
    "traffic_light": (),  # colour is the lit lamp
    "stop_sign": ("red",),
    "traffic_cone": ("orange",),
}

_LAMP_RGB = {"red": (255, 40, 30), "yellow": (255, 200, 20), "green": (40, 255, 90)}
_POS_PHRASE = {"left": "on the left", "centre": "in the centre", "right": "on the right"}
_TOD_PHRASE = {"day": "in daylight", "dusk": "at dusk", "night": "at night"}
_WEATHER_PHRASE = {"clear": "", "rain": "in the rain", "fog": "in fog"}
# Width / height of each object's bounding box (side views for vehicles).
_ASPECT = {
    "car": 2.1,
    "truck": 2.7,
    "bus": 2.7,
    "pedestrian": 0.42,
    "cyclist": 1.05,
    "traffic_light": 0.34,
    "stop_sign": 0.62,
    "traffic_cone": 0.78,
}


@dataclass
class SceneTruth:
    """Ground truth of one rendered frame.

    main_class:  one of CLASSES (snake_case).
    light_state: "red" / "yellow" / "green" for traffic lights, else None.
    position:    "left" / "centre" / "right" (third of the image holding the box centre).
    colour:      colour name of the main object (lit lamp for a traffic light).
    time_of_day: "day" / "dusk" / "night"; weather: "clear" / "rain" / "fog".
    blur:        whether a camera blur was applied.
    bbox:        main object's box (x0, y0, x1, y1) in pixels, clipped to the image.
    distractors: classes of the smaller secondary objects, farthest first.
    captions:    reference descriptions (>= 3); captions[0] is the canonical one.
    """

    main_class: str
    light_state: str | None
    position: str
    colour: str
    time_of_day: str
    weather: str
    blur: bool = False
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    distractors: tuple[str, ...] = ()
    captions: tuple[str, ...] = field(default_factory=tuple)

    @property
    def display_name(self) -> str:
        """Human-readable class name, e.g. "traffic light"."""
        return DISPLAY_NAMES[self.main_class]

    @property
    def conditions(self) -> str:
        """E.g. "night, rain"."""
        return f"{self.time_of_day}, {self.weather}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bbox"] = list(self.bbox)
        d["distractors"] = list(self.distractors)
        d["captions"] = list(self.captions)
        return d


def display_name(cls: str) -> str:
    """Human-readable name of a class ("stop_sign" -> "stop sign")."""
    return DISPLAY_NAMES[cls]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def make_captions(truth: SceneTruth) -> tuple[str, ...]:
    """Reference captions of a scene; the first one is canonical (same template always)."""
    name = truth.display_name
    pos = _POS_PHRASE[truth.position]
    cond = _TOD_PHRASE[truth.time_of_day]
    if truth.weather != "clear":
        cond = f"{cond} {_WEATHER_PHRASE[truth.weather]}"
    col = truth.colour
    np_plain = f"{_article(name)} {name}"
    if truth.main_class in ("pedestrian", "cyclist"):  # the colour is their clothing
        np_col = f"{np_plain} in {col}"  # "a pedestrian in red"
    else:
        np_col = f"{_article(col)} {col} {name}"  # "a red car", "an orange traffic cone"
    caps = [
        f"{np_col} {pos} {cond}",
        f"{np_col} on the road ahead {cond}",
        f"{np_plain} ahead {pos}",
        f"there is {np_col} {pos} of the road",
    ]
    if truth.main_class == "traffic_light":
        caps.append(f"a traffic light showing {truth.light_state} {pos}")
    elif truth.main_class == "pedestrian":
        caps.append(f"a person in {col} walking {pos} {cond}")
    elif truth.main_class == "cyclist":
        caps.append(f"a person riding a bicycle {pos} {cond}")
    if truth.weather == "fog":
        caps.append(f"{np_col} on a foggy road {_TOD_PHRASE[truth.time_of_day]}")
    elif truth.weather == "rain":
        caps.append(f"{np_col} on a wet road in the rain")
    return tuple(caps)


# --------------------------------------------------------------------------- drawing


class _Painter:
    """Draws on an RGB canvas with a global light level and a size scale."""

    def __init__(self, img: np.ndarray, light: float, scale: float) -> None:
        self.img = img
        self.light = light
        self.t = max(1, int(round(scale)))  # base line thickness

    def c(self, rgb: tuple[int, int, int], lit: bool = False) -> tuple[int, int, int]:
        """Colour under the scene's light (emissive colours stay bright)."""
        if lit:
            return tuple(int(v) for v in rgb)
        k = self.light
        return tuple(int(min(255, v * k)) for v in rgb)

    def rect(self, x0, y0, x1, y1, rgb, lit=False):
        cv2.rectangle(self.img, (int(x0), int(y0)), (int(x1), int(y1)), self.c(rgb, lit), -1)

    def poly(self, pts, rgb, lit=False):
        cv2.fillPoly(self.img, [np.asarray(pts, np.int32).reshape(-1, 1, 2)], self.c(rgb, lit))

    def circle(self, x, y, r, rgb, lit=False, thick=-1):
        cv2.circle(self.img, (int(x), int(y)), max(1, int(r)), self.c(rgb, lit), thick,
                   cv2.LINE_AA)

    def line(self, x0, y0, x1, y1, rgb, thick, lit=False):
        cv2.line(self.img, (int(x0), int(y0)), (int(x1), int(y1)), self.c(rgb, lit),
                 max(1, int(thick)), cv2.LINE_AA)


def _wheel(p: _Painter, x, y, r):
    p.circle(x, y, r, (20, 20, 22))
    p.circle(x, y, r * 0.45, (150, 150, 155))


def _draw_car(p, x0, y0, w, h, colour, rng, night):
    body = COLOURS[colour]
    r = 0.2 * h
    yb = y0 + h - r  # wheel centre line
    flip = rng.random() < 0.5
    # lower body
    p.rect(x0, y0 + 0.42 * h, x0 + w, yb + 0.2 * r, body)
    # cabin (trapezoid) with windows
    cab = [(x0 + 0.22 * w, y0 + 0.42 * h), (x0 + 0.32 * w, y0), (x0 + 0.68 * w, y0),
           (x0 + 0.8 * w, y0 + 0.42 * h)]
    p.poly(cab, body)
    win = [(x0 + 0.27 * w, y0 + 0.38 * h), (x0 + 0.35 * w, y0 + 0.08 * h),
           (x0 + 0.49 * w, y0 + 0.08 * h), (x0 + 0.49 * w, y0 + 0.38 * h)]
    p.poly(win, (150, 195, 225))
    win2 = [(x0 + 0.52 * w, y0 + 0.38 * h), (x0 + 0.52 * w, y0 + 0.08 * h),
            (x0 + 0.65 * w, y0 + 0.08 * h), (x0 + 0.74 * w, y0 + 0.38 * h)]
    p.poly(win2, (150, 195, 225))
    # lights: head at the front, tail at the back
    fx, bx = (x0 + w - 0.05 * w, x0) if not flip else (x0, x0 + w - 0.05 * w)
    p.rect(fx, y0 + 0.5 * h, fx + 0.05 * w, y0 + 0.6 * h, (255, 240, 170), lit=night)
    p.rect(bx, y0 + 0.5 * h, bx + 0.05 * w, y0 + 0.6 * h, (230, 20, 20), lit=night)
    _wheel(p, x0 + 0.22 * w, yb, r)
    _wheel(p, x0 + 0.78 * w, yb, r)


def _draw_truck(p, x0, y0, w, h, colour, rng, night):
    body = COLOURS[colour]
    cargo = COLOURS["white" if colour != "white" else "silver"] if rng.random() < 0.5 else body
    r = 0.14 * h
    yb = y0 + h - r
    cab_w = 0.24 * w
    flip = rng.random() < 0.5
    if not flip:
        cx0, bx0 = x0 + w - cab_w, x0
    else:
        cx0, bx0 = x0, x0 + cab_w + 0.02 * w
    box_w = w - cab_w - 0.02 * w
    # cargo box: tall, full height minus wheels
    p.rect(bx0, y0, bx0 + box_w, yb - 0.3 * r, cargo)
    p.line(bx0, y0, bx0 + box_w, y0, (60, 60, 60), p.t)
    # chassis
    p.rect(x0, yb - 0.4 * r, x0 + w, yb + 0.1 * r, (50, 50, 55))
    # cab: lower than the box, with a window near the top on the front side
    p.rect(cx0, y0 + 0.3 * h, cx0 + cab_w, yb, body)
    wx0 = cx0 + (0.45 * cab_w if not flip else 0.1 * cab_w)
    p.rect(wx0, y0 + 0.37 * h, wx0 + 0.45 * cab_w, y0 + 0.55 * h, (150, 195, 225))
    fx = cx0 + cab_w - 0.06 * cab_w if not flip else cx0
    p.rect(fx, y0 + 0.72 * h, fx + 0.06 * cab_w, y0 + 0.8 * h, (255, 240, 170), lit=night)
    for fx_ in (0.12, 0.3, 0.85) if not flip else (0.15, 0.7, 0.88):
        _wheel(p, x0 + fx_ * w, yb, r)


def _draw_bus(p, x0, y0, w, h, colour, rng, night):
    body = COLOURS[colour]
    r = 0.15 * h
    yb = y0 + h - r
    p.rect(x0, y0, x0 + w, yb + 0.3 * r, body)
    # a row of windows
    n = 6 + int(rng.integers(0, 3))
    gap = 0.015 * w
    ww = (w - gap * (n + 1)) / n
    glass = (150, 195, 225) if not night else (255, 230, 150)
    for i in range(n):
        wx = x0 + gap + i * (ww + gap)
        p.rect(wx, y0 + 0.12 * h, wx + ww, y0 + 0.45 * h, glass, lit=night)
    # stripe and door
    p.rect(x0, y0 + 0.55 * h, x0 + w, y0 + 0.6 * h, (40, 40, 45))
    dx = x0 + (0.08 * w if rng.random() < 0.5 else 0.86 * w)
    p.rect(dx, y0 + 0.12 * h, dx + 0.06 * w, yb - 0.2 * r, (70, 90, 100))
    _wheel(p, x0 + 0.17 * w, yb, r)
    _wheel(p, x0 + 0.83 * w, yb, r)


_SKIN = ((240, 200, 170), (200, 150, 110), (140, 95, 60), (90, 60, 40))


def _draw_person(p, cx, y_top, h, colour, rng, legs_spread=True):
    """A figure of height h (head top at y_top) centred on cx; returns (hip x, hip y)."""
    cloth = COLOURS[colour]
    skin = _SKIN[int(rng.integers(0, len(_SKIN)))]
    trousers = (40, 45, 70) if colour != "black" else (90, 90, 95)
    hr = 0.09 * h
    lw = max(2, int(0.09 * h))
    hip_y = y_top + 0.56 * h
    # legs
    if legs_spread:
        stride = 0.13 * h * (0.5 + rng.random())
        p.line(cx, hip_y, cx - stride, y_top + h, trousers, lw)
        p.line(cx, hip_y, cx + stride, y_top + h, trousers, lw)
    # torso
    p.rect(cx - 0.11 * h, y_top + 0.2 * h, cx + 0.11 * h, hip_y, cloth)
    # arms
    sw = 0.08 * h * (0.5 + rng.random())
    p.line(cx - 0.1 * h, y_top + 0.23 * h, cx - 0.1 * h - sw, y_top + 0.5 * h, cloth,
           0.7 * lw)
    p.line(cx + 0.1 * h, y_top + 0.23 * h, cx + 0.1 * h + sw, y_top + 0.5 * h, cloth,
           0.7 * lw)
    # head
    p.circle(cx, y_top + hr, hr, skin)
    return cx, hip_y


def _draw_pedestrian(p, x0, y0, w, h, colour, rng, night):
    _draw_person(p, x0 + w / 2, y0, h, colour, rng)


def _draw_cyclist(p, x0, y0, w, h, colour, rng, night):
    r = 0.22 * h
    yb = y0 + h - r
    xa, xb = x0 + r, x0 + w - r
    frame = (25, 25, 28) if rng.random() < 0.5 else COLOURS[("red", "blue", "silver")[
        int(rng.integers(0, 3))]]
    lw = max(2, int(0.03 * h))
    for xw in (xa, xb):
        p.circle(xw, yb, r, (20, 20, 22), thick=max(2, int(0.045 * h)))
        p.circle(xw, yb, 0.12 * r, (120, 120, 120))
    seat = (x0 + 0.4 * w, yb - 0.95 * r)
    bar = (xb - 0.15 * r, yb - 1.25 * r)
    crank = (x0 + 0.48 * w, yb)
    head = (xb - 0.4 * r, yb - 0.9 * r)  # top of the fork
    for a, b in ((seat, crank), (crank, (xa, yb)), (seat, (xa, yb)), (crank, head),
                 (head, seat), (bar, (xb, yb))):
        p.line(a[0], a[1], b[0], b[1], frame, lw)
    # rider: sits on the seat, leaning forward
    cloth = COLOURS[colour]
    skin = _SKIN[int(rng.integers(0, len(_SKIN)))]
    hip = (seat[0], seat[1] - 0.03 * h)
    shoulder = (x0 + 0.62 * w, y0 + 0.22 * h)
    tw = max(3, int(0.11 * h))
    p.line(hip[0], hip[1], shoulder[0], shoulder[1], cloth, tw)
    p.line(shoulder[0], shoulder[1], bar[0], bar[1], cloth, 0.6 * tw)
    legc = (40, 45, 70)
    knee = (x0 + 0.56 * w, yb - 0.75 * r)
    p.line(hip[0], hip[1], knee[0], knee[1], legc, 0.7 * tw)
    p.line(knee[0], knee[1], crank[0], crank[1], legc, 0.6 * tw)
    hr = 0.085 * h
    p.circle(shoulder[0] + 0.4 * hr, shoulder[1] - 1.3 * hr, hr, skin)
    if rng.random() < 0.6:  # helmet
        p.circle(shoulder[0] + 0.4 * hr, shoulder[1] - 1.6 * hr, 0.8 * hr, cloth)


def _draw_traffic_light(p, x0, y0, w, h, state, rng, night):
    cx = x0 + w / 2
    pole = (60, 62, 66)
    p.rect(cx - 0.035 * h, y0 + 0.5 * h, cx + 0.035 * h, y0 + h, pole)
    bw = 0.3 * h
    housing = (28, 28, 30) if rng.random() < 0.7 else (70, 70, 40)
    p.rect(cx - bw / 2, y0, cx + bw / 2, y0 + 0.56 * h, housing)
    lr = 0.075 * h
    for i, s in enumerate(LIGHT_STATES):
        ly = y0 + 0.1 * h + i * 0.18 * h
        if s == state:
            glow = tuple(int(v * 0.45) for v in _LAMP_RGB[s])
            p.circle(cx, ly, lr * 1.35, glow, lit=True)
            p.circle(cx, ly, lr, _LAMP_RGB[s], lit=True)
            p.circle(cx, ly, lr * 0.45, (255, 255, 230), lit=True)
        else:
            p.circle(cx, ly, lr, tuple(int(v * 0.18) + 20 for v in _LAMP_RGB[s]))


def _draw_stop_sign(p, x0, y0, w, h, colour, rng, night):
    cx = x0 + w / 2
    R = 0.31 * h
    cy = y0 + R
    p.rect(cx - 0.025 * h, cy, cx + 0.025 * h, y0 + h, (150, 150, 155))
    ang = np.pi / 8 + np.arange(8) * np.pi / 4
    outer = np.stack([cx + R * np.cos(ang), cy + R * np.sin(ang)], 1)
    inner = np.stack([cx + 0.88 * R * np.cos(ang), cy + 0.88 * R * np.sin(ang)], 1)
    p.poly(outer, (240, 240, 240))
    p.poly(inner, COLOURS["red"])
    th = max(1, int(R / 10))
    (tw1, _), _ = cv2.getTextSize("STOP", cv2.FONT_HERSHEY_SIMPLEX, 1.0, th)
    fs = 1.3 * R / max(tw1, 1)  # text spans about 1.3 R of the 2 R octagon
    (tw, tht), _ = cv2.getTextSize("STOP", cv2.FONT_HERSHEY_SIMPLEX, fs, th)
    cv2.putText(p.img, "STOP", (int(cx - tw / 2), int(cy + tht / 2)), cv2.FONT_HERSHEY_SIMPLEX,
                fs, p.c((245, 245, 245)), th, cv2.LINE_AA)


def _draw_traffic_cone(p, x0, y0, w, h, colour, rng, night):
    cx = x0 + w / 2
    body = COLOURS["orange"]
    p.rect(x0, y0 + 0.9 * h, x0 + w, y0 + h, (230, 95, 10))
    half = 0.36 * w
    p.poly([(cx - 0.06 * w, y0), (cx + 0.06 * w, y0), (cx + half, y0 + 0.9 * h),
            (cx - half, y0 + 0.9 * h)], body)
    for a, b in ((0.3, 0.42), (0.6, 0.72)):  # reflective stripes
        ha, hb = a * 0.9 * h, b * 0.9 * h
        wa = 0.06 * w + (half - 0.06 * w) * a
        wb = 0.06 * w + (half - 0.06 * w) * b
        p.poly([(cx - wa, y0 + ha), (cx + wa, y0 + ha), (cx + wb, y0 + hb),
                (cx - wb, y0 + hb)], (245, 245, 245), lit=night)


_DRAW = {
    "car": _draw_car,
    "truck": _draw_truck,
    "bus": _draw_bus,
    "pedestrian": _draw_pedestrian,
    "cyclist": _draw_cyclist,
    "traffic_light": _draw_traffic_light,
    "stop_sign": _draw_stop_sign,
    "traffic_cone": _draw_traffic_cone,
}
_VEHICLES = ("car", "truck", "bus")


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(0, len(items)))]


def _background(rng, W, H, tod, scale):
    """Sky, distant buildings, road with lanes. Returns (image, horizon y, light level)."""
    hz = int(H * rng.uniform(0.36, 0.48))
    if tod == "day":
        top, bot = np.array([70, 130, 215]), np.array([180, 210, 240])
        light, road = 1.0, 100
    elif tod == "dusk":
        top, bot = np.array([70, 50, 110]), np.array([250, 150, 80])
        light, road = 0.78, 80
    else:
        top, bot = np.array([5, 8, 25]), np.array([25, 30, 55])
        light, road = 0.5, 45
    jitter = rng.uniform(-15, 15, 3)
    t = np.linspace(0.0, 1.0, hz, dtype=np.float32)[:, None]
    sky = np.clip(top + jitter + t * (bot - top), 0, 255).astype(np.uint8)
    img = np.empty((H, W, 3), np.uint8)
    # (cv2 fills are several times faster than numpy broadcasting here)
    img[:hz] = cv2.resize(sky[:, None, :], (W, hz), interpolation=cv2.INTER_NEAREST)
    p = _Painter(img, light, scale)
    # ground beside the road (grass or pavement) and the road itself
    p.rect(0, hz, W, H, _pick(rng, ((70, 110, 50), (120, 115, 100), (95, 120, 60))))
    # distant buildings / trees on the horizon
    x = -int(rng.integers(0, 40))
    while x < W:
        bw = int(W * rng.uniform(0.05, 0.14))
        bh = int(hz * rng.uniform(0.08, 0.4))
        g = int(rng.integers(60, 140))
        p.rect(x, hz - bh, x + bw, hz, (g, g - 5, g + 5))
        if tod == "night" and rng.random() < 0.7:  # lit windows
            for _ in range(int(rng.integers(1, 5))):
                wx = x + rng.uniform(0.1, 0.8) * bw
                wy = hz - rng.uniform(0.2, 0.9) * bh
                p.rect(wx, wy, wx + 0.1 * bw, wy + 0.06 * bh + 1, (250, 220, 140), lit=True)
        x += bw + int(rng.integers(0, int(W * 0.05) + 1))
    vx = W * rng.uniform(0.4, 0.6)  # vanishing point
    road_w = W * rng.uniform(1.1, 1.6)
    rg = road + int(rng.integers(-10, 10))
    p.poly([(vx - 0.03 * W, hz), (vx + 0.03 * W, hz), (W / 2 + road_w / 2, H),
            (W / 2 - road_w / 2, H)], (rg, rg, rg + 3), lit=True)
    # lane markings: dashed lines converging on the vanishing point
    lane_col = (235, 235, 235) if rng.random() < 0.8 else (240, 200, 40)
    lane_col = tuple(int(v * (0.6 + 0.4 * light)) for v in lane_col)
    n_lanes = int(rng.integers(2, 4))
    lt = max(1, int(3 * scale))
    for k in range(1, n_lanes):
        bx = W / 2 - road_w / 2 + road_w * k / n_lanes
        for s in range(0, 10, 2):
            a, b = (s / 10) ** 1.6, ((s + 1) / 10) ** 1.6
            cv2.line(img, (int(vx + (bx - vx) * a), int(hz + (H - hz) * a)),
                     (int(vx + (bx - vx) * b), int(hz + (H - hz) * b)), lane_col,
                     max(1, int(lt * (0.3 + b))))
    # road edges
    for sgn in (-1, 1):
        cv2.line(img, (int(vx + sgn * 0.03 * W), hz), (int(W / 2 + sgn * road_w / 2), H),
                 lane_col, lt)
    return img, hz, light


def _weather(rng, img, weather, tod, scale):
    H, W = img.shape[:2]
    if weather == "rain":
        n = int(rng.integers(80, 200) * (W * H) / (640 * 480) ** 1)
        n = min(n, 1500)
        xs = rng.integers(0, W, n)
        ys = rng.integers(0, H, n)
        ln = rng.uniform(8, 22, n) * scale
        dx = ln * rng.uniform(0.1, 0.3)
        pts = np.stack([np.stack([xs, ys], 1), np.stack([xs + dx, ys + ln], 1)], 1)
        col = (200, 205, 215) if tod != "night" else (110, 115, 130)
        cv2.polylines(img, pts.astype(np.int32), False, col, max(1, int(scale)))
        img = cv2.convertScaleAbs(img, alpha=0.85, beta=18 if tod != "night" else 4.5)
    elif weather == "fog":
        fog_lvl = 215 if tod == "day" else (170 if tod == "dusk" else 70)
        small = (rng.uniform(0.55, 1.0, (6, 8, 1)) * fog_lvl).astype(np.uint8)
        fog = cv2.resize(np.repeat(small, 3, axis=2), (W, H), interpolation=cv2.INTER_LINEAR)
        alpha = float(rng.uniform(0.25, 0.45))
        img = cv2.addWeighted(img, 1.0 - alpha, fog, alpha, 0)
    return img


def _place(rng, cls, W, H, hz, size_frac):
    """Box (x0, y0, w, h) for an object whose largest side is size_frac of the frame."""
    asp = _ASPECT[cls]
    if asp >= 1.0:
        w = size_frac * W
        h = w / asp
    else:
        h = size_frac * H
        w = h * asp
    return w, h


def render_scene(rng: np.random.Generator, width: int = 640, height: int = 480, *,
                 main_class: str | None = None) -> tuple[np.ndarray, SceneTruth]:
    """Render one driving scene.

    rng: the only source of randomness (same state -> identical pixels and truth).
    main_class: force the main object's class (default: uniform over CLASSES).
    Returns (rgb, truth): rgb is height x width x 3 uint8.
    """
    if width < 32 or height < 32:
        raise GmSkipError(f"scene size {width}x{height} is too small; use at least 32x32")
    W, H = int(width), int(height)
    scale = H / 480.0
    if main_class is None:
        cls = _pick(rng, CLASSES)
    elif main_class in CLASSES:
        cls = main_class
    else:
        raise GmSkipError(f"unknown scene class {main_class!r}; choose one of {', '.join(CLASSES)}")
    tod = _pick(rng, TIMES_OF_DAY)
    weather = _pick(rng, WEATHERS)
    position = _pick(rng, POSITIONS)
    light_state = _pick(rng, LIGHT_STATES) if cls == "traffic_light" else None
    colour = light_state if cls == "traffic_light" else _pick(rng, _CLASS_COLOURS[cls])

    img, hz, light = _background(rng, W, H, tod, scale)
    p = _Painter(img, light, scale)
    night = tod == "night"

    # main object size: vehicles by width, upright objects by height
    if cls in _VEHICLES:
        frac = rng.uniform(0.38, 0.6)
    elif cls == "cyclist":
        frac = rng.uniform(0.3, 0.45)
    else:
        frac = rng.uniform(0.4, 0.68)
    w, h = _place(rng, cls, W, H, hz, frac)
    cx = W * ({"left": 0.25, "centre": 0.5, "right": 0.75}[position] + rng.uniform(-0.04, 0.04))
    x0 = float(np.clip(cx - w / 2, 0.01 * W, 0.99 * W - w))
    by = H * rng.uniform(0.8, 0.97)
    y0 = max(0.02 * H, by - h)
    h = min(h, by - y0)

    # distractors: smaller, farther objects of other classes, in other thirds
    distractors: list[str] = []
    if rng.random() < 0.35:
        others = [c for c in CLASSES if c != cls]
        free = [q for q in POSITIONS if q != position]
        for _ in range(int(rng.integers(1, 3))):
            if not free:
                break
            dq = free.pop(int(rng.integers(0, len(free))))
            dc = _pick(rng, others)
            dfrac = frac * rng.uniform(0.22, 0.38)
            dw, dh = _place(rng, dc, W, H, hz, dfrac)
            dcx = W * {"left": 0.17, "centre": 0.5, "right": 0.83}[dq]
            dby = hz + (H - hz) * rng.uniform(0.12, 0.35)
            dcol = _pick(rng, LIGHT_STATES) if dc == "traffic_light" else _pick(
                rng, _CLASS_COLOURS[dc])
            _DRAW[dc](p, dcx - dw / 2, dby - dh, dw, dh, dcol, rng, night)
            distractors.append(dc)

    # shadow under the main object, then the object
    cv2.ellipse(img, (int(x0 + w / 2), int(y0 + h)), (int(w * 0.55), max(2, int(0.04 * h))),
                0, 0, 360, (20, 20, 20), -1)
    _DRAW[cls](p, x0, y0, w, h, colour, rng, night)

    img = _weather(rng, img, weather, tod, scale)
    blur = bool(rng.random() < 0.2)
    if blur:
        k = 2 * int(max(1, round(1.5 * scale))) + 1
        img = cv2.GaussianBlur(img, (k, k), 0)

    bbox = (int(x0), int(y0), int(min(W, x0 + w)), int(min(H, y0 + h)))
    # the label follows the drawn box (clamping at the border may move it)
    position = POSITIONS[min(2, int(3 * (bbox[0] + bbox[2]) / 2 / W))]
    truth = SceneTruth(
        main_class=cls,
        light_state=light_state,
        position=position,
        colour=colour,
        time_of_day=tod,
        weather=weather,
        blur=blur,
        bbox=bbox,
        distractors=tuple(distractors),
    )
    truth.captions = make_captions(truth)
    return img, truth


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that renders scene ``index`` of ``generate_scenes(..., seed)``."""
    if seed < 0 or index < 0:
        raise GmSkipError(f"seed and index must be >= 0 (got seed={seed}, index={index})")
    return np.random.default_rng([int(seed), int(index)])


def generate_scenes(n: int, seed: int, width: int = 640, height: int = 480, *,
                    start: int = 0) -> Iterator[tuple[np.ndarray, SceneTruth]]:
    """Yield ``n`` scenes (rgb, truth), scene i rendered from ``default_rng([seed, i])``.

    ``start`` skips to scene index ``start`` (scenes start..start+n-1), so any subset of
    a data set can be regenerated without rendering the others.
    """
    if n < 0:
        raise GmSkipError(f"number of scenes must be >= 0 (got {n})")
    for i in range(start, start + n):
        yield render_scene(scene_rng(seed, i), width, height)


def sample_from_truth(image: np.ndarray, truth: SceneTruth, task: str,
                      stamp_ns: int | None = None, id: str = "") -> Sample:
    """A :class:`Sample` for ``task`` ("classify" or "caption") from a rendered frame.

    classify: answers = the class's synonyms, display name first ("traffic light", ...).
    caption:  answers = truth.captions (canonical first).
    meta holds the full ground truth (SceneTruth.to_dict(), plus "class" = main_class).
    """
    if task not in PROMPTS:
        raise GmSkipError(f"unknown task {task!r}; use one of {', '.join(PROMPTS)}")
    if task == "classify":
        answers = CLASS_SYNONYMS[truth.main_class]
    else:
        answers = truth.captions or make_captions(truth)
    meta = {"class": truth.main_class, **truth.to_dict()}
    return Sample(image=image, prompt=PROMPTS[task], answers=tuple(answers), stamp_ns=stamp_ns,
                  id=id, meta=meta)
