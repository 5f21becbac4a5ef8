"""The SynthTalk face renderer: procedural identities drawn with anti-aliased signed-distance shapes.

Speed comes from doing almost everything once per identity. At construction the renderer draws, in face units
(the head centre at 0, about 0.45 to the cheek, y down):

- `base`: background and shoulders, never moved;
- `below` / `above`: the head (hair, ears, skin, features, accessories) as premultiplied RGBA, split at the
  layer of the eyes and the mouth; `full` = `above` over `below`;
- `shade`: a Lambert term of the head's ellipsoid under the identity's light, already applied to the layers;
- `zj`: per-pixel depth (for yaw / pitch parallax) and jaw weight (how much a pixel follows the chin).

Per frame only two small crops are redrawn (the eyes with their lids and the brows above them, the mouth), with
the expression controls of rest/data/synth/emotion.py (brows, lids, mouth corners, jaw), and the head layer is
warped onto the base by one inverse map: roll about the neck, shift, parallax `depth * sin(angle)` for yaw and pitch,
and a downward shift of the chin region proportional to the mouth opening. One bilinear gather, one composite.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HAIR_STYLES = ("bald", "buzz", "short", "side", "fringe", "long", "bob", "curly", "bun", "ponytail")
BACKGROUNDS = ("gradient", "radial", "stripes", "dots", "checker", "bokeh", "room")
HATS = ("none", "beanie", "cap")

# How far the expression controls (render's smile .. jaw, each at 1) move the features, in face units unless noted.
BROW_RAISE = 0.06  # brow_inner / brow_outer: the inner / outer end of a brow up (the middle follows by half)
BROW_DROP = 0.01  # brow_down: the whole brow down ...
BROW_KNIT = 0.015  # ... its inner end further down (the brow tilts down towards the nose) ...
BROW_PULL = 0.02  # ... and towards the nose
LID_WIDE = 0.5  # lid > 0: the upper lid's rest line up, in eye_ry
LID_WIDE_LOWER = 0.25  # lid > 0: the lower lid down, in eye_ry
LID_SQUINT = 0.5  # lid < 0: the lower lid up, as a fraction of its rest height below the eye's centre
LID_SQUINT_UPPER = 0.2  # lid < 0: the upper lid down, as a fraction of its rest height
SMILE_LIFT = 0.4  # smile: the lip corners up (down for < 0), in mouth_w, bending the lips by u^2
SMILE_WIDEN = 0.08  # smile > 0: the mouth wider by this fraction


#################################################################################
#                               Shape primitives                                #
#################################################################################


def coverage(dist: np.ndarray, px: float, soft: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance (negative inside), `px` = one pixel."""
    return np.clip(0.5 - dist / (px * soft), 0.0, 1.0)


