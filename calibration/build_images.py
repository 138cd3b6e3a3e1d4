"""Rebuild the embedded calibration photographs from images bundled in installed packages.

Usage (from the repository root, with the project venv active)::

    python calibration/build_images.py          # writes calibration/images/* and calibration/provenance.json
    python calibration/build_images.py --check  # rebuilds in memory, fails if any stored byte differs

Sources are read straight from the installed ``skimage/data/`` and
``sklearn/datasets/images/`` directories.  Nothing is downloaded: ``skimage.data``'s
loaders are *not* called (they may fall back to pooch), and every skimage source file is
checked against the sha256 that scikit-image itself registers in
``skimage.data._registry.registry`` before use.

Processing per image: decode with Pillow -> convert("RGB") -> if the longer side exceeds
320 px, resize with Lanczos keeping aspect (shorter side rounded half-up) -> JPEG quality 92,
4:2:0 chroma subsampling, baseline, no optimise/progressive, no EXIF/ICC/comment.  With the
same Pillow/libjpeg build the output bytes are identical on every run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from importlib import resources
from pathlib import Path

from PIL import Image

MAX_SIDE = 320
JPEG_QUALITY = 92

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "images"
PROVENANCE = HERE / "provenance.json"

# (output file, package, resource dir, file name, function, origin, licence, licence source)
SOURCES = [
    (
        "skimage-astronaut.jpg", "scikit-image", "skimage.data", "astronaut.png",
        "skimage.data.astronaut()",
        "NASA Great Images database (https://flic.kr/p/r9qvLn); astronaut Eileen Collins",
        "Public domain: \"No known copyright restrictions, released into the public domain.\"",
        "docstring of skimage.data.astronaut (skimage/data/_fetchers.py)",
    ),
    (
        "skimage-chelsea.jpg", "scikit-image", "skimage.data", "chelsea.png",
        "skimage.data.chelsea()",
        "Stefan van der Walt (photographer); Chelsea the cat",
        "CC0: \"No copyright restrictions.  CC0 by the photographer (Stefan van der Walt).\"",
        "docstring of skimage.data.chelsea (skimage/data/_fetchers.py)",
    ),
    (
        "skimage-coffee.jpg", "scikit-image", "skimage.data", "coffee.png",
        "skimage.data.coffee()",
        "Rachel Michetti (photographer), courtesy of Pikolo Espresso Bar; coffee cup",
        "CC0: \"No copyright restrictions.  CC0 by the photographer (Rachel Michetti).\"",
        "docstring of skimage.data.coffee (skimage/data/_fetchers.py)",
    ),
    (
        "skimage-rocket.jpg", "scikit-image", "skimage.data", "rocket.jpg",
        "skimage.data.rocket()",
        "SpaceX (https://www.flickr.com/photos/spacexphotos/16511594820/); "
        "Falcon 9 / DSCOVR launch",
        "Public domain: \"The image was captured by SpaceX and `released in the public domain "
        "<http://arstechnica.com/tech-policy/2015/03/elon-musk-puts-spacex-photos-into-the-public-domain/>`_.\"",
        "docstring of skimage.data.rocket (skimage/data/_fetchers.py)",
    ),
    (
        "skimage-camera.jpg", "scikit-image", "skimage.data", "camera.png",
        "skimage.data.camera()",
        "Lav Varshney (photographer); man with camera (grayscale, replaced in skimage 0.18)",
        "CC0: \"No copyright restrictions. CC0 by the photographer (Lav Varshney).\"",
        "docstring of skimage.data.camera (skimage/data/_fetchers.py)",
    ),
    (
        "skimage-coins.jpg", "scikit-image", "skimage.data", "coins.png",
        "skimage.data.coins()",
        "Brooklyn Museum Collection "
        "(https://www.brooklynmuseum.org/opencollection/archives/image/51611); "
        "Greek coins from Pompeii (grayscale)",
        "No known copyright restrictions: \"No known copyright restrictions.\"",
        "docstring of skimage.data.coins (skimage/data/_fetchers.py)",
    ),
    (
        "sklearn-china.jpg", "scikit-learn", "sklearn.datasets.images", "china.jpg",
        "sklearn.datasets.load_sample_image('china.jpg')",
        "Flickr user danielbuechele "
        "(https://www.flickr.com/photos/danielbuechele/6061409035/), retrieved 2011-08-21 "
        "by Robert Layton; Chinese temple/pagoda",
        "CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/): "
        "\"Released under a creative commons license. [1]\" with "
        "\"[1] https://creativecommons.org/licenses/by/2.0/\"; "
        "\"Attribution: Some rights reserved by danielbuechele [2]\"",
        "sklearn/datasets/images/README.txt (also returned as load_sample_images().DESCR)",
    ),
    (
        "sklearn-flower.jpg", "scikit-learn", "sklearn.datasets.images", "flower.jpg",
        "sklearn.datasets.load_sample_image('flower.jpg')",
        "Flickr user vultilion (https://www.flickr.com/photos/vultilion/6056698931/), "
        "retrieved 2011-08-21 by Robert Layton; flower close-up. NOTE: the README's "
        "attribution line says 'danielbuechele' but its link [2] and photo URL [3] are "
        "vultilion's; the photo URL is taken as authoritative",
        "CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/): "
        "\"Released under a creative commons license. [1]\" with "
        "\"[1] https://creativecommons.org/licenses/by/2.0/\"",
        "sklearn/datasets/images/README.txt (also returned as load_sample_images().DESCR)",
    ),
]


def _skimage_expected_sha256(name: str) -> str:
    from skimage.data._registry import registry  # plain dict of hashes, no network

    return registry[f"data/{name}"]


def _read_source(pkg: str, name: str) -> bytes:
    path = resources.files(pkg) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{pkg}/{name} is not shipped in the installed package; refusing to download it"
        )
    data = path.read_bytes()
    if pkg == "skimage.data":
        got = hashlib.sha256(data).hexdigest()
        want = _skimage_expected_sha256(name)
        if got != want:
            raise ValueError(f"{pkg}/{name}: sha256 {got} != registry {want}")
    return data


def _process(data: bytes) -> tuple[bytes, tuple[int, int], tuple[int, int], str]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        mode = im.mode
        orig_size = im.size
        rgb = im.convert("RGB")
    w, h = rgb.size
    longer = max(w, h)
    if longer > MAX_SIDE:
        scale = MAX_SIDE / longer
        # round half up, explicitly, so the size never depends on banker's rounding
        nw = MAX_SIDE if w == longer else max(1, int(w * scale + 0.5))
        nh = MAX_SIDE if h == longer else max(1, int(h * scale + 0.5))
        rgb = rgb.resize((nw, nh), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(
        buf,
        format="JPEG",
        quality=JPEG_QUALITY,
        subsampling="4:2:0",
        optimize=False,
        progressive=False,
    )
    return buf.getvalue(), orig_size, rgb.size, mode


def build() -> tuple[dict[str, bytes], list[dict]]:
    files: dict[str, bytes] = {}
    prov: list[dict] = []
    for out, package, pkg, name, func, origin, licence, lic_src in SOURCES:
        src = _read_source(pkg, name)
        jpg, (ow, oh), (w, h), mode = _process(src)
        files[out] = jpg
        prov.append(
            {
                "file": out,
                "source": f"{package}: {pkg.replace('.', '/')}/{name} ({func})",
                "source_sha256": hashlib.sha256(src).hexdigest(),
                "source_mode": mode,
                "original_width": ow,
                "original_height": oh,
                "origin": origin,
                "licence": licence,
                "licence_stated_in": lic_src,
                "sha256": hashlib.sha256(jpg).hexdigest(),
                "bytes": len(jpg),
                "width": w,
                "height": h,
            }
        )
    return files, prov


def _provenance_bytes(prov: list[dict]) -> bytes:
    return (json.dumps(prov, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify stored files instead of writing")
    args = ap.parse_args(argv)

    files, prov = build()
    prov_bytes = _provenance_bytes(prov)

    if args.check:
        bad = [n for n, b in files.items() if not (OUT_DIR / n).is_file()
               or (OUT_DIR / n).read_bytes() != b]
        if not PROVENANCE.is_file() or PROVENANCE.read_bytes() != prov_bytes:
            bad.append(PROVENANCE.name)
        extra = sorted({p.name for p in OUT_DIR.iterdir()} - set(files)) if OUT_DIR.is_dir() else []
        for n in bad:
            print(f"differs: {n}")
        for n in extra:
            print(f"unexpected: images/{n}")
        return 1 if bad or extra else 0

    OUT_DIR.mkdir(exist_ok=True)
    for p in OUT_DIR.iterdir():
        if p.is_file() and p.name not in files:
            p.unlink()
    for name, data in files.items():
        (OUT_DIR / name).write_bytes(data)
    PROVENANCE.write_bytes(prov_bytes)
    for rec in prov:
        print(f"images/{rec['file']:25s} {rec['width']}x{rec['height']:<4d} "
              f"{rec['bytes']:7d} B  {rec['sha256'][:16]}")
    print(f"total {sum(len(b) for b in files.values())} bytes in {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
