"""Pictures for the CLI: the demo's four panels and fit.png for 1-, 2- and 3-D data.

matplotlib is imported here, lazily, with the Agg backend (no display needed).
"""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _centres(res) -> np.ndarray:
    """Bump centres (K, d) in data coordinates."""
    c = res.model.bumps.c.detach().cpu().numpy().T
    return c * res.ckpt["x_scale"].numpy() + res.ckpt["x_lo"].numpy()


def _grid(lo, hi, n):
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    return g0, g1, np.stack([g0.ravel(), g1.ravel()], 1)


def plot_demo(path, f, x, y, res, predict, n_grid: int = 160) -> None:
    """Target, fit, residual, and the path every bump centre wandered during fitting."""
    plt = _plt()
    g0, g1, pts = _grid((0, 0), (1, 1), n_grid)
    truth = f(pts).reshape(g0.shape)
    fit = predict(pts).reshape(g0.shape)
    resid = fit - truth
    vmax = float(np.abs(truth).max())
    ext = (0, 1, 0, 1)
    fig, axes = plt.subplots(2, 2, figsize=(11, 10), dpi=100, constrained_layout=True)
    kw = dict(origin="lower", extent=ext, cmap="RdBu_r", vmin=-vmax, vmax=vmax)

    ax = axes[0, 0]
    im = ax.imshow(truth, **kw)
    ax.set_title(f"target (noise-free); {len(res.train_idx)} noisy training points")
    fig.colorbar(im, ax=ax, shrink=0.85)

    ax = axes[0, 1]
    im = ax.imshow(fit, **kw)
    c = _centres(res)
    ax.plot(c[:, 0], c[:, 1], "k.", ms=4, label="bump centres")
    ax.legend(loc="upper right", fontsize=8)
    r2 = res.metrics["r2"]
    r2_txt = "n/a" if r2 is None else f"{r2:.3f}"
    ax.set_title(f"fit: {res.metrics['bumps']} bumps, held-out R$^2$ = {r2_txt}")
    fig.colorbar(im, ax=ax, shrink=0.85)

    ax = axes[1, 0]
    rmax = max(float(np.abs(resid).max()), 1e-12)
    im = ax.imshow(resid, origin="lower", extent=ext, cmap="PuOr_r", vmin=-rmax, vmax=rmax)
    ax.set_title(f"residual: fit - target (note the colour scale: \u00b1{rmax:.2g})")
    fig.colorbar(im, ax=ax, shrink=0.85)

    ax = axes[1, 1]
    ax.contour(g0, g1, truth, levels=12, colors="0.75", linewidths=0.6)
    paths = res.paths  # (T, 2, K)
    # Colour by final |m|: bumps doing real work (dark) hold still, idle ones (light) wander.
    mag = np.abs(res.model.bumps.m.detach().cpu().numpy())
    cmap = plt.get_cmap("magma_r")
    norm = plt.Normalize(0.0, float(mag.max()) or 1.0)
    for k in np.argsort(mag):  # strongest drawn last, on top
        col = cmap(0.15 + 0.85 * norm(mag[k]))
        ax.plot(paths[:, 0, k], paths[:, 1, k], "-", color=col, lw=1.0, alpha=0.85)
        ax.plot(paths[0, 0, k], paths[0, 1, k], "o", mfc="none", mec=col, ms=4)
        ax.plot(paths[-1, 0, k], paths[-1, 1, k], "o", color=col, ms=4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, shrink=0.85, label="final |m| of the bump")
    ax.set_title("centre paths: open circle = start, dot = end\n(grey: target contours)")
    for a in axes.flat:
        a.set_xlabel("x0")
        a.set_ylabel("x1")
    fig.suptitle(f"wandering demo: fit time {res.metrics['seconds']:.1f} s, {res.metrics['steps']} steps")
    fig.savefig(path)
    plt.close(fig)


def _r2_text(r2) -> str:
    return "n/a" if r2 is None else f"{r2:.3f}"


