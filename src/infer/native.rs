//! The native backend: the FNO forward of [`crate::fno::spec`] written out in Rust on
//! single-precision matrix products ([`super::gemm`], our unpacked kernels), for experts our
//! exporter wrote.
//!
//! Why a third runtime: a general ONNX runtime runs the truncated DFT as a chain of small
//! matrix products with generic kernels and re-optimises the graph whenever the weights change.
//! This one knows the architecture, so it
//!
//! * deploys a merge by copying the trainable tensors into its own buffer (no graph rebuild:
//!   the CCM readout deploys a merge per candidate α);
//! * runs each step on field buffers allocated once at construction, with matrix products that
//!   pack nothing, so a step allocates nothing (`tests/merge_alloc.rs`);
//! * orders the products so each is one large GEMM where the graph has many small ones (five
//!   per Fourier layer: each half of each 2-D DFT is one product, plus the bypass).
//!
//! It runs the same arithmetic as the spec (the same DFT bases, the tanh form of GELU, with the
//! exponential evaluated by a polynomial good to ~1e-7 relative), so it agrees with tract, ONNX
//! Runtime and the trainer to ~1e-6 (`tests/backends.rs`). Experts of another producer, or of
//! an architecture it does not know, go to tract or ORT.
//!
//! Data layout: a field of `c` channels on the `n × n` grid is `[c][h][w]`, row-major.

use super::gemm::{gemm, wide};
use super::onnx_model::OnnxExpert;
use super::{Backend, InferError, StepShape};
use crate::ccm::WeightSet;
use crate::fno::spec::{DftBases, FnoConfig, Normalization};

/// `e^x` for `f32`: `x = n·ln 2 + f` with `n` the nearest integer to `x·log₂e` and `f` taken
/// off in two parts (ln 2 split into a short high part and a low part, so `f` keeps its
/// precision for large `|x|`), then `2^n` from the exponent bits times a degree-6 Taylor
/// polynomial of `e^f` on `|f| ≤ ½ ln 2`. Relative error about 2e-7; branch-free, so loops
/// over it vectorise.
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375, exact in 9 bits
    const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 − LN2_HI
    // 1/k!
    const C: [f32; 7] = [
        1.0,
        1.0,
        0.5,
        0.166_666_67,
        0.041_666_668,
        0.008_333_334,
        0.001_388_889,
    ];
    // round to nearest by the 1.5·2²³ trick: `t + SHIFT` holds the integer in its low mantissa
    // bits, so the power of two comes from integer arithmetic on those bits (no float-to-int
    // conversion, which would keep the loop scalar)
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 87.0);
    let big = x * LOG2E + SHIFT;
    let n = big - SHIFT;
    let f = (x - n * LN2_HI) - n * LN2_LO;
    let p = C[0] + f * (C[1] + f * (C[2] + f * (C[3] + f * (C[4] + f * (C[5] + f * C[6])))));
    let bits = big.to_bits().wrapping_sub(SHIFT.to_bits());
    p * f32::from_bits(bits.wrapping_add(127) << 23)
}

/// The tanh form of GELU, `x·σ(2u)` with `u = √(2/π)(x + 0.044715x³)`, in place, at the
/// CPU's vector width.
fn gelu_in_place(xs: &mut [f32]) {
    const TWO_C: f32 = 2.0 * 0.797_884_6;
    const TWO_C_K: f32 = TWO_C * 0.044_715;
    wide(
        #[inline(always)]
        || {
            for x in xs.iter_mut() {
                let v = *x;
                let u2 = v * (v * v * TWO_C_K + TWO_C);
                *x = v / (1.0 + exp_fast(-u2));
            }
        },
    );
}

/// Offsets of the canonical tensors in the parameter buffer.
struct Layout {
    lift_w: usize,
    lift_b: usize,
    layers: Vec<LayerLayout>,
    proj1_w: usize,
    proj1_b: usize,
    proj2_w: usize,
    proj2_b: usize,
}

struct LayerLayout {
    spec_re: usize,
    spec_im: usize,
    bypass_w: usize,
    bypass_b: usize,
}

