"""Does merging a LoRA make block-wise INT4 (RTN, as MatMulNBits stores it) lose more of a weight matrix?

A 2048x2048 matrix of init scale plus a rank-64 delta of growing size (rsLoRA scale 4 / 8 as in lofi_v15 at r=64):
relative L2 error of the dequantized matrix, symmetric and asymmetric, blocks of 32 and 16 inputs. The base matrix
is drawn three ways, since trained weights are not Gaussian: Gaussian; heavy-tailed (Student t, 3 degrees of
freedom); Gaussian with 1% of input columns 10x larger (outlier features, as trained transformers grow).
Context: the full-size rehearsal's 2B INT4 export missed its parity gate after merging (benchmarks/NOTES.md).

    python benchmarks/int4_weight_error.py
"""
import numpy as np


def rtn(w: np.ndarray, block: int, symmetric: bool) -> np.ndarray:
    """Round-to-nearest 4-bit per block of `block` input columns, dequantized."""
    wb = w.reshape(w.shape[0], -1, block)
    if symmetric:
        scale = np.abs(wb).max(-1, keepdims=True) / 7.0
        q = np.clip(np.round(wb / scale), -8, 7) * scale
    else:
        lo, hi = wb.min(-1, keepdims=True), wb.max(-1, keepdims=True)
        scale = (hi - lo) / 15.0
        zero = np.round(-lo / scale)
        q = (np.clip(np.round(wb / scale) + zero, 0, 15) - zero) * scale
    return q.reshape(w.shape)


def base_matrix(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal((n, n)) * 0.02
    if kind == "student-t3":
        return rng.standard_t(3, (n, n)) * 0.02 / np.sqrt(3.0)  # same std as the Gaussian
    w = rng.standard_normal((n, n)) * 0.02
    w[:, rng.choice(n, n // 100, replace=False)] *= 10.0
    return w


def main() -> None:
    rng = np.random.default_rng(0)
    n, r = 2048, 64
    a = rng.uniform(-1, 1, (r, n)) * np.sqrt(3 / n)
    print("| base | B std | delta / base (L2) | sym, block 32 | asym, block 32 | sym, block 16 | asym, block 16 |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("gaussian", "student-t3", "outlier-columns"):
        base = base_matrix(kind, n, rng)
        for b_std in (0.0, 0.05, 0.2, 1.0):
            merged = base + 0.5 * (rng.standard_normal((n, r)) * b_std) @ a
            errs = [np.linalg.norm(rtn(merged, blk, sym) - merged) / np.linalg.norm(merged)
                    for blk in (32, 16) for sym in (True, False)]
            ratio = np.linalg.norm(merged - base) / np.linalg.norm(base)
            print(f"| {kind} | {b_std} | {ratio:.2f} | " + " | ".join(f"{e:.4f}" for e in errs) + " |")


if __name__ == "__main__":
    main()