def plot_fit(path, table, res, n_grid: int = 120, max_outputs: int = 4) -> None:
    """fit.png: 1-D curve and points; 2-D target, fit, residual; 3-D slices.

    With several outputs, each of the first ``max_outputs`` gets its own row (1-D: its
    own panel) on its own colour scale; one output gives the single-output picture.
    """
    plt = _plt()
    x = table.x
    d = x.shape[1]
    multi = table.y.ndim == 2
    ys = table.y.reshape(len(x), -1)  # (n, P)
    y_names = list(table.y_names)
    rows = min(len(y_names), max_outputs) if multi else 1
    pred_fn = lambda p: res.predict(p).reshape(len(p), -1)  # noqa: E731  (m, P)
    bumps = res.metrics["bumps"]
    if multi:
        r2s = [res.metrics["outputs"][name]["r2"] for name in y_names[:rows]]
        titles = [f"{name}: {bumps} bumps, held-out R$^2$ = {_r2_text(r)}" for name, r in zip(y_names, r2s)]
        shown = f"outputs {', '.join(y_names[:rows])}"
        if rows < len(y_names):
            shown += f" (first {rows} of {len(y_names)})"
        suptitle = f"{bumps} shared bumps, mean held-out R$^2$ = {_r2_text(res.metrics['r2'])}; {shown}"
    else:
        titles = [f"{bumps} bumps, held-out R$^2$ = {_r2_text(res.metrics['r2'])}"]
    lo, hi = x.min(0), x.max(0)
    names = table.x_names
    if d == 1:
        fig, axes = plt.subplots(
            rows, 1, figsize=(9, 5 if rows == 1 else 3.5 * rows), dpi=100, constrained_layout=True, squeeze=False
        )
        gx = np.linspace(lo[0], hi[0], 600)[:, None]
        g_pred = pred_fn(gx)
        c = _centres(res)[:, 0]
        for r in range(rows):
            ax, y = axes[r, 0], ys[:, r]
            ax.plot(x[res.train_idx, 0], y[res.train_idx], ".", color="0.6", ms=3, label="train")
            if len(res.hold_idx):
                ax.plot(x[res.hold_idx, 0], y[res.hold_idx], ".", color="tab:orange", ms=4, label="held out")
            ax.plot(gx[:, 0], g_pred[:, r], "-", color="tab:blue", lw=2, label="fit")
            ax.plot(c, np.full_like(c, y.min()), "|", color="k", ms=12, label="bump centres")
            ax.set_xlabel(names[0])
            ax.set_ylabel(y_names[r])
            ax.legend(fontsize=8)
            ax.set_title(titles[r])
        if multi:
            fig.suptitle(suptitle)
    elif d == 2:
        fig, axes = plt.subplots(rows, 3, figsize=(16, 5 * rows), dpi=100, constrained_layout=True, squeeze=False)
        sel = np.random.default_rng(0).permutation(len(x))[:20000]  # keep triangulation quick
        pred = pred_fn(x[sel])
        g0, _g1, pts = _grid(lo, hi, n_grid)
        g_pred = pred_fn(pts)
        c = _centres(res)
        for r in range(rows):
            y = ys[:, r]
            label = f" {y_names[r]}" if multi else ""
            vmin, vmax = float(y.min()), float(y.max())
            ax = axes[r, 0]
            if len(np.unique(x[sel], axis=0)) >= 3:
                try:
                    t = ax.tricontourf(x[sel, 0], x[sel, 1], y[sel], levels=30, cmap="viridis", vmin=vmin, vmax=vmax)
                except (ValueError, RuntimeError):  # degenerate (e.g. collinear) points: show them as they are
                    t = ax.scatter(x[sel, 0], x[sel, 1], c=y[sel], s=6, cmap="viridis", vmin=vmin, vmax=vmax)
            else:
                t = ax.scatter(x[sel, 0], x[sel, 1], c=y[sel], s=6, cmap="viridis", vmin=vmin, vmax=vmax)
            fig.colorbar(t, ax=ax)
            ax.set_title(f"target{label} (interpolated between data points)")
            ax = axes[r, 1]
            im = ax.imshow(
                g_pred[:, r].reshape(g0.shape),
                origin="lower",
                extent=(lo[0], hi[0], lo[1], hi[1]),
                aspect="auto",
                cmap="viridis",
                vmin=vmin,
                vmax=vmax,
            )
            ax.plot(c[:, 0], c[:, 1], "w.", ms=5, mec="k", mew=0.5, label="bump centres")
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.legend(loc="upper right", fontsize=8)
            fig.colorbar(im, ax=ax)
            ax.set_title("fit: " + titles[r])
            ax = axes[r, 2]
            resid = pred[:, r] - y[sel]
            rmax = max(float(np.abs(resid).max()), 1e-12)
            sc = ax.scatter(x[sel, 0], x[sel, 1], c=resid, s=6, cmap="PuOr_r", vmin=-rmax, vmax=rmax)
            fig.colorbar(sc, ax=ax)
            ax.set_title(f"residual{label} at the data points (fit - data)")
        for a in axes.flat:
            a.set_xlabel(names[0])
            a.set_ylabel(names[1])
        if multi:
            fig.suptitle(suptitle)
    elif d == 3:
        qs = np.quantile(x[:, 2], [0.2, 0.5, 0.8])
        slab = 0.05 * max(hi[2] - lo[2], 1e-12)
        fig, axes = plt.subplots(rows, 3, figsize=(16, 5 * rows), dpi=100, constrained_layout=True, squeeze=False)
        g0, _g1, pts = _grid(lo, hi, n_grid)
        slices = [pred_fn(np.concatenate([pts, np.full((len(pts), 1), q)], 1)) for q in qs]
        nears = [np.flatnonzero(np.abs(x[:, 2] - q) < slab)[:300] for q in qs]  # few enough that the fit shows
        for r in range(rows):
            y = ys[:, r]
            vmin, vmax = float(y.min()), float(y.max())
            for ax, q, g_pred, near in zip(axes[r], qs, slices, nears):
                im = ax.imshow(
                    g_pred[:, r].reshape(g0.shape),
                    origin="lower",
                    extent=(lo[0], hi[0], lo[1], hi[1]),
                    aspect="auto",
                    cmap="viridis",
                    vmin=vmin,
                    vmax=vmax,
                )
                ax.scatter(
                    x[near, 0],
                    x[near, 1],
                    c=y[near],
                    s=12,
                    cmap="viridis",
                    vmin=vmin,
                    vmax=vmax,
                    edgecolors="k",
                    linewidths=0.3,
                )
                what = f"{y_names[r]}: fit" if multi else "fit"
                ax.set_title(f"{what} at {names[2]} = {q:.3g}; dots: data within \u00b1{slab:.2g}")
                ax.set_xlabel(names[0])
                ax.set_ylabel(names[1])
            fig.colorbar(im, ax=axes[r])
        fig.suptitle(suptitle if multi else titles[0])
    else:
        raise ValueError(f"plots are made for d <= 3, but got d = {d}")
    fig.savefig(path)
    plt.close(fig)
