//! The FNO as a contract: shapes, canonical weight names, and the exact forward, independent of
//! any framework.
//!
//! Everything that touches a model's weights agrees on this file: the trainer (burn) exports its
//! parameters under these names and shapes, the ONNX writer lays them out as initializers, the
//! CCM merge combines them tensor by tensor, and the runtimes run the same arithmetic.
//!
//! ## The forward, for one sample
//!
//! Input: the last `T_in` frames `x` (`T_in·C` channels, `n × n`, the most recent last).
//!
//! 1. normalise: `z_c = (x_c − mean[c mod C]) / std[c mod C]`;
//! 2. append the grid: two channels with the cell-centre coordinates `(j + ½)/n` along `x`
//!    (`w`, fastest axis) and along `y` (`h`): `C_in = T_in·C + 2` channels (a
//!    parameter-conditioned model appends one more, constant, plane: the regime coordinate);
//! 3. lift: `v = lift.weight · z + lift.bias` per cell (`width × C_in`);
//! 4. for each layer `l`: `v ← K_l(v) + W_l v + b_l`, then GELU (tanh form) except after the last
//!    layer, where `K_l` is the truncated spectral convolution below;
//! 5. project: `q = proj2.weight · GELU(proj1.weight · v + proj1.bias) + proj2.bias` (`C` channels);
//! 6. output (the next frame): `y_c = x_last,c + std[c] · q_c`, a residual step in physical units.
//!
//! The spectral convolution keeps the rows `kh ∈ K = [0, m) ∪ [n − m, n)` (both corners along `h`)
//! and the columns `kw ∈ [0, m)` of the real 2-D FFT, mixes channels per mode with complex weights
//! `(weight_re + i·weight_im)[i, o, r, kw]` (`r` indexes `K` in order), and transforms back exactly
//! as numpy's `irfft2` does (an inverse complex FFT along `h`, then a real inverse along `w` that
//! counts columns `kw ≥ 1` twice and keeps only the real part of column 0). It is written as real
//! matrix products with fixed cosine/sine bases ([`DftBases`]) so every ONNX runtime runs it.

use serde::{Deserialize, Serialize};

/// Hyper-parameters of an FNO expert. Everything a weight shape depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FnoConfig {
    /// State channels `C`.
    pub channels: usize,
    /// Input frames `T_in`.
    pub t_in: usize,
    /// Grid side `n` (the model is tied to it through the DFT bases).
    pub n: usize,
    /// Channel width of the Fourier layers.
    pub width: usize,
    /// Kept modes `m` per axis (rows on both corners, so `2m` rows and `m` columns).
    pub modes: usize,
    /// Fourier layers `L`.
    pub layers: usize,
    /// Hidden width of the projection.
    pub hidden: usize,
    /// Extra input channels holding the regime coordinate `s(p)` as a constant plane: 0 for
    /// every CCM expert (the merge needs experts blind to `p`), 1 for the parameter-conditioned
    /// baseline the evaluation compares CCM with. Left out of the JSON when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub conditioning: usize,
}

fn is_zero(x: &usize) -> bool {
    *x == 0
}

/// Why an FNO configuration is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid FNO configuration: {0}")]
pub struct FnoConfigError(pub String);

impl FnoConfig {
    /// Channels entering the lifting layer: `T_in·C` state channels, 2 grid channels and the
    /// conditioning channels.
    pub fn in_channels(&self) -> usize {
        self.t_in * self.channels + 2 + self.conditioning
    }

    /// Rows of the truncated spectrum (`2m`).
    pub fn rows(&self) -> usize {
        2 * self.modes
    }

    /// Checks the sizes fit together.
    pub fn validate(&self) -> Result<(), FnoConfigError> {
        let bad = |m: String| Err(FnoConfigError(m));
        if self.channels == 0
            || self.t_in == 0
            || self.width == 0
            || self.layers == 0
            || self.hidden == 0
        {
            return bad(format!("every size must be positive: {self:?}"));
        }
        if self.modes == 0 || 2 * self.modes > self.n {
            return bad(format!(
                "modes = {} must be in 1..={} for a {}-cell grid (both row corners must fit; columns stay below Nyquist)",
                self.modes,
                self.n / 2,
                self.n
            ));
        }
        Ok(())
    }