/// The fixed matrices of the forward, arranged for one GEMM per stage.
struct Bases {
    /// `[n, 2m]`: `cos | −sin`, forward along `w`.
    fwd_w: Vec<f32>,
    /// `[4m, n]`: `cos` rows over `sin` rows, forward along `h`.
    fwd_h: Vec<f32>,
    /// `[2n, 4m]`: inverse along `h`; rows `0..n` the real part (`cos/n | −sin/n`), rows
    /// `n..2n` the imaginary part (`sin/n | cos/n`).
    inv_h: Vec<f32>,
    /// `[2m, n]`: inverse along `w`; rows `0..m` of the real part (`c_k cos / n`), rows `m..2m`
    /// of the imaginary part (`−c_k sin / n`).
    inv_w: Vec<f32>,
}

impl Bases {
    fn new(n: usize, m: usize) -> Self {
        let b = DftBases::new(n, m);
        let r = 2 * m;
        let mut fwd_w = vec![0.0; n * r];
        for w in 0..n {
            for k in 0..m {
                fwd_w[w * r + k] = b.fwd_w_cos[w * m + k];
                fwd_w[w * r + m + k] = -b.fwd_w_sin[w * m + k];
            }
        }
        let mut fwd_h = b.fwd_h_cos.clone();
        fwd_h.extend_from_slice(&b.fwd_h_sin);
        let mut inv_h = vec![0.0; 2 * n * 2 * r];
        let (inv_h_re, inv_h_im) = inv_h.split_at_mut(n * 2 * r);
        for h in 0..n {
            for j in 0..r {
                let (c, s) = (b.inv_h_cos[h * r + j], b.inv_h_sin[h * r + j]);
                inv_h_re[h * 2 * r + j] = c;
                inv_h_re[h * 2 * r + r + j] = -s;
                inv_h_im[h * 2 * r + j] = s;
                inv_h_im[h * 2 * r + r + j] = c;
            }
        }
        let mut inv_w = b.inv_w_cos;
        inv_w.extend(b.inv_w_sin.iter().map(|x| -x));
        Bases {
            fwd_w,
            fwd_h,
            inv_h,
            inv_w,
        }
    }
}

/// Work buffers, allocated once.
struct Scratch {
    /// `[C_in][n²]`: the normalised state, then the grid channels.
    z: Vec<f32>,
    /// `[width][n²]`: the layer state.
    v: Vec<f32>,
    /// `[width][n²]`: the next layer state.
    next: Vec<f32>,
    /// `[width][n][2m]`: forward along `w` (`re | im` per row).
    xw: Vec<f32>,
    /// `[n][2·width·m]`: the same, rows `h`, columns `(channel, k)` of the real part, then of
    /// the imaginary part.
    xt: Vec<f32>,
    /// `[4m][2·width·m]`: `[cos; sin]` times `xt`.
    pq: Vec<f32>,
    /// `[2][width][2m·m]`: the mixed spectrum per output channel.
    p: Vec<f32>,
    /// `[2][width][2m·m]`: the spectrum (real, imaginary) per input channel.
    y: Vec<f32>,
    /// `[2][2m][width·m]`: the mixed spectrum, columns `(o, k)`.
    zs: Vec<f32>,
    /// `[2][n][width·m]`: inverse along `h`, real part over imaginary part.
    uri: Vec<f32>,
    /// `[width·n][2m]`: the same per output channel and row, real `k`s then imaginary.
    u: Vec<f32>,
    /// `[hidden][n²]`.
    hidden: Vec<f32>,
    /// `[C][n²]`.
    q_out: Vec<f32>,
}

/// The native FNO runtime (see the module docs).
pub struct NativeBackend {
    cfg: FnoConfig,
    norm: Normalization,
    shape: StepShape,
    /// The canonical tensors' names and shapes, in order.
    names: Vec<(String, usize)>,
    layout: Layout,
    params: Vec<f32>,
    deployed: bool,
    bases: Bases,
    s: Scratch,
}

impl NativeBackend {
    /// A backend for experts with `template`'s architecture, read from the metadata our
    /// exporter writes; nothing is deployed yet. An ONNX file without it (another producer) is
    /// refused with a pointer to tract and ORT.
    pub fn new(template: &OnnxExpert) -> Result<Self, InferError> {
        let meta = template.meta().ok_or_else(|| {
            InferError::Model(format!(
                "{} carries no ccm-twin FNO metadata: the native runtime only runs experts \
                 `ccm-twin export` wrote; use the tract or ort runtime for this model",
                template.path.display()
            ))
        })?;
        Self::for_config(&meta.config, &meta.normalization)
    }

