//! Two-dimensional FFTs on square periodic grids, built on `rustfft`.
//!
//! Layout is row-major with `y` slowest: index `iy·n + ix`. The forward transform is
//! unnormalised, the inverse divides by `n²`, so `inverse(forward(f)) = f`.

use std::sync::Arc;

use num_complex::Complex64;
use rustfft::{Fft, FftPlanner};

/// A planned 2-D transform of one size, with its scratch buffers.
pub struct Fft2 {
    n: usize,
    forward: Arc<dyn Fft<f64>>,
    inverse: Arc<dyn Fft<f64>>,
    scratch: Vec<Complex64>,
    transposed: Vec<Complex64>,
}

impl Fft2 {
    /// Plans transforms for an `n × n` grid.
    pub fn new(n: usize) -> Self {
        let mut planner = FftPlanner::new();
        let forward = planner.plan_fft_forward(n);
        let inverse = planner.plan_fft_inverse(n);
        let scratch_len = forward
            .get_inplace_scratch_len()
            .max(inverse.get_inplace_scratch_len());
        Fft2 {
            n,
            forward,
            inverse,
            scratch: vec![Complex64::default(); scratch_len],
            transposed: vec![Complex64::default(); n * n],
        }
    }

    /// Side of the grid.
    pub fn n(&self) -> usize {
        self.n
    }

    /// In-place forward transform (unnormalised).
    pub fn forward(&mut self, data: &mut [Complex64]) {
        let plan = Arc::clone(&self.forward);
        self.apply(&*plan, data);
    }

    /// In-place inverse transform, normalised by `1/n²`.
    pub fn inverse(&mut self, data: &mut [Complex64]) {
        let plan = Arc::clone(&self.inverse);
        self.apply(&*plan, data);
        let scale = 1.0 / (self.n * self.n) as f64;
        data.iter_mut().for_each(|z| *z *= scale);
    }

    fn apply(&mut self, plan: &dyn Fft<f64>, data: &mut [Complex64]) {
        let n = self.n;
        assert_eq!(data.len(), n * n, "Fft2 buffer size");
        plan.process_with_scratch(data, &mut self.scratch);
        transpose(data, &mut self.transposed, n);
        plan.process_with_scratch(&mut self.transposed, &mut self.scratch);
        transpose(&self.transposed, data, n);
    }
}

fn transpose(src: &[Complex64], dst: &mut [Complex64], n: usize) {
    const B: usize = 16;
    for jb in (0..n).step_by(B) {
        for ib in (0..n).step_by(B) {
            for j in jb..(jb + B).min(n) {
                for i in ib..(ib + B).min(n) {
                    dst[i * n + j] = src[j * n + i];
                }
            }
        }
    }
}

/// Signed integer wavenumber of FFT index `j` on a grid of `n` (`j ≥ n/2` maps to `j − n`).
pub fn wavenumber(j: usize, n: usize) -> i64 {
    if j < n / 2 {
        j as i64
    } else {
        j as i64 - n as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_single_mode() {
        let n = 12;
        let mut fft = Fft2::new(n);
        let f: Vec<Complex64> = (0..n * n)
            .map(|k| {
                let (x, y) = ((k % n) as f64 / n as f64, (k / n) as f64 / n as f64);
                Complex64::new(
                    (2.0 * std::f64::consts::PI * (2.0 * x + 3.0 * y)).cos(),
                    0.0,
                )
            })
            .collect();
        let mut g = f.clone();
        fft.forward(&mut g);
        // cos(2π(2x+3y)) has weight n²/2 at (kx, ky) = (2, 3) and (−2, −3).
        let at = |kx: i64, ky: i64| {
            g[(ky.rem_euclid(n as i64) as usize) * n + kx.rem_euclid(n as i64) as usize]
        };
        assert!((at(2, 3).re - (n * n) as f64 / 2.0).abs() < 1e-9);
        assert!((at(-2, -3).re - (n * n) as f64 / 2.0).abs() < 1e-9);
        assert!(at(3, 2).norm() < 1e-9);
        fft.inverse(&mut g);
        let err: f64 = f
            .iter()
            .zip(&g)
            .map(|(a, b)| (a - b).norm())
            .fold(0.0, f64::max);
        assert!(err < 1e-12);
    }
}
