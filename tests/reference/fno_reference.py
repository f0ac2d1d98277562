"""Independent reference for the FNO forward (src/fno/spec.rs), with numpy's rfft2/irfft2.

Builds a small FNO with seeded random weights, runs the forward of spec.rs on a random input
using np.fft.rfft2 / np.fft.irfft2 (not the cosine/sine bases the Rust code uses), and writes
the weights, the normalisation, the input and the output to tests/reference/fno_small/.
The Rust tests load them and check the reference forward, the ONNX export (tract) and the
trainer against this output, so a bug shared by our DFT bases, exporter and trainer cannot pass.

Run: python3 tests/reference/fno_reference.py
"""
import json
import os
import numpy as np

CFG = dict(channels=2, t_in=2, n=16, width=6, modes=4, layers=3, hidden=10)
rng = np.random.default_rng(20261130)
C, T, N, W, M, L, HID = (CFG[k] for k in ("channels", "t_in", "n", "width", "modes", "layers", "hidden"))
C_IN = T * C + 2


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


params = {}
params["lift.weight"] = rng.normal(0, 0.5, (W, C_IN))
params["lift.bias"] = rng.normal(0, 0.1, (W,))
for l in range(L):
    params[f"layers.{l}.spectral.weight_re"] = rng.normal(0, 1.0 / W, (W, W, 2 * M, M))
    params[f"layers.{l}.spectral.weight_im"] = rng.normal(0, 1.0 / W, (W, W, 2 * M, M))
    params[f"layers.{l}.bypass.weight"] = rng.normal(0, 0.4, (W, W))
    params[f"layers.{l}.bypass.bias"] = rng.normal(0, 0.1, (W,))
params["proj1.weight"] = rng.normal(0, 0.4, (HID, W))
params["proj1.bias"] = rng.normal(0, 0.1, (HID,))
params["proj2.weight"] = rng.normal(0, 0.3, (C, HID))
params["proj2.bias"] = rng.normal(0, 0.1, (C,))
params = {k: v.astype(np.float32) for k, v in params.items()}
mean = np.array([0.3, -0.2], dtype=np.float32)
std = np.array([1.5, 0.7], dtype=np.float32)
x = rng.normal(0, 1, (T * C, N, N)).astype(np.float32)

rows = list(range(M)) + list(range(N - M, N))


def spectral(v, wre, wim):
    vh = np.fft.rfft2(v)                       # [Ci, N, N//2+1]
    y = vh[:, rows, :M]                        # kept rows (both corners) and columns
    w = wre.astype(np.float64) + 1j * wim.astype(np.float64)
    o = np.einsum("irk,iork->ork", y, w)
    full = np.zeros((W, N, N // 2 + 1), dtype=complex)
    full[:, rows, :M] = o
    return np.fft.irfft2(full, s=(N, N))


def linear(wt, b, v):
    return np.einsum("oi,ihw->ohw", wt.astype(np.float64), v) + b.astype(np.float64)[:, None, None]


z = (x.astype(np.float64) - np.tile(mean, T)[:, None, None]) / np.tile(std, T)[:, None, None]
coord = (np.arange(N) + 0.5) / N
gx = np.broadcast_to(coord[None, :], (N, N))   # varies along w (fast axis)
gy = np.broadcast_to(coord[:, None], (N, N))   # varies along h
z = np.concatenate([z, gx[None], gy[None]], axis=0)
v = linear(params["lift.weight"], params["lift.bias"], z)
for l in range(L):
    k = spectral(v, params[f"layers.{l}.spectral.weight_re"], params[f"layers.{l}.spectral.weight_im"])
    b = linear(params[f"layers.{l}.bypass.weight"], params[f"layers.{l}.bypass.bias"], v)
    v = k + b
    if l < L - 1:
        v = gelu(v)
h = gelu(linear(params["proj1.weight"], params["proj1.bias"], v))
q = linear(params["proj2.weight"], params["proj2.bias"], h)
y = x[(T - 1) * C:].astype(np.float64) + std[:, None, None].astype(np.float64) * q

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fno_small")
os.makedirs(out, exist_ok=True)
for name, value in params.items():
    np.save(os.path.join(out, name + ".npy"), value)
np.save(os.path.join(out, "norm_mean.npy"), mean)
np.save(os.path.join(out, "norm_std.npy"), std)
np.save(os.path.join(out, "input.npy"), x)
np.save(os.path.join(out, "output.npy"), y)
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(CFG, f, indent=2)
    f.write("\n")
print("wrote", len(params), "tensors; |y| max", float(np.abs(y).max()), "|q| max", float(np.abs(q).max()))