    /// A backend for the architecture `cfg` with the normalisation `norm`.
    pub fn for_config(cfg: &FnoConfig, norm: &Normalization) -> Result<Self, InferError> {
        cfg.validate()
            .map_err(|e| InferError::Model(e.to_string()))?;
        if cfg.conditioning != 0 {
            return Err(InferError::Model(
                "a parameter-conditioned model is not a CCM expert; the native runtime runs \
                 CCM experts only"
                    .into(),
            ));
        }
        if norm.mean.len() != cfg.channels || norm.std.len() != cfg.channels {
            return Err(InferError::Model(format!(
                "normalisation for {} channels, the model has {}",
                norm.mean.len(),
                cfg.channels
            )));
        }
        let shapes = cfg.param_shapes();
        let mut offsets = Vec::with_capacity(shapes.len());
        let mut names = Vec::with_capacity(shapes.len());
        let mut at = 0;
        for (name, shape) in &shapes {
            let len: usize = shape.iter().product();
            offsets.push(at);
            names.push((name.clone(), len));
            at += len;
        }
        let mut next = offsets.iter().copied();
        let mut take = || next.next().expect("canonical layout");
        let (lift_w, lift_b) = (take(), take());
        let layers = (0..cfg.layers)
            .map(|_| LayerLayout {
                spec_re: take(),
                spec_im: take(),
                bypass_w: take(),
                bypass_b: take(),
            })
            .collect();
        let layout = Layout {
            lift_w,
            lift_b,
            layers,
            proj1_w: take(),
            proj1_b: take(),
            proj2_w: take(),
            proj2_b: take(),
        };
        let (n, m, w) = (cfg.n, cfg.modes, cfg.width);
        let cells = n * n;
        let state = cfg.t_in * cfg.channels;
        let mut z = vec![0.0; cfg.in_channels() * cells];
        let coord = |j: usize| (j as f32 + 0.5) / n as f32;
        for p in 0..cells {
            z[state * cells + p] = coord(p % n);
            z[(state + 1) * cells + p] = coord(p / n);
        }
        let r = 2 * m;
        Ok(NativeBackend {
            cfg: *cfg,
            norm: norm.clone(),
            shape: StepShape {
                channels: cfg.channels,
                t_in: cfg.t_in,
                n,
            },
            names,
            layout,
            params: vec![0.0; at],
            deployed: false,
            bases: Bases::new(n, m),
            s: Scratch {
                z,
                v: vec![0.0; w * cells],
                next: vec![0.0; w * cells],
                xw: vec![0.0; w * n * r],
                xt: vec![0.0; 2 * n * w * m],
                pq: vec![0.0; 4 * r * w * m],
                p: vec![0.0; 2 * r * w * m],
                y: vec![0.0; 2 * r * w * m],
                zs: vec![0.0; 2 * r * w * m],
                uri: vec![0.0; 2 * n * w * m],
                u: vec![0.0; w * n * r],
                hidden: vec![0.0; cfg.hidden * cells],
                q_out: vec![0.0; cfg.channels * cells],
            },
        })
    }

    /// Multiply–adds of one step (the matrix products), for throughput figures.
    pub fn macs_per_step(&self) -> u64 {
        self.cfg.forward_macs()
    }

    /// `out[o][p] = bias[o] + Σ_i weight[o][i]·input[i][p]` over `cells` cells.
    fn pointwise(
        params: &[f32],
        (wat, bat): (usize, usize),
        (out_ch, in_ch): (usize, usize),
        input: &[f32],
        out: &mut [f32],
        cells: usize,
    ) {
        let weight = &params[wat..wat + out_ch * in_ch];
        let bias = &params[bat..bat + out_ch];
        for (o, row) in out[..out_ch * cells].chunks_exact_mut(cells).enumerate() {
            row.fill(bias[o]);
        }
        gemm(out_ch, in_ch, cells, weight, input, out, true);
    }

