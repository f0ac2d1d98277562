//! A direct, unoptimised `f64` implementation of the forward defined in [`super::spec`].
//!
//! It uses complex exponentials computed on the spot, not the [`super::spec::DftBases`]
//! matrices, so it checks the bases, the trainer and the ONNX graph alike. Slow (fine for tests
//! on small grids); the runtimes are what the edge uses.

use num_complex::Complex64 as C;

use super::spec::{FnoConfig, Normalization, gelu, kept_rows};
use crate::ccm::{WeightError, WeightSet};

fn linear(weight: &[f32], bias: &[f32], input: &[Vec<f64>], out_ch: usize) -> Vec<Vec<f64>> {
    let in_ch = input.len();
    let cells = input[0].len();
    (0..out_ch)
        .map(|o| {
            (0..cells)
                .map(|p| {
                    bias[o] as f64
                        + (0..in_ch)
                            .map(|i| weight[o * in_ch + i] as f64 * input[i][p])
                            .sum::<f64>()
                })
                .collect()
        })
        .collect()
}

/// The truncated spectral convolution of one layer.
fn spectral(cfg: &FnoConfig, wre: &[f32], wim: &[f32], v: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let (n, m, width) = (cfg.n, cfg.modes, cfg.width);
    let rows = kept_rows(n, m);
    let r_len = rows.len();
    let e = |a: usize, b: usize, sign: f64| {
        C::from_polar(
            1.0,
            sign * 2.0 * std::f64::consts::PI * ((a * b) % n) as f64 / n as f64,
        )
    };
    // forward along w, then along h (kept rows only)
    let mut y = vec![vec![C::default(); r_len * m]; width];
    for (i, vi) in v.iter().enumerate() {
        let mut x = vec![C::default(); n * m];
        for h in 0..n {
            for k in 0..m {
                x[h * m + k] = (0..n).map(|w| vi[h * n + w] * e(k, w, -1.0)).sum();
            }
        }
        for (r, &kh) in rows.iter().enumerate() {
            for k in 0..m {
                y[i][r * m + k] = (0..n).map(|h| x[h * m + k] * e(kh, h, -1.0)).sum();
            }
        }
    }
    // complex channel mixing per mode
    let idx = |i: usize, o: usize, r: usize, k: usize| ((i * width + o) * r_len + r) * m + k;
    let mut out = vec![vec![0.0; n * n]; width];
    for (o, out_o) in out.iter_mut().enumerate() {
        let mut mixed = vec![C::default(); r_len * m];
        for r in 0..r_len {
            for k in 0..m {
                mixed[r * m + k] = (0..width)
                    .map(|i| {
                        y[i][r * m + k]
                            * C::new(wre[idx(i, o, r, k)] as f64, wim[idx(i, o, r, k)] as f64)
                    })
                    .sum();
            }
        }
        // inverse along h (complex), then the real inverse along w, as numpy's irfft2
        for h in 0..n {
            let z: Vec<C> = (0..m)
                .map(|k| {
                    rows.iter()
                        .enumerate()
                        .map(|(r, &kh)| mixed[r * m + k] * e(kh, h, 1.0))
                        .sum::<C>()
                        / n as f64
                })
                .collect();
            for w in 0..n {
                let mut acc = z[0].re;
                for (k, zk) in z.iter().enumerate().skip(1) {
                    acc += 2.0 * (zk * e(k, w, 1.0)).re;
                }
                out_o[h * n + w] = acc / n as f64;
            }
        }
    }
    out
}

/// One forward step: `x` holds `T_in·C` frames of `n × n` (most recent last); returns the next
/// frame (`C × n × n`).
pub fn forward(
    cfg: &FnoConfig,
    weights: &WeightSet,
    norm: &Normalization,
    x: &[f32],
) -> Result<Vec<f32>, WeightError> {
    let (n, c) = (cfg.n, cfg.channels);
    let cells = n * n;
    assert_eq!(x.len(), cfg.t_in * c * cells, "input size");
    let mut z: Vec<Vec<f64>> = (0..cfg.t_in * c)
        .map(|ch| {
            let (mean, std) = (norm.mean[ch % c] as f64, norm.std[ch % c] as f64);
            x[ch * cells..(ch + 1) * cells]
                .iter()
                .map(|&v| (v as f64 - mean) / std)
                .collect()
        })
        .collect();
    let coord = |j: usize| (j as f64 + 0.5) / n as f64;
    z.push((0..cells).map(|p| coord(p % n)).collect());
    z.push((0..cells).map(|p| coord(p / n)).collect());
    let mut v = linear(
        weights.get("lift.weight")?,
        weights.get("lift.bias")?,
        &z,
        cfg.width,
    );
    for l in 0..cfg.layers {
        let k = spectral(
            cfg,
            weights.get(&format!("layers.{l}.spectral.weight_re"))?,
            weights.get(&format!("layers.{l}.spectral.weight_im"))?,
            &v,
        );
        let b = linear(
            weights.get(&format!("layers.{l}.bypass.weight"))?,
            weights.get(&format!("layers.{l}.bypass.bias"))?,
            &v,
            cfg.width,
        );
        v = k
            .iter()
            .zip(&b)
            .map(|(kc, bc)| {
                kc.iter()
                    .zip(bc)
                    .map(|(a, b)| {
                        if l + 1 < cfg.layers {
                            gelu(a + b)
                        } else {
                            a + b
                        }
                    })
                    .collect()
            })
            .collect();
    }
    let mut hidden = linear(
        weights.get("proj1.weight")?,
        weights.get("proj1.bias")?,
        &v,
        cfg.hidden,
    );
    hidden.iter_mut().flatten().for_each(|x| *x = gelu(*x));
    let q = linear(
        weights.get("proj2.weight")?,
        weights.get("proj2.bias")?,
        &hidden,
        c,
    );
    let last = &x[(cfg.t_in - 1) * c * cells..];
    Ok((0..c * cells)
        .map(|p| (last[p] as f64 + norm.std[p / cells] as f64 * q[p / cells][p % cells]) as f32)
        .collect())
}
