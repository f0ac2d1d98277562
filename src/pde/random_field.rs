//! Random initial conditions: Gaussian random fields on periodic grids and smoothed noise on
//! bounded ones. All draws come from a seeded ChaCha stream, so a seed gives the same field on
//! every machine.

use num_complex::Complex64;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::spectral::{Fft2, wavenumber};

/// The random stream of one trajectory.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `len` independent standard normal draws.
pub fn white_noise(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.sample(StandardNormal)).collect()
}

/// Spectrum of a periodic Gaussian random field on the unit torus with covariance
/// `σ² (−Δ + τ²)^(−α)`, zero mean, returned as the unnormalised FFT of the field (the
/// convention of [`Fft2`]). Modes with `|k| > n/3` on either axis are left out (2/3 rule).
pub fn periodic_grf_spectrum(
    rng: &mut ChaCha8Rng,
    fft: &mut Fft2,
    alpha: f64,
    tau: f64,
    sigma: f64,
) -> Vec<Complex64> {
    let n = fft.n();
    let mut z: Vec<Complex64> = white_noise(rng, n * n)
        .into_iter()
        .map(|x| Complex64::new(x, 0.0))
        .collect();
    fft.forward(&mut z);
    // FFT of unit white noise has variance n² per mode; the field Σ_k a_k ξ_k e^{2πik·x} with unit
    // ξ_k has unnormalised spectrum n²·a_k·ξ_k = n·a_k·FFT(noise)_k.
    let cut = (n / 3) as i64;
    let two_pi = 2.0 * std::f64::consts::PI;
    for iy in 0..n {
        let ky = wavenumber(iy, n);
        for ix in 0..n {
            let kx = wavenumber(ix, n);
            let idx = iy * n + ix;
            if (kx == 0 && ky == 0) || kx.abs() > cut || ky.abs() > cut {
                z[idx] = Complex64::default();
                continue;
            }
            let k2 = two_pi * two_pi * (kx * kx + ky * ky) as f64;
            let amp = sigma * (k2 + tau * tau).powf(-alpha / 2.0);
            z[idx] *= amp * n as f64;
        }
    }
    z
}

/// Smooth random field on an `n × n` bounded grid: white noise under a Gaussian filter of
/// standard deviation `length_cells` cells (mirror-reflected at the walls, as a no-flux wall
/// would), shifted to zero mean and scaled to unit standard deviation.
pub fn smooth_noise(rng: &mut ChaCha8Rng, n: usize, length_cells: f64) -> Vec<f64> {
    let mut f = white_noise(rng, n * n);
    if length_cells > 0.0 {
        let radius = (4.0 * length_cells).ceil() as i64;
        let kernel: Vec<f64> = (-radius..=radius)
            .map(|d| (-0.5 * (d as f64 / length_cells).powi(2)).exp())
            .collect();
        let reflect = |i: i64| -> usize {
            let m = n as i64;
            let mut i = i.rem_euclid(2 * m);
            if i >= m {
                i = 2 * m - 1 - i;
            }
            i as usize
        };
        let mut tmp = vec![0.0; n * n];
        // along x
        for j in 0..n {
            for i in 0..n {
                tmp[j * n + i] = kernel
                    .iter()
                    .enumerate()
                    .map(|(t, w)| w * f[j * n + reflect(i as i64 + t as i64 - radius)])
                    .sum();
            }
        }
        // along y
        for j in 0..n {
            for i in 0..n {
                f[j * n + i] = kernel
                    .iter()
                    .enumerate()
                    .map(|(t, w)| w * tmp[reflect(j as i64 + t as i64 - radius) * n + i])
                    .sum();
            }
        }
    }
    let len = f.len() as f64;
    let mean = f.iter().sum::<f64>() / len;
    let std = (f.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / len).sqrt();
    f.iter_mut().for_each(|x| *x = (*x - mean) / std);
    f
}

/// Bilinear interpolation of a cell-centred `n × n` field onto a cell-centred `m × m` grid over
/// the same square (values beyond the outer cell centres are held constant).
pub fn upsample_bilinear(f: &[f64], n: usize, m: usize) -> Vec<f64> {
    if n == m {
        return f.to_vec();
    }
    let coord = |i: usize| -> (usize, usize, f64) {
        let x = ((i as f64 + 0.5) * n as f64 / m as f64 - 0.5).clamp(0.0, (n - 1) as f64);
        let i0 = (x.floor() as usize).min(n - 2);
        (i0, i0 + 1, x - i0 as f64)
    };
    let mut out = vec![0.0; m * m];
    for j in 0..m {
        let (j0, j1, ty) = coord(j);
        for i in 0..m {
            let (i0, i1, tx) = coord(i);
            let a = f[j0 * n + i0] * (1.0 - tx) + f[j0 * n + i1] * tx;
            let b = f[j1 * n + i0] * (1.0 - tx) + f[j1 * n + i1] * tx;
            out[j * m + i] = a * (1.0 - ty) + b * ty;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_field_other_seed_other_field() {
        let a = smooth_noise(&mut rng(1), 16, 1.5);
        let b = smooth_noise(&mut rng(1), 16, 1.5);
        let c = smooth_noise(&mut rng(2), 16, 1.5);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|x| x * x).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12);
    }

    #[test]
    fn bilinear_upsampling_is_exact_for_linear_fields() {
        let n = 8;
        let f: Vec<f64> = (0..n * n)
            .map(|k| (k % n) as f64 + 2.0 * (k / n) as f64)
            .collect();
        let g = upsample_bilinear(&f, n, 2 * n);
        // interior fine cell centres map to coarse coordinate (i + 0.5)/2 − 0.5
        let x = (5.0 + 0.5) / 2.0 - 0.5;
        let y = (7.0 + 0.5) / 2.0 - 0.5;
        assert!((g[7 * 2 * n + 5] - (x + 2.0 * y)).abs() < 1e-12);
        assert_eq!(upsample_bilinear(&f, n, n), f);
    }

    #[test]
    fn grf_is_real_zero_mean_and_band_limited() {
        let n = 32;
        let mut fft = Fft2::new(n);
        let mut spec = periodic_grf_spectrum(&mut rng(3), &mut fft, 2.5, 7.0, 7f64.powf(1.5));
        assert_eq!(spec[0], Complex64::default());
        fft.inverse(&mut spec);
        let max_im = spec.iter().map(|z| z.im.abs()).fold(0.0, f64::max);
        let max_re = spec.iter().map(|z| z.re.abs()).fold(0.0, f64::max);
        assert!(
            max_im < 1e-12 * max_re.max(1.0),
            "field must be real: {max_im}"
        );
        assert!(max_re > 0.0);
    }
}