    /// The truncated spectral convolution of layer `l` from `s.v` into `s.next` (overwritten).
    fn spectral(&mut self, l: usize) {
        let (n, m, w) = (self.cfg.n, self.cfg.modes, self.cfg.width);
        let r = 2 * m;
        let wm = w * m;
        let s = &mut self.s;
        let b = &self.bases;
        // forward along w: [(i, h), n] · [n, 2m] → [(i, h), re k | im k]
        gemm(w * n, n, r, &s.v, &b.fwd_w, &mut s.xw, false);
        // to rows h, columns (i, k) of the real part, then of the imaginary part
        let w2 = 2 * wm;
        for i in 0..w {
            for h in 0..n {
                let src = &s.xw[(i * n + h) * r..][..r];
                let row = &mut s.xt[h * w2..(h + 1) * w2];
                row[i * m..][..m].copy_from_slice(&src[..m]);
                row[wm + i * m..][..m].copy_from_slice(&src[m..]);
            }
        }
        // forward along h on the kept rows, one product: [cos; sin]·[Xr | Xi]
        gemm(2 * r, n, w2, &b.fwd_h, &s.xt, &mut s.pq, false);
        // Yr = cos·Xr + sin·Xi, Yi = cos·Xi − sin·Xr, stored per input channel: [i][r][k]
        let half = r * wm;
        let rm = r * m;
        let (yr, yi) = s.y.split_at_mut(half);
        for row in 0..r {
            let cos = &s.pq[row * w2..(row + 1) * w2];
            let sin = &s.pq[(r + row) * w2..(r + row + 1) * w2];
            for i in 0..w {
                let src = i * m;
                let dst = i * rm + row * m;
                for k in 0..m {
                    yr[dst + k] = cos[src + k] + sin[wm + src + k];
                    yi[dst + k] = cos[wm + src + k] - sin[src + k];
                }
            }
        }
        // channel mixing per mode: Z[o][r][k] = Σ_i Y[i][r][k]·W[i][o][r][k] (complex); the
        // inner loop runs over all 2m·m modes of a channel pair, contiguous in all three
        let ly = &self.layout.layers[l];
        let per = w * w * rm;
        let wre = &self.params[ly.spec_re..ly.spec_re + per];
        let wim = &self.params[ly.spec_im..ly.spec_im + per];
        let (zr, zi) = s.p.split_at_mut(half);
        zr.fill(0.0);
        zi.fill(0.0);
        wide(
            #[inline(always)]
            || {
                for i in 0..w {
                    let (yr_i, yi_i) = (&yr[i * rm..(i + 1) * rm], &yi[i * rm..(i + 1) * rm]);
                    for o in 0..w {
                        let at = (i * w + o) * rm;
                        let (ar, ai) = (&wre[at..at + rm], &wim[at..at + rm]);
                        let zr_o = &mut zr[o * rm..(o + 1) * rm];
                        for j in 0..rm {
                            zr_o[j] += yr_i[j] * ar[j] - yi_i[j] * ai[j];
                        }
                        let zi_o = &mut zi[o * rm..(o + 1) * rm];
                        for j in 0..rm {
                            zi_o[j] += yr_i[j] * ai[j] + yi_i[j] * ar[j];
                        }
                    }
                }
            },
        );
        // back to rows r, columns (o, k), real part over imaginary part
        let (zsr, zsi) = s.zs.split_at_mut(half);
        for o in 0..w {
            for row in 0..r {
                let src = o * rm + row * m;
                let dst = row * wm + o * m;
                zsr[dst..dst + m].copy_from_slice(&zr[src..src + m]);
                zsi[dst..dst + m].copy_from_slice(&zi[src..src + m]);
            }
        }
        // inverse along h, one product: [2n, 4m] · [Zr; Zi] → real rows h over imaginary
        // rows h, columns (o, k)
        gemm(2 * n, 2 * r, wm, &b.inv_h, &s.zs, &mut s.uri, false);
        // to rows (o, h), columns k (real, then imaginary)
        let (ur, ui) = s.uri.split_at(n * wm);
        for o in 0..w {
            for h in 0..n {
                let dst = &mut s.u[(o * n + h) * r..(o * n + h + 1) * r];
                dst[..m].copy_from_slice(&ur[h * wm + o * m..][..m]);
                dst[m..].copy_from_slice(&ui[h * wm + o * m..][..m]);
            }
        }
        // real inverse along w, one product for every output channel: [(o, h), 2m] · [2m, n]
        gemm(w * n, r, n, &s.u, &b.inv_w, &mut s.next, false);
    }
}

