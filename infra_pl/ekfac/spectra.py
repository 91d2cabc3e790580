"""TensorBoard views of fitted factors: eigenvalue spectra of A and S, Λ, damping per module.

A spectrum spanning many decades shows how much the damping matters; a Λ histogram far from the
Kronecker products' eigenvalues shows what the eigenvalue correction changed.
"""

from __future__ import annotations

from typing import Any

import torch


def log_spectra(writer: Any, factors: Any) -> None:
    """One figure (spectra of A, S and Λ per module), Λ histograms and damping scalars, at step 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, mod in factors.modules.items():
        short = name.replace("model.", "").replace("layers.", "L")
        for ax, values in zip(
            axes,
            (mod.eigen.activation_eigenvalues, mod.eigen.gradient_eigenvalues, mod.lambdas.flatten()),
        ):
            v = torch.sort(values.detach().double().cpu().clamp_min(1e-30), descending=True).values
            ax.semilogy(v.numpy(), label=short, lw=0.8)
        writer.add_histogram(f"ekfac/lambda_log10/{name}", torch.log10(mod.lambdas.detach().double().cpu().clamp_min(1e-30)), 0)
        writer.add_scalar(f"ekfac/damping/{name}", mod.damping, 0)
    for ax, title in zip(axes, ("eigenvalues of A", "eigenvalues of S", "Λ (eigenvalue correction)")):
        ax.set_title(title)
        ax.set_xlabel("rank")
    axes[0].legend(fontsize=5, ncol=2)
    fig.tight_layout()
    writer.add_figure("ekfac/spectra", fig, 0)
    plt.close(fig)
