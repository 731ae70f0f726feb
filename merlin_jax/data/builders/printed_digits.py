"""`printed_digits`: digits 0-9 rendered with PIL from every usable font face installed.

The source of the default pair (printed -> handwritten, `configs/digits.py`). Built on first
use from matplotlib's bundled faces (always present: about 20 render digits) plus any system
fonts under /usr/share/fonts (`apt-get install fonts-dejavu fonts-liberation
fonts-freefont-ttf fonts-noto-core fonts-urw-base35` gives hundreds: a more varied source).
The examples are a pure function of (font list, config, split, index), so the dataset is
reproducible on one machine; note that installing fonts changes it.

Each example: a random face, size 28-48 px, stroke width 0-2, rotation +-15 deg, cropped to
the ink, scaled to fill the frame with a 1-4 px margin (scikit-learn's digits fill their
8x8 frame), +-2 px position jitter and light Gaussian noise. Bright ink on a dark background
for grayscale (like MNIST / scikit-learn digits); random contrasting colours for RGB
(SVHN-like).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from merlin_jax.data.builders import common

_FONT_CANVAS = 96
_SYSTEM_FONT_DIR = "/usr/share/fonts"


@dataclasses.dataclass
class PrintedDigitsConfig(tfds.core.BuilderConfig):
  image_size: int = 28
  channels: int = 1
  num_train: int = 25_000
  num_test: int = 5_000
  system_fonts: bool = True     # also use faces under /usr/share/fonts


def _mpl_font_dir() -> str:
  import matplotlib
  return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def _render_plain(font, digit: int) -> np.ndarray:
  """The digit's ink mask cropped and resized to 16x16 (used to vet faces)."""
  from PIL import Image, ImageDraw
  canvas = Image.new("L", (_FONT_CANVAS, _FONT_CANVAS), 0)
  ImageDraw.Draw(canvas).text((_FONT_CANVAS // 2, _FONT_CANVAS // 2), str(digit), fill=255,
                              font=font, anchor="mm")
  box = canvas.getbbox()
  if box is None or box[2] - box[0] < 2 or box[3] - box[1] < 4:
    return None
  x = np.asarray(canvas.crop(box).resize((16, 16), Image.BILINEAR), np.float32)
  x -= x.mean()
  n = np.linalg.norm(x)
  return x / n if n > 0 else None


@functools.lru_cache(maxsize=None)
def usable_fonts(system_fonts: bool = True) -> tuple[str, ...]:
  """Font files whose digits look like digits, sorted (deterministic for a machine).

  A face is kept when all ten glyphs render and at least 8 of them are closest (by
  correlation of 16x16 crops) to the same digit in DejaVu Sans: this drops symbol / math
  extension faces (cmex10, cmsy10, STIXSize*) and 'last resort' boxes.
  """
  from PIL import ImageFont
  mpl_dir = _mpl_font_dir()
  candidates = sorted(glob.glob(os.path.join(mpl_dir, "*.ttf")))
  if system_fonts and os.path.isdir(_SYSTEM_FONT_DIR):
    found = []
    for ext in ("ttf", "otf", "TTF", "OTF"):
      found += glob.glob(os.path.join(_SYSTEM_FONT_DIR, "**", f"*.{ext}"), recursive=True)
    seen = {os.path.basename(c) for c in candidates}   # the same face twice: keep one
    for path in sorted(set(found)):
      if os.path.basename(path) not in seen:
        seen.add(os.path.basename(path))
        candidates.append(path)
  ref_font = ImageFont.truetype(os.path.join(mpl_dir, "DejaVuSans.ttf"), 40)
  ref = np.stack([_render_plain(ref_font, d) for d in range(10)])   # [10, 16, 16]
  keep = []
  for path in candidates:
    try:
      font = ImageFont.truetype(path, 40)
      glyphs = [_render_plain(font, d) for d in range(10)]
    except Exception:  # pylint: disable=broad-except  (broken/unsupported font files)
      continue
    if any(g is None for g in glyphs):
      continue
    sim = np.einsum("ahw,bhw->ab", np.stack(glyphs), ref)           # [10, 10]
    if (sim.argmax(axis=1) == np.arange(10)).sum() >= 8:
      keep.append(path)
  return tuple(keep)


@functools.lru_cache(maxsize=4096)
def _font(path: str, size: int):
  from PIL import ImageFont
  return ImageFont.truetype(path, size)


def render_example(rng: np.random.Generator, fonts, image_size: int, channels: int):
  """One random printed digit -> (image uint8 [S, S, C], label)."""
  from PIL import Image, ImageDraw
  label = int(rng.integers(10))
  font = _font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(28, 49)))
  stroke = int(rng.integers(0, 3))
  canvas = Image.new("L", (_FONT_CANVAS, _FONT_CANVAS), 0)
  ImageDraw.Draw(canvas).text((_FONT_CANVAS // 2, _FONT_CANVAS // 2), str(label), fill=255,
                              font=font, anchor="mm", stroke_width=stroke, stroke_fill=255)
  canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
  box = canvas.getbbox() or (0, 0, _FONT_CANVAS, _FONT_CANVAS)
  glyph = canvas.crop(box)
  # Fit the ink into the frame with a random margin, keeping the aspect ratio.
  margin = int(rng.integers(1, 5))
  inner = image_size - 2 * margin
  w, h = glyph.size
  scale = inner / max(w, h)
  gw, gh = max(1, round(w * scale)), max(1, round(h * scale))
  glyph = glyph.resize((gw, gh), Image.LANCZOS)
  dx, dy = rng.integers(-2, 3, size=2)
  x0 = int(np.clip((image_size - gw) // 2 + dx, 0, image_size - gw))
  y0 = int(np.clip((image_size - gh) // 2 + dy, 0, image_size - gh))
  ink = np.zeros((image_size, image_size), np.float32)
  ink[y0:y0 + gh, x0:x0 + gw] = np.asarray(glyph, np.float32) / 255.0
  ink = ink[:, :, None]                                              # [S, S, 1] in [0, 1]
  if channels == 1:
    fg, bg = np.array([1.0]), np.array([0.0])
  else:  # SVHN-like: random colours with at least 0.3 luminance contrast
    while True:
      fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
      if abs(fg.mean() - bg.mean()) > 0.3:
        break
  img = bg * (1 - ink) + fg * ink
  img = img + rng.normal(0, 0.03, img.shape)                       # light noise
  return np.clip(np.round(img * 255), 0, 255).astype(np.uint8), label


class PrintedDigits(common.OfflineBuilder):
  """Digits rendered from font faces (the printed source of the default pair)."""

  BUILDER_CONFIGS = [
      PrintedDigitsConfig(name="28x28x1", description="MNIST-like grayscale (default)."),
      PrintedDigitsConfig(name="32x32x3", image_size=32, channels=3,
                          description="SVHN-like colour digits."),
      PrintedDigitsConfig(name="tiny", num_train=600, num_test=200,
                          description="28x28x1, 600/200 examples: tests and smoke runs."),
  ]

  def _info(self):
    c = self.builder_config
    return common.image_label_info(
        self, tfds.features.Image(shape=(c.image_size, c.image_size, c.channels)), 10)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    c = self.builder_config
    return {"train": self._generate_examples(0, c.num_train),
            "test": self._generate_examples(1, c.num_test)}

  def _generate_examples(self, split_id: int, num: int):
    from merlin_jax.errors import DataError
    c = self.builder_config
    fonts = usable_fonts(c.system_fonts)
    if not fonts:
      raise DataError("printed_digits: no usable font face found: "
                      "pip install matplotlib (ships DejaVu/STIX/cm faces)")
    for i in range(num):
      image, label = render_example(np.random.default_rng((split_id, i)), fonts,
                                    c.image_size, c.channels)
      yield i, {"image": image, "label": label}