def ellipse_dist(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse: f / |grad f| with f = (x/rx)^2 + (y/ry)^2 - 1."""
    dx, dy = (x - cx) / rx, (y - cy) / ry
    f = dx * dx + dy * dy - 1.0
    grad = 2.0 * np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2) + 1e-6
    return f / grad


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: the union of two distance fields with a fillet of size `k`."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def polyline_dist(x: np.ndarray, y: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unsigned distance to a polyline (K, 2) and the arc-length parameter (0..1) of the nearest point."""
    best = np.full(np.broadcast_shapes(x.shape, y.shape), np.inf)
    param = np.zeros_like(best)
    lengths = np.linalg.norm(np.diff(points, axis=0), axis=1)
    total = lengths.sum()
    offset = 0.0
    for (ax, ay), (bx, by), length in zip(points[:-1], points[1:], lengths, strict=True):
        ex, ey = bx - ax, by - ay
        t = np.clip(((x - ax) * ex + (y - ay) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d = np.hypot(x - ax - t * ex, y - ay - t * ey)
        closer = d < best
        best = np.where(closer, d, best)
        param = np.where(closer, (offset + t * length) / total, param)
        offset += length
    return best, param


def quad_curve(p0, p1, p2, n: int = 9) -> np.ndarray:
    """Points on the quadratic Bezier curve p0 -> p2 with control point p1: (n, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


class Layer:
    """A premultiplied RGBA image being painted, front to back order of calls = back to front of the picture."""

    def __init__(self, h: int, w: int):
        self.rgb = np.zeros((h, w, 3), np.float64)
        self.a = np.zeros((h, w), np.float64)

    def paint(self, color, cov: np.ndarray) -> None:
        """Paint `color` ((3,) or (h, w, 3), straight RGB) with coverage `cov` (h, w) over what is there."""
        c = cov[..., None]
        self.rgb = self.rgb * (1.0 - c) + np.asarray(color) * c
        self.a = self.a * (1.0 - cov) + cov


def _mix(a, b, t: float) -> np.ndarray:
    return np.asarray(a, dtype=np.float64) * (1 - t) + np.asarray(b, dtype=np.float64) * t


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV (each 0..1) -> RGB."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


#################################################################################
#                                   Identity                                    #
#################################################################################


@dataclass(frozen=True)
class FaceParams:
    """Everything that makes one SynthTalk identity; lengths in face units (about 0.45 from the nose to a cheek)."""

    # framing: face units -> image coordinates in [-1, 1] (x right, y down)
    scale: float
    center: tuple[float, float]
    # head shape: cranium ellipse + jaw ellipse, blended
    head_w: float
    head_h: float
    jaw_w: float
    jaw_h: float
    jaw_y: float
    skin: tuple[float, float, float]
    blush: float  # cheek redness, 0..1
    ear_size: float
    # eyes and brows
    eye_y: float
    eye_dx: float  # half the distance between the eye centres
    eye_rx: float
    eye_ry: float
    eye_tilt: float  # outer corners up (> 0) or down
    iris: tuple[float, float, float]
    brow_dy: float  # brow height above the eye centre
    brow_thick: float
    brow_arch: float
    brow_tilt: float
    brow_color: tuple[float, float, float]
    # nose and mouth
    nose_y: float  # nostril line
    nose_w: float
    mouth_y: float
    mouth_w: float  # half width at rest
    lip_upper: float  # thickness
    lip_lower: float
    lip_color: tuple[float, float, float]
    open_max: float  # height of the opening at mouth_open = 1
    # hair and accessories
    hair_style: str
    hair_color: tuple[float, float, float]
    hairline: float  # forehead top (more negative = higher)
    hair_volume: float
    hair_length: float  # y where long styles end
    hair_part: float  # -1..1, where the parting / sweep goes
    beard: float  # 0 = none, else coverage (stubble .. full)
    moustache: bool
    glasses: str  # "none", "round", "rect"
    glasses_color: tuple[float, float, float]
    earrings: bool
    earring_color: tuple[float, float, float]
    hat: str
    hat_color: tuple[float, float, float]
    # clothes, background, light
    clothes: tuple[float, float, float]
    neckline: str  # "round", "v", "collar"
    background: str
    bg_colors: tuple[tuple[float, float, float], ...]
    bg_seed: int
    light_azimuth: float  # degrees, > 0 = light from the image's right
    light_elevation: float  # degrees above the horizon
    ambient: float
    # motion style
    sway: float  # head motion amplitude factor
    blink_interval: tuple[float, float]  # seconds between blinks (min, max)
    articulation: float  # mouth opening factor
    extra: dict = field(default_factory=dict, compare=False)


_SKIN_TONES = np.array(
    [  # light to dark, a rough Fitzpatrick ramp
        (0.98, 0.87, 0.78),
        (0.95, 0.80, 0.69),
        (0.89, 0.72, 0.58),
        (0.80, 0.60, 0.45),
        (0.66, 0.47, 0.33),
        (0.50, 0.34, 0.23),
        (0.36, 0.24, 0.17),
    ]
)
_HAIR_COLORS = np.array(
    [
        (0.06, 0.05, 0.05),  # black
        (0.16, 0.10, 0.07),  # dark brown
        (0.32, 0.20, 0.12),  # brown
        (0.52, 0.32, 0.18),  # light brown
        (0.50, 0.20, 0.09),  # auburn
        (0.78, 0.62, 0.38),  # blond
        (0.90, 0.80, 0.58),  # platinum
        (0.60, 0.58, 0.56),  # grey
        (0.88, 0.87, 0.85),  # white
    ]
)
_HAIR_WEIGHTS = np.array([0.22, 0.22, 0.16, 0.09, 0.07, 0.09, 0.04, 0.07, 0.04])
_IRIS_COLORS = np.array(
    [
        (0.25, 0.14, 0.07),
        (0.36, 0.22, 0.10),
        (0.45, 0.36, 0.16),
        (0.26, 0.42, 0.24),
        (0.25, 0.45, 0.65),
        (0.45, 0.5, 0.52),
    ]
)


def sample_face(rng: np.random.Generator) -> FaceParams:
    """Draw one identity."""
    u = rng.uniform
    tone = u(0, len(_SKIN_TONES) - 1)
    i = int(tone)
    skin = _mix(_SKIN_TONES[i], _SKIN_TONES[min(i + 1, len(_SKIN_TONES) - 1)], tone - i)
    skin = np.clip(skin * u(0.95, 1.05) + u(-0.02, 0.02, 3), 0, 1)
    if rng.random() < 0.07:  # dyed hair
        hair = _hsv(u(0, 1), u(0.4, 0.8), u(0.35, 0.8))
    else:
        hair = _HAIR_COLORS[rng.choice(len(_HAIR_COLORS), p=_HAIR_WEIGHTS)] * u(0.85, 1.15)
    hair = np.clip(hair, 0, 1)
    style = HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=[0.05, 0.07, 0.15, 0.12, 0.11, 0.17, 0.12, 0.08, 0.07, 0.06])]
    long_hair = style in ("long", "bob", "curly", "ponytail")
    lip_base = _mix(skin, (0.72, 0.30, 0.32), u(0.35, 0.6)) * u(0.8, 0.95)
    if rng.random() < 0.15:  # lipstick
        lip_base = _mix(lip_base, [(0.75, 0.08, 0.15), (0.80, 0.35, 0.45), (0.45, 0.12, 0.25)][rng.integers(3)], 0.7)
    bg_kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    bg_colors = tuple(tuple(_hsv(u(0, 1), u(0.05, 0.6), u(0.25, 0.95)).tolist()) for _ in range(3))
    beard = 0.0
    if rng.random() < 0.18:
        beard = float(u(0.3, 1.0))
    eye_ry = u(0.036, 0.05)
    glasses = "none" if rng.random() > 0.22 else ("round", "rect")[rng.integers(2)]
    hat = HATS[rng.choice(3, p=[0.86, 0.08, 0.06])]
    return FaceParams(
        scale=u(1.08, 1.3),
        center=(u(-0.08, 0.08), u(-0.1, 0.0)),
        head_w=u(0.39, 0.48),
        head_h=u(0.50, 0.58),
        jaw_w=u(0.24, 0.38),
        jaw_h=u(0.29, 0.36),
        jaw_y=u(0.11, 0.17),
        skin=tuple(skin.tolist()),
        blush=u(0, 1),
        ear_size=u(0.85, 1.15),
        eye_y=u(-0.02, 0.03),
        eye_dx=u(0.15, 0.185),
        eye_rx=u(0.068, 0.085),
        eye_ry=eye_ry,
        eye_tilt=u(-0.15, 0.25),
        iris=tuple((_IRIS_COLORS[rng.integers(len(_IRIS_COLORS))] * u(0.8, 1.2)).clip(0, 1).tolist()),
        brow_dy=u(0.075, 0.1),
        brow_thick=u(0.014, 0.03),
        brow_arch=u(0.005, 0.03),
        brow_tilt=u(-0.02, 0.025),
        brow_color=tuple(np.clip(_mix(hair, (0.1, 0.07, 0.05), u(0.2, 0.6)), 0, 1).tolist()),
        nose_y=u(0.16, 0.21),
        nose_w=u(0.045, 0.07),
        mouth_y=u(0.28, 0.32),
        mouth_w=u(0.105, 0.14),
        lip_upper=u(0.014, 0.026),
        lip_lower=u(0.02, 0.034),
        lip_color=tuple(np.clip(lip_base, 0, 1).tolist()),
        open_max=u(0.10, 0.14),
        hair_style=style,
        hair_color=tuple(hair.tolist()),
        hairline=u(-0.38, -0.28),
        hair_volume=u(0.02, 0.08),
        hair_length=u(0.45, 1.1) if style == "long" else u(0.2, 0.4),
        hair_part=u(-1, 1),
        beard=beard,
        moustache=bool(beard > 0.5 or rng.random() < 0.05),
        glasses=glasses,
        glasses_color=tuple(_hsv(u(0, 1), u(0, 0.7), u(0.05, 0.5)).tolist()),
        earrings=bool(rng.random() < (0.35 if long_hair else 0.1)),
        earring_color=tuple([(0.85, 0.7, 0.3), (0.8, 0.8, 0.82), (0.9, 0.9, 0.95)][rng.integers(3)]),
        hat=hat,
        hat_color=tuple(_hsv(u(0, 1), u(0.2, 0.8), u(0.2, 0.85)).tolist()),
        clothes=tuple(_hsv(u(0, 1), u(0, 0.8), u(0.1, 0.9)).tolist()),
        neckline=("round", "v", "collar")[rng.integers(3)],
        background=bg_kind,
        bg_colors=bg_colors,
        bg_seed=int(rng.integers(2**31)),
        light_azimuth=u(-60, 60),
        light_elevation=u(-5, 45),
        ambient=u(0.45, 0.7),
        sway=u(0.5, 1.5),
        blink_interval=(u(1.5, 2.5), u(4.0, 6.5)),
        articulation=u(0.8, 1.15),
    )


#################################################################################
#                                   Renderer                                    #
#################################################################################


@dataclass
class _Crop:
    """A rectangle of the head layer that is redrawn every frame."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


class FaceRenderer:
    """Renders one identity at one resolution; `render` draws a frame from pose, mouth, blink, gaze and expression.

    Args:
        face: the identity.
        resolution: R, frames are R x R.
    """

    def __init__(self, face: FaceParams, resolution: int):
        self.face = face
        self.R = R = int(resolution)
        self.px_img = 2.0 / R  # one pixel in image units
        self.px = self.px_img / face.scale  # one pixel in face units
        centers = (np.arange(R) + 0.5) * self.px_img - 1.0  # (R,) pixel centres in image units
        self.xs = (centers - face.center[0]) / face.scale  # (R,) face units, per column
        self.ys = (centers - face.center[1]) / face.scale  # (R,) face units, per row
        self.X, self.Y = np.meshgrid(self.xs, self.ys)  # (R, R)
        self._light = self._light_vector()
        self.base = self._draw_base()  # (R, R, 3)
        below, above = self._draw_head()
        self._finish_layers(below, above)
        self._build_warp()

    # ------------------------------------------------------------------ static layers

    def _light_vector(self) -> np.ndarray:
        az, el = np.radians(self.face.light_azimuth), np.radians(self.face.light_elevation)
        return np.array([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)])

    def _draw_base(self) -> np.ndarray:
        """Background and shoulders (image units), never warped."""
        f, R = self.face, self.R
        rng = np.random.default_rng(f.bg_seed)
        c = (np.arange(R) + 0.5) * self.px_img - 1.0
        X, Y = np.meshgrid(c, c)
        c1, c2, c3 = (np.asarray(col) for col in f.bg_colors)
        angle = rng.uniform(0, np.pi)
        t = np.clip(0.5 + 0.5 * (np.cos(angle) * X + np.sin(angle) * Y) / 1.4, 0, 1)
        img = Layer(R, R)
        img.paint(c1 * (1 - t[..., None]) + c2 * t[..., None], np.ones((R, R)))
        px = self.px_img
        if f.background == "radial":
            r = np.hypot(X - rng.uniform(-0.5, 0.5), Y - rng.uniform(-0.5, 0.3))
            img.paint(c3, smoothstep(1.6, 0.0, r) * 0.8)
        elif f.background == "stripes":
            freq, ang = rng.uniform(3, 10), rng.uniform(0, np.pi)
            phase = (np.cos(ang) * X + np.sin(ang) * Y) * freq
            d = (np.abs((phase % 1.0) - 0.5) - 0.25) / freq
            img.paint(c3, coverage(d, px) * rng.uniform(0.25, 0.6))
        elif f.background == "dots":
            freq = rng.uniform(4, 9)
            gx, gy = (X * freq) % 1.0 - 0.5, (Y * freq + 0.5 * np.floor(X * freq) % 1.0) % 1.0 - 0.5
            d = (np.hypot(gx, gy) - rng.uniform(0.15, 0.3)) / freq
            img.paint(c3, coverage(d, px) * rng.uniform(0.3, 0.7))
        elif f.background == "checker":
            freq = rng.uniform(2, 6)
            on = (np.floor(X * freq) + np.floor(Y * freq)) % 2
            img.paint(c3, on * rng.uniform(0.15, 0.35))
        elif f.background == "bokeh":
            for _ in range(int(rng.integers(8, 20))):
                r = rng.uniform(0.08, 0.3)
                d = np.hypot(X - rng.uniform(-1.1, 1.1), Y - rng.uniform(-1.1, 1.1)) - r
                col = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.6), rng.uniform(0.6, 1.0))
                img.paint(col, coverage(d, px, soft=r / px * 0.5) * rng.uniform(0.15, 0.4))
        elif f.background == "room":
            floor_y = rng.uniform(0.2, 0.6)
            img.paint(c3 * 0.8, smoothstep(floor_y - 0.01, floor_y + 0.01, Y))
            wx, wy, ww, wh = (
                rng.uniform(-0.9, 0.4),
                rng.uniform(-0.9, -0.4),
                rng.uniform(0.3, 0.6),
                rng.uniform(0.3, 0.7),
            )
            frame = np.maximum(np.abs(X - wx - ww / 2) - ww / 2, np.abs(Y - wy - wh / 2) - wh / 2)
            img.paint(np.clip(c2 * 1.3 + 0.15, 0, 1), coverage(frame, px))
            img.paint(c1 * 0.6, coverage(np.abs(frame + 0.02) - 0.012, px))
        img.rgb *= (1.0 - 0.25 * smoothstep(0.6, 1.6, np.hypot(X, Y)))[..., None]  # vignette
        # Neck and shoulders, in face units so they line up with the head.
        Xf, Yf, pf = self.X, self.Y, self.px
        skin = np.asarray(f.skin)
        neck_w = f.jaw_w * 0.62
        neck = np.maximum(np.abs(Xf) - neck_w, -Yf)
        side = 0.75 + 0.25 * np.clip(0.5 - Xf / neck_w * 0.5 * np.sign(self._light[0] + 1e-9), 0, 1)
        neck_shade = (0.72 + 0.15 * smoothstep(0.4, 0.75, Yf)) * side
        neck_col = skin[None, None, :] * neck_shade[..., None]
        img.paint(neck_col, coverage(neck, pf))
        shoulder_y = f.jaw_y + f.jaw_h + 0.26
        body = ellipse_dist(Xf, Yf, 0.0, shoulder_y + 0.55, 1.05, 0.6)
        shirt_light = 0.85 + 0.15 * np.clip(Xf * self._light[0], -1, 1)
        img.paint(np.asarray(f.clothes)[None, None, :] * shirt_light[..., None], coverage(body, pf))
        if f.neckline == "round":
            img.paint(neck_col, coverage(ellipse_dist(Xf, Yf, 0.0, shoulder_y, neck_w * 1.25, 0.12), pf))
        elif f.neckline == "v":
            v = np.maximum(np.abs(Xf) * 1.3 + (Yf - shoulder_y - 0.2) * 0.7, shoulder_y - 0.1 - Yf)
            img.paint(neck_col, coverage(v, pf))
        else:  # shirt collar: two lighter flaps
            for s in (-1, 1):
                flap = polyline_dist(
                    Xf, Yf, np.array([[s * neck_w * 1.1, shoulder_y - 0.06], [0.0, shoulder_y + 0.14]])
                )[0]
                img.paint(np.clip(np.asarray(f.clothes) * 1.25 + 0.1, 0, 1), coverage(flap - 0.03, pf))
        return img.rgb.astype(np.float32)

    def _face_dist(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Signed distance of the head outline (cranium and jaw, blended)."""
        f = self.face
        cranium = ellipse_dist(X, Y, 0.0, -0.06, f.head_w, f.head_h)
        jaw = ellipse_dist(X, Y, 0.0, f.jaw_y, f.jaw_w, f.jaw_h)
        return smooth_min(cranium, jaw, 0.12)

    def _shade(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Lambert shading of the head's ellipsoid (normals from a sphere-mapped ellipse), ambient included."""
        f = self.face
        nx, ny = X / (f.head_w * 1.15), (Y + 0.02) / (f.head_h * 1.05)
        nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
        norm = np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-6
        lam = np.clip((nx * self._light[0] + ny * self._light[1] + nz * self._light[2]) / norm, 0.0, 1.0)
        return f.ambient + (1.05 - f.ambient) * lam

    def _hair_texture(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Hair colour with strands that fan out from a point above the parting, clumps and a sheen band."""
        f = self.face
        rng = np.random.default_rng(f.bg_seed + 1)
        crown_x, crown_y = 0.2 * f.hair_part, -f.head_h - 0.5
        ang = np.arctan2(X - crown_x, Y - crown_y)  # 0 straight down from the crown
        r = np.hypot(X - crown_x, Y - crown_y)
        if f.hair_style == "curly":
            ang = ang + 0.08 * np.sin(r * 60) + 0.05 * np.sin(X * 50)
        k1, k2, k3 = rng.uniform(60, 90), rng.uniform(150, 220), rng.uniform(8, 14)
        strands = 0.5 * np.sin(k1 * ang + 2 * r) + 0.3 * np.sin(k2 * ang) + 0.6 * np.sin(k3 * ang + 5 * r)
        head_r = np.hypot(X / (f.head_w + 0.05), (Y + 0.06) / (f.head_h + 0.05))
        sheen = 0.18 * np.exp(-(((head_r - 0.8) / 0.08) ** 2)) * (Y < 0)
        col = np.asarray(f.hair_color)
        tex = col * (0.92 + 0.07 * strands)[..., None] + sheen[..., None] * (0.25 + 0.6 * col)
        return np.clip(tex, 0, 1)

    def _hair_shapes(self, X, Y) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Distance fields of the hair behind the head and of the hair over the forehead (None = absent)."""
        f = self.face
        v = f.hair_volume
        head = self._face_dist(X, Y)
        style = f.hair_style
        if style == "bald":
            return None, None
        # Cap over the cranium down to the hairline, which drops towards the temples.
        side = np.clip(np.abs(X) / f.head_w, 0, 1.2)
        part = 0.04 * np.tanh(4 * (X - 0.2 * f.hair_part)) * np.sign(f.hair_part)
        hairline = f.hairline + (0.05 - f.hairline) * side**2.5 + part
        if style == "fringe":
            hairline = -0.13 - 0.03 * side + 0.018 * np.abs(np.sin(X * 45)) + 0.15 * side**3
        if style == "side":
            hairline = hairline + 0.07 * np.clip(-X * np.sign(f.hair_part) / f.head_w + 0.3, 0, 1) ** 2
        vol = {"buzz": 0.006, "curly": v + 0.05}.get(style, v)
        cap = np.maximum(head - vol, Y - hairline)
        back = None
        if style in ("long", "bob"):
            bottom = f.hair_length if style == "long" else f.jaw_y + 0.12
            flare = 0.1 if style == "long" else 0.03
            width = f.head_w + v + 0.02 + flare * smoothstep(-0.1, bottom, Y)
            if style == "long":  # rounded, ragged ends
                ends = bottom - 0.12 * (X / width) ** 2 + 0.012 * np.sin(X * 70)
            else:  # a bob's tips come forward, lower at the sides
                ends = bottom + 0.06 * (X / width) ** 2
            curtain = np.maximum(np.maximum(np.abs(X) - width, Y - ends), -0.05 - Y)  # from the temples down
            cranium = ellipse_dist(X, Y, 0.0, -0.06, f.head_w, f.head_h)
            back = smooth_min(cranium - v - 0.02, curtain, 0.1)
        elif style == "curly":
            ang = np.arctan2(Y, X)
            r = np.hypot(X / (f.head_w + 0.18), (Y + 0.12) / (f.head_h + 0.12))
            back = (r - 1.0 - 0.05 * np.sin(11 * ang)) * (f.head_w + 0.15)
            cap = np.maximum(head - vol, Y - hairline - 0.025 * np.abs(np.sin(25 * X)))  # bumpy hairline
        elif style == "bun":
            back = np.hypot(X, Y + f.head_h + 0.04) - 0.14
        elif style == "ponytail":
            s = np.sign(f.hair_part) or 1.0
            back = ellipse_dist(X, Y, s * (f.head_w - 0.02), -0.05, 0.12, 0.32)
        if back is not None:  # hair hangs behind the neck, which is drawn on the base, not over it
            neck = np.maximum(np.abs(X) - f.jaw_w * 0.62, f.jaw_y - Y)
            back = np.maximum(back, -neck)
        return back, cap

    def _draw_head(self) -> tuple[Layer, Layer]:
        """The head layers below and above the animated parts, in face units (before shading)."""
        f, R = self.face, self.R
        X, Y, px = self.X, self.Y, self.px
        skin = np.asarray(f.skin)
        below, above = Layer(R, R), Layer(R, R)
        back, cap = self._hair_shapes(X, Y)
        hair_tex = self._hair_texture(X, Y)
        long_frame = f.hair_style in ("long", "bob", "curly")
        # 1. Hair behind the head, ears, face.
        if back is not None:
            below.paint(hair_tex * 0.8, coverage(back, px))
        ear_y = f.eye_y + 0.07
        for s in (-1, 1):
            ex = s * (f.head_w - 0.015)
            ear = ellipse_dist(X, Y, ex, ear_y, 0.055 * f.ear_size, 0.1 * f.ear_size)
            below.paint(skin * 0.93, coverage(ear, px))
            below.paint(skin * 0.7, coverage(ellipse_dist(X, Y, ex + s * 0.008, ear_y, 0.025, 0.06), px, 2.5) * 0.6)
        face = self._face_dist(X, Y)
        below.paint(skin, coverage(face, px))
        # 2. Skin details: cheeks, eye sockets, nose, chin.
        for s in (-1, 1):
            cheek = ellipse_dist(X, Y, s * f.eye_dx * 1.05, f.nose_y + 0.02, 0.09, 0.06)
            below.paint((0.85, 0.35, 0.35), coverage(cheek, px, soft=0.06 / px) * 0.25 * f.blush)
            socket = ellipse_dist(X, Y, s * f.eye_dx, f.eye_y - 0.01, f.eye_rx * 1.35, f.eye_ry * 2.2)
            below.paint(skin * 0.72, coverage(socket, px, soft=0.03 / px) * 0.35)
            crease = np.abs(ellipse_dist(X, Y, s * f.eye_dx, f.eye_y + 0.004, f.eye_rx * 1.08, f.eye_ry * 1.65))
            below.paint(skin * 0.6, coverage(crease - 0.003, px) * (Y < f.eye_y - 0.01) * 0.45)
        lx = np.sign(self._light[0]) or 1.0
        ridge = np.abs(X + lx * f.nose_w * 0.55) - 0.012
        ridge_mask = smoothstep(f.eye_y, f.nose_y - 0.03, Y) * (Y < f.nose_y)
        below.paint(skin * 0.75, coverage(ridge, px, soft=3) * ridge_mask * 0.5)
        tip = ellipse_dist(X, Y, 0.0, f.nose_y - 0.025, f.nose_w * 0.75, 0.035)
        below.paint(np.clip(skin * 1.12, 0, 1), coverage(tip, px, soft=0.02 / px) * 0.35)
        under = ellipse_dist(X, Y, 0.0, f.nose_y + 0.012, f.nose_w * 1.05, 0.018)
        below.paint(skin * 0.7, coverage(under, px, soft=2.5) * 0.45)
        for s in (-1, 1):
            nostril = ellipse_dist(X, Y, s * f.nose_w * 0.45, f.nose_y + 0.004, 0.017, 0.009)
            below.paint(skin * 0.35, coverage(nostril, px) * 0.85)
            wing = np.abs(ellipse_dist(X, Y, s * f.nose_w * 0.62, f.nose_y - 0.01, 0.03, 0.03)) - 0.003
            below.paint(skin * 0.65, coverage(wing, px) * (s * X > f.nose_w * 0.6) * 0.5)
        philtrum = ellipse_dist(X, Y, 0.0, (f.nose_y + f.mouth_y) / 2, 0.018, 0.04)
        below.paint(skin * 0.85, coverage(philtrum, px, soft=2.0) * 0.3)
        chin = ellipse_dist(X, Y, 0.0, f.mouth_y + 0.09, 0.07, 0.025)
        below.paint(skin * 0.8, coverage(chin, px, soft=0.02 / px) * 0.35)
        if f.beard > 0:  # jaw, chin and sideburns; the lips stay clear
            y_top = f.mouth_y - 0.05 - 0.9 * np.maximum(np.abs(X) - f.mouth_w * 1.2, 0.0)
            mouth_hole = ellipse_dist(X, Y, 0.0, f.mouth_y + 0.01, f.mouth_w * 1.3, 0.055)
            grain = 0.85 + 0.15 * np.sin(X * 90 + np.sin(Y * 70) * 2) * np.sin(Y * 110 + X * 30)
            cov = coverage(face, px) * smoothstep(y_top - 0.01, y_top + 0.05, Y) * coverage(-mouth_hole, px, 2.5)
            beard_col = _mix(f.hair_color, (0.08, 0.06, 0.05), 0.35)
            below.paint(hair_tex * 0.4 + beard_col * 0.5, cov * f.beard * 0.9 * grain)
        # 3. The brows move with the expression: `_draw_brows` paints them per frame into the eye crop.
        # 4. Above the animated parts: hair front, hat, moustache, glasses, earrings.
        if cap is not None:
            above.paint(hair_tex, coverage(cap, px))
        if long_frame:  # locks framing the face
            inner = ellipse_dist(X, Y, 0.0, 0.08, f.head_w * 0.86, f.head_h * 0.95)
            frame = np.maximum(back if back is not None else face, -inner)
            above.paint(hair_tex * 0.95, coverage(frame, px))
        if f.hat != "none":
            top = f.hairline - 0.03
            dome = np.maximum(face - f.hair_volume - 0.04, Y - top)
            above.paint(np.asarray(f.hat_color), coverage(dome, px))
            if f.hat == "beanie":
                band = np.maximum(dome, top - 0.07 - Y)
                above.paint(np.asarray(f.hat_color) * 0.8, coverage(band, px))
            else:
                brim = ellipse_dist(X, Y, 0.0, top, f.head_w + 0.12, 0.04)
                above.paint(np.asarray(f.hat_color) * 0.7, coverage(brim, px))
        if f.moustache:
            y_top = f.mouth_y - f.lip_upper - 0.045
            m = np.maximum(np.abs(X) - f.mouth_w * 1.05, np.abs(Y - y_top - 0.02 - 0.25 * X**2) - 0.018)
            above.paint(hair_tex * 0.9, coverage(m, px, 1.5) * 0.95)
        if f.glasses != "none":
            col = np.asarray(f.glasses_color)
            rx, ry = f.eye_rx * 1.55, f.eye_ry * 2.6 + 0.01
            for s in (-1, 1):
                cx = s * f.eye_dx
                if f.glasses == "round":
                    d = ellipse_dist(X, Y, cx, f.eye_y, rx, rx * 0.9)
                else:
                    qx, qy = np.abs(X - cx) - rx + 0.03, np.abs(Y - f.eye_y) - ry + 0.03
                    d = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - 0.03
                above.paint((0.85, 0.9, 0.95), coverage(d, px) * 0.12)  # lens
                above.paint(col, coverage(np.abs(d) - 0.008, px))
                arm = polyline_dist(
                    X, Y, np.array([[cx + s * rx, f.eye_y - 0.01], [s * (f.head_w + 0.01), ear_y - 0.04]])
                )[0]
                above.paint(col, coverage(arm - 0.006, px))
            bridge = polyline_dist(
                X,
                Y,
                quad_curve((-f.eye_dx + rx, f.eye_y - 0.01), (0, f.eye_y - 0.04), (f.eye_dx - rx, f.eye_y - 0.01)),
            )[0]
            above.paint(col, coverage(bridge - 0.007, px))
        if f.earrings and not long_frame:
            for s in (-1, 1):
                ring = np.abs(np.hypot(X - s * (f.head_w - 0.01), Y - ear_y - 0.13 * f.ear_size) - 0.025) - 0.006
                above.paint(np.asarray(f.earring_color), coverage(ring, px))
        return below, above

    def _finish_layers(self, below: Layer, above: Layer) -> None:
        """Apply the light, store the layers as float32 and find the crops that change per frame."""
        f = self.face
        self.shade = self._shade(self.X, self.Y)  # (R, R)
        below.rgb *= self.shade[..., None]
        above.rgb *= self.shade[..., None]
        self.below = np.dstack([below.rgb, below.a]).astype(np.float32)  # (R, R, 4) premultiplied
        self.above = np.dstack([above.rgb, above.a]).astype(np.float32)
        self.full = self.above + self.below * (1.0 - self.above[..., 3:])
        # Crops in pixels: both eyes with room for the lids and the brows at every control value in [-1, 1]
        # (their points are linear in the controls, so a grid with the corners finds the extremes); the mouth at its
        # widest and most open, the corners bent up or down (SMILE_LIFT * mouth_w, well inside the margins).
        eyes = self._crop(
            -f.eye_dx - f.eye_rx * 1.4, f.eye_dx + f.eye_rx * 1.4, f.eye_y - f.eye_ry * 2.0, f.eye_y + f.eye_ry * 1.8
        )
        grid = np.linspace(-1.0, 1.0, 5)
        margin = f.brow_thick / 2 + 2 * self.px
        brows = []
        for s in (-1, 1):
            pts = np.concatenate([self._brow_points(s, a, b, c) for a in grid for b in grid for c in grid])
            lo, hi = pts.min(0) - margin, pts.max(0) + margin
            brows.append(self._crop(lo[0], hi[0], lo[1], hi[1]))
        self.eye_crop = c = _Crop(
            min(eyes.y0, *(b.y0 for b in brows)),
            max(eyes.y1, *(b.y1 for b in brows)),
            min(eyes.x0, *(b.x0 for b in brows)),
            max(eyes.x1, *(b.x1 for b in brows)),
        )
        # Where the eyes and each brow lie inside the eye crop: only those pixels are redrawn.
        self._eye_box = _Crop(eyes.y0 - c.y0, eyes.y1 - c.y0, eyes.x0 - c.x0, eyes.x1 - c.x0)
        self._brow_boxes = [_Crop(b.y0 - c.y0, b.y1 - c.y0, b.x0 - c.x0, b.x1 - c.x0) for b in brows]
        w = f.mouth_w * 1.2 * (1.0 + SMILE_WIDEN) + 2 * self.px  # widest visemes (~1.19) with a smile
        self.mouth_crop = self._crop(
            -w, w, f.mouth_y - f.lip_upper * 2 - 0.06, f.mouth_y + f.open_max + f.lip_lower * 1.5 + 0.04
        )

    def _crop(self, x0: float, x1: float, y0: float, y1: float) -> _Crop:
        col = np.searchsorted(self.xs, [x0, x1])
        row = np.searchsorted(self.ys, [y0, y1])
        c0, c1 = max(int(col[0]) - 1, 0), min(int(col[1]) + 1, self.R)
        r0, r1 = max(int(row[0]) - 1, 0), min(int(row[1]) + 1, self.R)
        return _Crop(r0, r1, c0, c1)

    # ------------------------------------------------------------------ animated parts

    def _brow_points(self, s: int, inner: float, outer: float, down: float) -> np.ndarray:
        """The centre line of the brow on side `s` (-1 = image left) under the brow controls: (9, 2) face units."""
        f = self.face
        x_in, x_out = s * (f.eye_dx - f.eye_rx * 0.95), s * (f.eye_dx + f.eye_rx * 1.15)
        y0 = f.eye_y - f.brow_dy
        drop = BROW_DROP * down
        return quad_curve(
            (x_in - s * BROW_PULL * down, y0 + f.brow_tilt - BROW_RAISE * inner + drop + BROW_KNIT * down),
            (s * f.eye_dx, y0 - f.brow_arch * 2 - BROW_RAISE * 0.5 * (inner + outer) + drop),
            (x_out, y0 + 0.01 - BROW_RAISE * outer + drop),
        )

    def _draw_brows(self, inner: float, outer: float, down: float) -> np.ndarray:
        """The eye crop of `below` with both brows painted: premultiplied (h, w, 4), the eyes' background."""
        f, px, c = self.face, self.px, self.eye_crop
        layer = self.below[c.slices].copy()  # (h, w, 4)
        color = np.asarray(f.brow_color)
        for s, box in zip((-1, 1), self._brow_boxes, strict=True):
            ys = self.ys[c.y0 + box.y0 : c.y0 + box.y1, None]  # (h, 1)
            xs = self.xs[None, c.x0 + box.x0 : c.x0 + box.x1]  # (1, w)
            d, t = polyline_dist(xs, ys, self._brow_points(s, inner, outer, down))
            thick = f.brow_thick * (1.0 - 0.55 * t)  # thicker at the inner end
            cov = coverage(d - thick / 2, px) * 0.92  # (h, w)
            part = layer[box.slices]
            shade = self.shade[c.y0 + box.y0 : c.y0 + box.y1, c.x0 + box.x0 : c.x0 + box.x1]
            part[..., :3] = part[..., :3] * (1.0 - cov[..., None]) + color * (shade * cov)[..., None]
            part[..., 3] = part[..., 3] * (1.0 - cov) + cov
        return layer

    def _draw_eyes(self, brows: np.ndarray, blink: float, gaze: tuple[float, float], lid: float) -> np.ndarray:
        """The eye crop of the head layer: the eyes over `brows` (`_draw_brows`), lids opened by `lid` (-1..1) and
        closed by `blink` (0..1): premultiplied (4, h, w)."""
        f, px, c = self.face, self.px, self.eye_crop
        layer = brows.copy()  # (h, w, 4)
        e = self._eye_box  # the eyes and lids lie in this part of the crop
        ys = self.ys[c.y0 + e.y0 : c.y0 + e.y1, None]  # (h, 1)
        xs = self.xs[None, c.x0 + e.x0 : c.x0 + e.x1]  # (1, w)
        rgb, a = layer[e.slices + (slice(0, 3),)], layer[e.slices + (3,)]
        shade = self.shade[c.y0 + e.y0 : c.y0 + e.y1, c.x0 + e.x0 : c.x0 + e.x1][..., None]
        # The lids' rest lines: wide eyes raise the upper lid and lower the lower one; a squint raises the lower
        # lid and lowers the upper one a little.
        wide, squint = max(lid, 0.0), max(-lid, 0.0)
        upper = (1.0 + LID_WIDE * wide) * (1.0 - LID_SQUINT_UPPER * squint)
        lower = (0.8 + LID_WIDE_LOWER * wide) * (1.0 - LID_SQUINT * squint)
        for s in (-1, 1):
            ex = s * f.eye_dx
            u = (xs - ex) / f.eye_rx  # (1, w)
            prof = np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0))
            tilt = f.eye_tilt * f.eye_ry * u * s  # outer corner up for tilt > 0
            y_up = f.eye_y - f.eye_ry * upper * prof**0.75 - tilt
            y_lo = f.eye_y + f.eye_ry * lower * prof**0.9 - tilt
            y_lid = y_up + blink * (y_lo - y_up)
            inside_x = coverage(np.abs(u) - 1.0, px / f.eye_rx)
            vis = coverage(y_lid - ys, px) * coverage(ys - y_lo, px) * inside_x  # (h, w)
            ix, iy = ex + gaze[0] * f.eye_rx * 0.35, f.eye_y + 0.1 * f.eye_ry + gaze[1] * f.eye_ry * 0.25
            r = np.hypot(xs - ix, ys - iy)
            ri = f.eye_ry * 1.05
            lid_shadow = 0.65 + 0.35 * smoothstep(0.0, f.eye_ry * 0.6, ys - y_lid)
            sclera = np.array([0.93, 0.9, 0.87]) * lid_shadow[..., None]
            iris_col = np.asarray(f.iris) * (0.55 + 0.6 * (r / ri))[..., None]
            iris_col = np.where((r < ri * 0.45)[..., None], 0.03, iris_col)
            col = np.where((r < ri)[..., None], iris_col * lid_shadow[..., None], sclera)
            glint = coverage(np.hypot(xs - ix + ri * 0.35, ys - iy + ri * 0.35) - ri * 0.22, px)
            col = col * (1 - glint[..., None]) + glint[..., None]
            iris_edge = coverage(r - ri, px)  # anti-aliased iris rim
            col = np.where(
                (r < ri + px)[..., None], col * iris_edge[..., None] + sclera * (1 - iris_edge[..., None]), col
            )
            v = vis[..., None]
            rgb[:] = rgb * (1 - v) + col * shade * v
            lash = coverage(np.abs(ys - y_lid) - 0.006 - 0.004 * prof, px) * coverage(np.abs(u) - 1.08, px / f.eye_rx)
            lash = np.maximum(lash, coverage(np.abs(ys - y_lo) - 0.002, px) * inside_x * 0.35)
            lv = lash[..., None]
            rgb[:] = rgb * (1 - lv) + np.array([0.07, 0.05, 0.05]) * lv
            a[:] = np.maximum(a, np.maximum(vis, lash))
        above = self.above[c.slices]
        return (above + layer * (1.0 - above[..., 3:])).transpose(2, 0, 1).astype(np.float32)

    def _draw_mouth(self, opening: float, width: float, smile: float) -> np.ndarray:
        """The mouth crop: lips, opening (dark), teeth and tongue for `opening` (0..1), `width` and the corners bent
        by `smile` (-1..1): (4, h, w)."""
        f, px, c = self.face, self.px, self.mouth_crop
        xs = self.xs[None, c.x0 : c.x1]  # (1, w)
        layer = self.below[c.slices].copy()
        rgb = layer[..., :3]
        shade = self.shade[c.slices][..., None]
        rounding = max(0.0, 1.0 - width)  # rounded lips look fuller
        hw = f.mouth_w * width * (1.0 + SMILE_WIDEN * max(smile, 0.0))
        u = np.clip(xs / hw, -1.0, 1.0)
        # A smile bends the whole mouth: each column is drawn shifted up (down for a frown) by a parabola in u that
        # reaches SMILE_LIFT * mouth_w * smile at the corners, so the lips, the opening and the teeth follow them.
        ys = self.ys[c.y0 : c.y1, None] - f.mouth_y  # (h, 1)
        if smile != 0.0:
            ys = ys + SMILE_LIFT * f.mouth_w * smile * u * u  # (h, w)
        prof = np.sqrt(1.0 - u * u)  # (1, w), 0 at the corners
        h = opening * f.open_max
        yi_u = -0.22 * h * prof**0.8  # inner edge of the upper lip
        yi_l = 0.78 * h * prof**0.8  # inner edge of the lower lip
        bow = 1.0 - 0.3 * np.exp(-((xs / (0.22 * hw)) ** 2))  # Cupid's bow: a dip in the middle of the upper lip
        yo_u = yi_u - f.lip_upper * (1 + 0.8 * rounding) * (0.25 + 0.75 * prof) * bow
        yo_l = yi_l + f.lip_lower * (1 + 0.6 * rounding) * (0.2 + 0.8 * prof)
        in_x = coverage(np.abs(xs) - hw, px)
        lips = coverage(yo_u - ys, px, 1.3) * coverage(ys - yo_l, px, 1.3) * in_x  # (h, w)
        lip_col = np.asarray(f.lip_color)
        upper = ys < (yi_u + yi_l) / 2
        sheen = 1.0 + 0.25 * np.exp(-(((ys - yi_l - f.lip_lower * 0.45) / (f.lip_lower * 0.35)) ** 2)) * prof
        col = np.where(upper[..., None], lip_col * 0.82, lip_col * sheen[..., None])
        lv = lips[..., None]
        rgb[:] = rgb * (1 - lv) + col * shade * lv
        # The seam between closed lips, darker towards the corners.
        seam = coverage(np.abs(ys - (yi_u + yi_l) / 2) - 0.0035, px) * in_x
        sv = seam[..., None] * 0.8
        rgb[:] = rgb * (1 - sv) + lip_col * 0.35 * shade * sv
        if h > 0.2 * px:
            hole = coverage(yi_u - ys, px) * coverage(ys - yi_l, px) * in_x  # (h, w)
            depth = 0.55 + 0.45 * np.abs(u)
            inner = np.array([0.28, 0.07, 0.08]) * depth[..., None] * np.ones_like(ys)[..., None]
            teeth_h = min(0.45 * h, 0.028)
            teeth = coverage(ys - (yi_u + teeth_h), px) * coverage(np.abs(u) - 0.72, px / hw)
            inner = np.where(
                teeth[..., None] > 0,
                inner * (1 - teeth[..., None]) + np.array([0.9, 0.88, 0.82]) * teeth[..., None],
                inner,
            )
            if h > 0.35 * f.open_max:
                lower_teeth = coverage(yi_l - 0.18 * teeth_h - ys, px) * coverage(np.abs(u) - 0.55, px / hw) * 0.8
                inner = inner * (1 - lower_teeth[..., None]) + np.array([0.82, 0.8, 0.75]) * lower_teeth[..., None]
            tongue = coverage(ellipse_dist(xs, ys, 0.0, yi_l.max() * 0.95, hw * 0.55, max(h * 0.35, px)), px)
            tv = (tongue * smoothstep(0.25, 0.5, opening))[..., None]
            inner = inner * (1 - tv) + np.array([0.72, 0.33, 0.36]) * tv
            hv = hole[..., None]
            rgb[:] = rgb * (1 - hv) + inner * shade * hv
        above = self.above[c.slices]
        return (above + layer * (1.0 - above[..., 3:])).transpose(2, 0, 1).astype(np.float32)

    # ------------------------------------------------------------------ warp

    def _build_warp(self) -> None:
        """Precompute the region the head can reach, and the depth / jaw-weight maps the warp reads."""
        f, R = self.face, self.R
        X, Y = self.X, self.Y
        # Depth (face units): an ellipsoid plus the nose; hair behind the head gets a negative depth.
        r2 = (X / (f.head_w * 1.1)) ** 2 + ((Y + 0.04) / (f.head_h * 1.1)) ** 2
        depth = 0.42 * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0)) - 0.1 * smoothstep(0.9, 1.3, r2)
        depth += 0.1 * np.exp(-((X / (f.nose_w * 1.2)) ** 2) - ((Y - f.nose_y + 0.06) / 0.09) ** 2)
        # Jaw weight: 1 on the chin, 0 above the lowest lower-lip position, fading out beside the jaw.
        lip_bottom = f.mouth_y + 0.78 * f.open_max + 1.3 * f.lip_lower + 0.01
        chin = f.jaw_y + f.jaw_h
        jaw = smoothstep(lip_bottom, lip_bottom + 0.6 * (chin - lip_bottom), Y)
        jaw *= smoothstep(f.jaw_w * 1.25, f.jaw_w * 0.6, np.abs(X))
        self.zj = np.stack([depth, jaw]).reshape(2, R * R).astype(np.float32)  # (2, R*R)
        # Pixels that may show the head under the largest pose we generate, found from the layer's alpha.
        alpha = self.full[..., 3] > 1.0 / 512
        rows, cols = np.nonzero(alpha)
        margin = int(np.ceil(0.3 / self.px_img))  # rotation about the neck + shift + parallax, generously
        if len(rows):
            self.roi = (
                max(rows.min() - margin, 0),
                min(rows.max() + margin + 1, R),
                max(cols.min() - margin, 0),
                min(cols.max() + margin + 1, R),
            )
        else:
            self.roi = (0, 0, 0, 0)
        r0, r1, c0, c1 = self.roi
        gy, gx = np.meshgrid(np.arange(r0, r1, dtype=np.float32), np.arange(c0, c1, dtype=np.float32), indexing="ij")
        self._grid = (gx.ravel(), gy.ravel())  # output pixel coordinates of the ROI
        self._pivot = np.array(
            [
                (f.center[0] + 1) / self.px_img - 0.5,
                ((f.jaw_y + f.jaw_h) * f.scale + f.center[1] + 1) / self.px_img - 0.5,
            ]
        )  # the neck, in pixels: the head turns about it
        self._face_px = f.scale / self.px_img  # face units -> pixels
        self._planes = np.ascontiguousarray(self.full.transpose(2, 0, 1))  # (4, R, R)
        self._base_roi = np.ascontiguousarray(self.base.transpose(2, 0, 1)[:, r0:r1, c0:c1]).reshape(3, -1)
        self._base_u8 = (np.clip(self.base, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        self._cache: dict[tuple, np.ndarray] = {}

    def _cached(self, key: tuple, draw) -> np.ndarray:
        """Crops are drawn once per quantised (part, values) key; frames repeat them often (open eyes, closed lips)."""
        crop = self._cache.get(key)
        if crop is None:
            if len(self._cache) >= 4096:
                self._cache.clear()
            crop = self._cache[key] = draw()
        return crop

    def render(
        self,
        *,
        mouth_open: float = 0.0,
        mouth_width: float = 1.0,
        blink: float = 0.0,
        yaw: float = 0.0,
        pitch: float = 0.0,
        roll: float = 0.0,
        shift: tuple[float, float] = (0.0, 0.0),
        gaze: tuple[float, float] = (0.0, 0.0),
        smile: float = 0.0,
        brow_inner: float = 0.0,
        brow_outer: float = 0.0,
        brow_down: float = 0.0,
        lid: float = 0.0,
        jaw: float = 0.0,
    ) -> np.ndarray:
        """One frame: uint8 (R, R, 3).

        Args:
            mouth_open: 0 (lips together) .. 1 (the identity's widest opening).
            mouth_width: mouth width relative to rest (about 0.7 rounded .. 1.15 spread).
            blink: eyelid closure, 0 (open) .. 1 (closed).
            yaw, pitch, roll: head rotation in degrees; yaw > 0 turns the face towards the image's right,
                pitch > 0 raises it, roll > 0 tilts it counter-clockwise (as seen in the image).
            shift: head translation as a fraction of the image size (x right, y down).
            gaze: iris offset, -1..1 in x and y.
            smile: the mouth corners, -1 (down, a frown) .. 1 (up and a little wider, a smile).
            brow_inner, brow_outer: the inner / outer ends of the brows, -1 (lowered) .. 1 (raised).
            brow_down: 0 .. 1, the brows lowered and drawn together, their inner ends lowest (a frown);
                -1 .. 0 the opposite.
            lid: the eyes' aperture at rest, -1 (a squint: lower lids up, upper lids a little down) .. 1 (wide open:
                upper lids up, lower lids a little down); `blink` closes from there.
            jaw: 0 .. 1, a jaw drop added to `mouth_open` (the drawn opening is clipped to 1).

        The expression controls are the ones of rest/data/synth/emotion.py (its CONTROLS, in that order). The eye and
        mouth crops are drawn at values rounded to 1/64 (blink, gaze), 1/32 (expression) and 1/200 (mouth), far
        below what a pixel can show, so that they can be cached.
        """
        for name, value, low in (
            ("smile", smile, -1.0),
            ("brow_inner", brow_inner, -1.0),
            ("brow_outer", brow_outer, -1.0),
            ("brow_down", brow_down, -1.0),
            ("lid", lid, -1.0),
            ("jaw", jaw, 0.0),
        ):
            if not low <= value <= 1.0:  # the crops are sized for this range
                raise ValueError(f"{name}={value} is outside [{low:g}, 1]; clip the expression controls to that range")
        R = self.R
        r0, r1, c0, c1 = self.roi
        if r1 <= r0:
            return self._base_u8.copy()
        opening = min(max(float(mouth_open) + float(jaw), 0.0), 1.0)
        # 1. The head layer with this frame's eyes, brows and mouth.
        planes = self._planes.copy()  # (4, R, R)
        b, gx_, gy_ = round(float(blink) * 64), round(float(gaze[0]) * 64), round(float(gaze[1]) * 64)
        bi, bo, bd, li = (round(float(v) * 32) for v in (brow_inner, brow_outer, brow_down, lid))
        brows = self._cached(("brows", bi, bo, bd), lambda: self._draw_brows(bi / 32, bo / 32, bd / 32))
        eyes = self._cached(
            ("eyes", b, gx_, gy_, li, bi, bo, bd),
            lambda: self._draw_eyes(brows, b / 64, (gx_ / 64, gy_ / 64), li / 32),
        )
        o, w, sm = round(opening * 200), round(float(mouth_width) * 200), round(float(smile) * 32)
        mouth = self._cached(("mouth", o, w, sm), lambda: self._draw_mouth(o / 200, w / 200, sm / 32))
        planes[(slice(None), *self.eye_crop.slices)] = eyes
        planes[(slice(None), *self.mouth_crop.slices)] = mouth
        planes = planes.reshape(4, R * R)
        # 2. Inverse map, output pixel -> head-layer pixel: undo the shift, then the roll about the neck.
        gx, gy = self._grid
        th = -np.radians(roll)  # the inverse map turns the other way
        cs, sn = np.float32(np.cos(th)), np.float32(np.sin(th))
        dx = gx - np.float32(self._pivot[0] + shift[0] * R)
        dy = gy - np.float32(self._pivot[1] + shift[1] * R)
        u = cs * dx - sn * dy + np.float32(self._pivot[0])
        v = sn * dx + cs * dy + np.float32(self._pivot[1])
        # 3. Parallax for yaw / pitch and the chin following the mouth, from the maps at the nearest pixel.
        iu = np.clip(u + 0.5, 0, R - 1).astype(np.int32)
        iv = np.clip(v + 0.5, 0, R - 1).astype(np.int32)
        nearest = iv * R + iu
        depth, jaw_weight = np.take(self.zj[0], nearest), np.take(self.zj[1], nearest)
        k = self._face_px
        u -= depth * np.float32(np.sin(np.radians(yaw)) * k)
        v += depth * np.float32(np.sin(np.radians(pitch)) * k) - jaw_weight * np.float32(
            0.6 * opening * self.face.open_max * k
        )
        # 4. Bilinear gather of premultiplied RGBA, composite over the base.
        np.clip(u, 0, R - 1.001, out=u)
        np.clip(v, 0, R - 1.001, out=v)
        x0, y0 = u.astype(np.int32), v.astype(np.int32)
        wx, wy = u - x0, v - y0
        i00 = y0 * R + x0
        n = len(i00)
        corners = np.take(planes, np.concatenate([i00, i00 + 1, i00 + R, i00 + R + 1]), axis=1).reshape(4, 4, n)
        top = corners[:, 0] + (corners[:, 1] - corners[:, 0]) * wx  # (4, N)
        bottom = corners[:, 2] + (corners[:, 3] - corners[:, 2]) * wx
        head = top + (bottom - top) * wy
        roi = self._base_roi * (1.0 - head[3]) + head[:3]  # (3, N)
        roi = (np.clip(roi, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        frame = self._base_u8.copy()
        frame[r0:r1, c0:c1] = roi.reshape(3, r1 - r0, c1 - c0).transpose(1, 2, 0)
        return frame


__all__ = ["BACKGROUNDS", "FaceParams", "FaceRenderer", "HAIR_STYLES", "HATS", "coverage", "sample_face"]
