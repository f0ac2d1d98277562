"""Independent reference for the Navier–Stokes solver (tests/navier_stokes.rs).

Written separately from the Rust solver, sharing only the equations: numpy's real FFTs
(rfft2/irfft2), the velocity from the stream function, the 2/3 rule, and *explicit* classical
RK4 on the whole right-hand side (viscosity included) with a small fixed step, instead of the
solver's integrating factor. Both converge to the PDE's solution, so they must agree closely.

Run: python3 tests/reference/ns_reference.py  (writes tests/reference/ns_reference.npy)
"""
import os
import numpy as np

N = 32
NU = 1.0e-3
AMP = 0.1
DT = 1.0e-3
TIMES = [0.5, 1.0, 2.0]

x = np.arange(N) / N
X, Y = np.meshgrid(x, x, indexing="xy")  # array[iy, ix]: y slowest, as in the solver
w0 = (np.sin(2 * np.pi * X) * np.cos(4 * np.pi * Y)
      + 0.5 * np.cos(2 * np.pi * (3 * X + Y))
      + 0.3 * np.sin(2 * np.pi * (X - 2 * Y)))
forcing = AMP * (np.sin(2 * np.pi * (X + Y)) + np.cos(2 * np.pi * (X + Y)))

k = np.fft.fftfreq(N, 1.0 / N)            # integer wavenumbers along y (full axis)
kr = np.fft.rfftfreq(N, 1.0 / N)          # along x (half axis)
KY, KX = np.meshgrid(k, kr, indexing="ij")
KX = 2 * np.pi * KX
KY = 2 * np.pi * KY
K2 = KX**2 + KY**2
K2_safe = np.where(K2 == 0, 1.0, K2)
cut = N // 3
keep = (np.abs(np.meshgrid(k, kr, indexing="ij")[0]) <= cut) & (np.abs(np.meshgrid(k, kr, indexing="ij")[1]) <= cut)
f_hat = np.fft.rfft2(forcing)


def rhs(w_hat):
    psi_hat = np.where(K2 == 0, 0.0, w_hat / K2_safe)
    u = np.fft.irfft2(1j * KY * psi_hat, s=(N, N))
    v = np.fft.irfft2(-1j * KX * psi_hat, s=(N, N))
    wx = np.fft.irfft2(1j * KX * w_hat, s=(N, N))
    wy = np.fft.irfft2(1j * KY * w_hat, s=(N, N))
    adv = np.fft.rfft2(-(u * wx + v * wy)) * keep
    return adv + f_hat - NU * K2 * w_hat


w_hat = np.fft.rfft2(w0) * keep
t = 0.0
out = []
for t_target in TIMES:
    steps = int(round((t_target - t) / DT))
    for _ in range(steps):
        a = rhs(w_hat)
        b = rhs(w_hat + 0.5 * DT * a)
        c = rhs(w_hat + 0.5 * DT * b)
        d = rhs(w_hat + DT * c)
        w_hat = w_hat + DT / 6.0 * (a + 2 * b + 2 * c + d)
    t = t_target
    out.append(np.fft.irfft2(w_hat, s=(N, N)))

here = os.path.dirname(os.path.abspath(__file__))
np.save(os.path.join(here, "ns_reference.npy"), np.stack(out))
print("wrote", len(out), "frames; max |w| =", [float(np.abs(o).max()) for o in out])
