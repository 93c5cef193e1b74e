"""Fit a colour picture with oriented Gaussian bumps.

Every pixel centre (column + 0.5, row + 0.5) is a 2-D point and its RGB colour three
outputs, so one sum of K bumps with magnitudes of shape (K, 3) draws the whole picture:
each bump has a centre, two scales, an angle and a colour, 8 numbers. ``BumpRegressor``
does the fitting (k-means start weighted by where a first least-squares fit errs,
least-squares colours, Adam on every pixel at each step, a final least-squares polish).
``--grow 0.25`` starts from a quarter of the bumps and grows the rest where the error stays
high during the first half of the steps (it helped astronaut and hurt coffee: off by default).

    python examples/fit_image.py                          # astronaut, 512 x 512, 10,000 bumps (minutes)
    python examples/fit_image.py --size 96 --bumps 300 --steps 150   # seconds
    python examples/fit_image.py --image coffee --out coffee_bumps.png

Needs scikit-image for the pictures and the PSNR (``pip install 'wandering[images]'``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wandering import BumpRegressor


def load_picture(name: str, width: int | None) -> np.ndarray:
    """One of scikit-image's bundled pictures as float RGB in [0, 1], (H, W, 3), optionally resized."""
    import skimage.data
    from skimage.transform import resize

    img = getattr(skimage.data, name)()[..., :3] / 255.0
    if width and width != img.shape[1]:
        img = np.clip(resize(img, (round(img.shape[0] * width / img.shape[1]), width), anti_aliasing=True), 0, 1)
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="astronaut", help="a picture in skimage.data (astronaut, coffee, ...)")
    ap.add_argument("--size", type=int, default=None, help="resize to this width first (default: full size)")
    ap.add_argument("--bumps", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument(
        "--grow",
        type=float,
        default=0.0,
        help="start with this fraction of the bumps and split the ones under the largest error until "
        "there are --bumps, in the first half of the steps (default 0: all bumps from the start, "
        "as benchmarks/fit_images.py)",
    )
    ap.add_argument("--shape", default="oriented", choices=["oriented", "axis"])
    ap.add_argument("--out", default=None, help="save the picture and its fit side by side to this PNG")
    args = ap.parse_args()

    img = load_picture(args.image, args.size)
    H, W, _ = img.shape
    rows, cols = np.mgrid[0:H, 0:W]
    x = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)  # (n, 2) pixel centres
    y = img.reshape(-1, 3)  # (n, 3) colours

    t0 = time.perf_counter()
    frac = args.grow
    grow = dict(grow_from=max(1, round(frac * args.bumps)), grow_every=max(1, args.steps // 20)) if frac else {}
    reg = BumpRegressor(args.bumps, shape=args.shape, steps=args.steps, batch=len(x), random_state=0, **grow)
    reg.fit(x, y)
    fit = np.clip(reg.predict(x).reshape(H, W, 3), 0, 1)
    seconds = time.perf_counter() - t0

    mse = float(np.mean((fit - img) ** 2))
    psnr = 10 * np.log10(1.0 / mse)
    print(
        f"{args.image} {W}x{H}: {args.bumps} {args.shape} bumps, {reg.n_params_:,} numbers "
        f"(the picture has {img.size:,}), PSNR {psnr:.2f} dB, {seconds:.1f} s"
    )

    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(8, 4.2 * H / W + 0.4), layout="constrained")
        for ax, pic, title in zip(axes, (img, fit), ("picture", f"{args.bumps} bumps, {psnr:.2f} dB")):
            ax.imshow(pic)
            ax.set_title(title)
            ax.axis("off")
        fig.savefig(args.out, dpi=100)
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