impl Backend for NativeBackend {
    fn name(&self) -> &'static str {
        "native"
    }

    fn shape(&self) -> StepShape {
        self.shape
    }

    /// Copies the canonical tensors of `weights` (found by name; other tensors, such as an ONNX
    /// expert's DFT bases, are not needed) into the backend's buffer. Allocates nothing.
    fn deploy(&mut self, weights: &WeightSet) -> Result<(), InferError> {
        // check everything first, so a bad set leaves the deployed model as it was
        for (name, len) in &self.names {
            let found = weights.get(name)?;
            if found.len() != *len {
                return Err(InferError::Model(format!(
                    "tensor {name} holds {} values, the architecture needs {len}",
                    found.len()
                )));
            }
        }
        let mut at = 0;
        for (name, len) in &self.names {
            self.params[at..at + len].copy_from_slice(weights.get(name)?);
            at += len;
        }
        self.deployed = true;
        Ok(())
    }

    fn step(&mut self, state: &[f32], out: &mut [f32]) -> Result<(), InferError> {
        let shape = self.shape;
        shape.check_input(state)?;
        shape.check_output(out)?;
        if !self.deployed {
            return Err(InferError::NotDeployed);
        }
        let cfg = self.cfg;
        let (n, c, w) = (cfg.n, cfg.channels, cfg.width);
        let cells = n * n;
        // normalise the state (the grid channels after it are fixed)
        for (ch, (dst, src)) in self.s.z[..cfg.t_in * c * cells]
            .chunks_exact_mut(cells)
            .zip(state.chunks_exact(cells))
            .enumerate()
        {
            let (mean, inv) = (self.norm.mean[ch % c], 1.0 / self.norm.std[ch % c]);
            for (d, x) in dst.iter_mut().zip(src) {
                *d = (x - mean) * inv;
            }
        }
        let lay = &self.layout;
        Self::pointwise(
            &self.params,
            (lay.lift_w, lay.lift_b),
            (w, cfg.in_channels()),
            &self.s.z,
            &mut self.s.v,
            cells,
        );
        for l in 0..cfg.layers {
            self.spectral(l);
            let ly = &self.layout.layers[l];
            let (bw, bb) = (ly.bypass_w, ly.bypass_b);
            let bias = &self.params[bb..bb + w];
            let s = &mut self.s;
            for (o, row) in s.next.chunks_exact_mut(cells).enumerate() {
                row.iter_mut().for_each(|x| *x += bias[o]);
            }
            gemm(
                w,
                w,
                cells,
                &self.params[bw..bw + w * w],
                &s.v,
                &mut s.next,
                true,
            );
            if l + 1 < cfg.layers {
                gelu_in_place(&mut s.next);
            }
            std::mem::swap(&mut s.v, &mut s.next);
        }
        let lay = &self.layout;
        Self::pointwise(
            &self.params,
            (lay.proj1_w, lay.proj1_b),
            (cfg.hidden, w),
            &self.s.v,
            &mut self.s.hidden,
            cells,
        );
        gelu_in_place(&mut self.s.hidden);
        Self::pointwise(
            &self.params,
            (lay.proj2_w, lay.proj2_b),
            (c, cfg.hidden),
            &self.s.hidden,
            &mut self.s.q_out,
            cells,
        );
        // residual step in physical units from the most recent frame
        let last = &state[(cfg.t_in - 1) * c * cells..];
        for ch in 0..c {
            let std = self.norm.std[ch];
            let range = ch * cells..(ch + 1) * cells;
            for ((o, x), q) in out[range.clone()]
                .iter_mut()
                .zip(&last[range.clone()])
                .zip(&self.s.q_out[range])
            {
                *o = x + std * q;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_exponential_is_accurate_to_single_precision() {
        let mut worst = 0.0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let exact = (x as f64).exp();
            let rel = ((exp_fast(x) as f64 - exact) / exact).abs();
            worst = worst.max(rel);
            x += 0.013;
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        // saturates instead of producing garbage far out
        assert!(exp_fast(-1000.0) >= 0.0 && exp_fast(-1000.0) < 1e-37);
        assert!(exp_fast(1000.0).is_finite());
    }

    #[test]
    fn gelu_matches_the_spec() {
        let mut xs: Vec<f32> = (0..2001).map(|i| -10.0 + 0.01 * i as f32).collect();
        let want: Vec<f64> = xs
            .iter()
            .map(|&x| crate::fno::spec::gelu(x as f64))
            .collect();
        gelu_in_place(&mut xs);
        for (got, want) in xs.iter().zip(&want) {
            assert!(
                (*got as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{got} vs {want}"
            );
        }
    }
}