    /// The trainable tensors, in canonical order, with their shapes.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (w, c) = (self.width, self.channels);
        let mut v = vec![
            ("lift.weight".to_string(), vec![w, self.in_channels()]),
            ("lift.bias".to_string(), vec![w]),
        ];
        for l in 0..self.layers {
            let spec = vec![w, w, self.rows(), self.modes];
            v.push((format!("layers.{l}.spectral.weight_re"), spec.clone()));
            v.push((format!("layers.{l}.spectral.weight_im"), spec));
            v.push((format!("layers.{l}.bypass.weight"), vec![w, w]));
            v.push((format!("layers.{l}.bypass.bias"), vec![w]));
        }
        v.push(("proj1.weight".to_string(), vec![self.hidden, w]));
        v.push(("proj1.bias".to_string(), vec![self.hidden]));
        v.push(("proj2.weight".to_string(), vec![c, self.hidden]));
        v.push(("proj2.bias".to_string(), vec![c]));
        v
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.param_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Multiply–adds of one forward pass of one sample (the matrix products; elementwise work
    /// is left out). Used for the roofline figures.
    pub fn forward_macs(&self) -> u64 {
        let (n, w, m) = (self.n as u64, self.width as u64, self.modes as u64);
        let r = 2 * m;
        let cells = n * n;
        let lift = cells * w * self.in_channels() as u64;
        let spectral = 2 * w * n * n * m    // forward along w: cos and sin
            + 4 * w * r * n * m             // forward along h: four real products
            + 4 * r * m * w * w             // complex channel mixing per kept mode
            + 4 * w * n * r * m             // inverse along h
            + 2 * w * n * m * n; // inverse along w
        let bypass = cells * w * w;
        let proj = cells * (self.hidden as u64) * (w + self.channels as u64);
        lift + self.layers as u64 * (spectral + bypass) + proj
    }
}

/// Per-channel normalisation constants of a family (from its anchor training data). Shared by
/// all experts of the family, so merging leaves them untouched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean of each state channel.
    pub mean: Vec<f32>,
    /// Standard deviation of each state channel (> 0).
    pub std: Vec<f32>,
}

/// The fixed real bases of the truncated DFT, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct DftBases {
    /// `[n, m]`: `cos(2π w k / n)`, forward along `w`.
    pub fwd_w_cos: Vec<f32>,
    /// `[n, m]`: `sin(2π w k / n)`, forward along `w` (enters with a minus sign).
    pub fwd_w_sin: Vec<f32>,
    /// `[2m, n]`: `cos(2π k_r h / n)` for the kept rows `k_r`, forward along `h`.
    pub fwd_h_cos: Vec<f32>,
    /// `[2m, n]`: `sin(2π k_r h / n)`.
    pub fwd_h_sin: Vec<f32>,
    /// `[n, 2m]`: `cos(2π k_r h / n) / n`, inverse along `h`.
    pub inv_h_cos: Vec<f32>,
    /// `[n, 2m]`: `sin(2π k_r h / n) / n`.
    pub inv_h_sin: Vec<f32>,
    /// `[m, n]`: `c_k cos(2π k w / n) / n` with `c_0 = 1`, `c_k = 2`, inverse along `w`.
    pub inv_w_cos: Vec<f32>,
    /// `[m, n]`: `c_k sin(2π k w / n) / n` (enters with a minus sign).
    pub inv_w_sin: Vec<f32>,
}

/// The kept row frequencies `K = [0, m) ∪ [n − m, n)`, in storage order.
pub fn kept_rows(n: usize, m: usize) -> Vec<usize> {
    (0..m).chain(n - m..n).collect()
}

impl DftBases {
    /// Builds the bases for an `n × n` grid keeping `m` modes.
    pub fn new(n: usize, m: usize) -> Self {
        let two_pi = 2.0 * std::f64::consts::PI;
        let ang = |a: usize, b: usize| two_pi * ((a * b) % n) as f64 / n as f64;
        let rows = kept_rows(n, m);
        let nf = n as f64;
        let mut b = DftBases {
            fwd_w_cos: vec![0.0; n * m],
            fwd_w_sin: vec![0.0; n * m],
            fwd_h_cos: vec![0.0; 2 * m * n],
            fwd_h_sin: vec![0.0; 2 * m * n],
            inv_h_cos: vec![0.0; n * 2 * m],
            inv_h_sin: vec![0.0; n * 2 * m],
            inv_w_cos: vec![0.0; m * n],
            inv_w_sin: vec![0.0; m * n],
        };
        for w in 0..n {
            for k in 0..m {
                let a = ang(w, k);
                b.fwd_w_cos[w * m + k] = a.cos() as f32;
                b.fwd_w_sin[w * m + k] = a.sin() as f32;
                let c = if k == 0 { 1.0 } else { 2.0 };
                b.inv_w_cos[k * n + w] = (c * a.cos() / nf) as f32;
                b.inv_w_sin[k * n + w] = (c * a.sin() / nf) as f32;
            }
        }
        for (r, &k) in rows.iter().enumerate() {
            for h in 0..n {
                let a = ang(h, k);
                b.fwd_h_cos[r * n + h] = a.cos() as f32;
                b.fwd_h_sin[r * n + h] = a.sin() as f32;
                b.inv_h_cos[h * 2 * m + r] = (a.cos() / nf) as f32;
                b.inv_h_sin[h * 2 * m + r] = (a.sin() / nf) as f32;
            }
        }
        b
    }
}

/// The tanh form of GELU used everywhere in the model.
pub fn gelu(x: f64) -> f64 {
    const C: f64 = 0.797_884_560_802_865_4; // sqrt(2/π)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}
