//! The FNO of [`super::spec`] as a burn module, for training (feature `train`).
//!
//! The module runs exactly the forward written down in the spec, on a batch
//! `[B, T_in·C, n, n] → [B, C, n, n]`:
//!
//! * the truncated spectral convolution is the same chain of real matrix products with the fixed
//!   [`DftBases`] as the ONNX graph runs (no FFT op), so what is trained is what is exported;
//! * GELU is the tanh form, written as `x·σ(2u)` (the same function: `½(1 + tanh u) = σ(2u)`),
//!   which costs one fused activation instead of a cube, a tanh and four scalings;
//! * the DFT bases, the grid channels and the normalisation constants are plain tensors, not
//!   parameters: no gradient, no optimiser state, and never in a checkpoint.
//!
//! The trainable tensors carry the canonical names and shapes of
//! [`FnoConfig::param_shapes`] (`lift.weight` is `[width, C_in]`, a spectral weight is
//! `[Ci, Co, 2m, m]`), and each has a fixed [`ParamId`] (its canonical index), so an optimiser
//! state saved by one process applies to the same model rebuilt by another (`--resume`).
//! [`Fno::to_weights`] and [`Fno::from_weights`] convert to and from a [`WeightSet`] exactly.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use ccm_twin::fno::{FnoConfig, Normalization, model::{Fno, init_weights}};
//!
//! let cfg = FnoConfig { channels: 1, t_in: 1, n: 8, width: 4, modes: 2, layers: 1, hidden: 4,
//!     conditioning: 0 };
//! let norm = Normalization { mean: vec![0.0], std: vec![1.0] };
//! let device = Device::flex();
//! let model = Fno::from_weights(&cfg, &norm, &init_weights(&cfg, 7), &device).unwrap();
//! let y = model.forward(Tensor::zeros([2, 1, 8, 8], &device));
//! assert_eq!(y.dims(), [2, 1, 8, 8]);
//! ```

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData, activation};
use rand::Rng;

use super::spec::{DftBases, FnoConfig, FnoConfigError, Normalization};
use crate::ccm::{LayoutMismatch, WeightError, WeightSet};

/// Why a model could not be built from weights.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] FnoConfigError),
    /// The weights do not have the layout the configuration asks for.
    #[error("the weights do not fit the model configuration: {0}")]
    Layout(LayoutMismatch),
    /// A weight tensor is missing or malformed.
    #[error(transparent)]
    Weight(#[from] WeightError),
    /// The normalisation constants do not fit the configuration.
    #[error("normalisation: {0}")]
    Normalization(String),
}

/// A per-cell linear map `y = W x + b` over the channel axis (a 1×1 convolution).
#[derive(Module, Debug)]
pub struct Pointwise {
    /// `[out, in]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
}

impl Pointwise {
    /// `[B, in, n, n] → [B, out, n, n]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, ci, h, w] = x.dims();
        let co = self.weight.dims()[0];
        let weight = self.weight.val().unsqueeze::<3>(); // [1, out, in]
        let y = weight.matmul(x.reshape([b, ci, h * w])); // [B, out, h·w]
        let y = y + self.bias.val().reshape([1, co, 1]);
        y.reshape([b, co, h, w])
    }
}

/// The complex channel-mixing weights of one truncated spectral convolution.
#[derive(Module, Debug)]
pub struct SpectralConv {
    /// Real parts, `[Ci, Co, 2m, m]`.
    pub weight_re: Param<Tensor<4>>,
    /// Imaginary parts, `[Ci, Co, 2m, m]`.
    pub weight_im: Param<Tensor<4>>,
}

/// One Fourier layer: spectral convolution plus a pointwise bypass.
#[derive(Module, Debug)]
pub struct FnoLayer {
    /// `K_l`.
    pub spectral: SpectralConv,
    /// `W_l`, `b_l`.
    pub bypass: Pointwise,
}

/// The fixed tensors of the forward: DFT bases, grid channels, normalisation.
#[derive(Module, Debug)]
pub struct Constants {
    /// `[n, m]` forward along `w`, real part (`cos`).
    fwd_w_re: Tensor<2>,
    /// `[n, m]` forward along `w`, imaginary part (`−sin`).
    fwd_w_im: Tensor<2>,
    /// `[1, 2m, n]` forward along `h`, `cos`.
    fwd_h_cos: Tensor<3>,
    /// `[1, 2m, n]` forward along `h`, `sin`.
    fwd_h_sin: Tensor<3>,
    /// `[1, n, 2m]` inverse along `h`, `cos / n`.
    inv_h_cos: Tensor<3>,
    /// `[1, n, 2m]` inverse along `h`, `sin / n`.
    inv_h_sin: Tensor<3>,
    /// `[m, n]` inverse along `w`, `c_k cos / n`.
    inv_w_re: Tensor<2>,
    /// `[m, n]` inverse along `w`, `−c_k sin / n`.
    inv_w_im: Tensor<2>,
    /// `[1, 2, n, n]`: the cell-centre coordinates along `w`, then along `h`.
    grid: Tensor<4>,
    /// `[1, T_in·C, 1, 1]`: the channel means, repeated over the input frames.
    mean_in: Tensor<4>,
    /// `[1, T_in·C, 1, 1]`: `1 / std`, repeated over the input frames.
    inv_std_in: Tensor<4>,
    /// `[1, C, 1, 1]`: the channel standard deviations.
    std_out: Tensor<4>,
}

/// The FNO expert as a burn module. Build it with [`Fno::from_weights`] (see [`init_weights`]).
#[derive(Module, Debug)]
pub struct Fno {
    /// `lift.*`.
    pub lift: Pointwise,
    /// `layers.<l>.*`.
    pub layers: Vec<FnoLayer>,
    /// `proj1.*`.
    pub proj1: Pointwise,
    /// `proj2.*`.
    pub proj2: Pointwise,
    constants: Constants,
    #[module(skip)]
    config: FnoConfig,
    #[module(skip)]
    norm: Normalization,
}

/// The tanh form of GELU, `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`, computed as `x·σ(2u)`.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const TWO_C: f32 = 2.0 * 0.797_884_6; // 2·sqrt(2/π)
    const TWO_C_K: f32 = TWO_C * 0.044_715;
    let u2 = x.clone() * (x.clone().square() * TWO_C_K + TWO_C);
    x * activation::sigmoid(u2)
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Walks a weight set in canonical order, turning each tensor into a parameter.
struct Cursor<'a> {
    weights: &'a WeightSet,
    index: usize,
    device: &'a Device,
}

impl Cursor<'_> {
    fn next<const D: usize>(&mut self) -> Param<Tensor<D>> {
        let info = &self.weights.tensors()[self.index];
        let values = self.weights.get(&info.name).expect("listed tensor");
        let shape: [usize; D] = info.shape.as_slice().try_into().expect("layout checked");
        let t = tensor(values.to_vec(), shape, self.device);
        // Ids start at 1; the canonical index keeps them stable across processes, which the
        // saved optimiser state (keyed by id) relies on.
        let id = ParamId::from(self.index as u64 + 1);
        self.index += 1;
        let t = if t.is_autodiff() { t.require_grad() } else { t };
        Param::initialized(id, t)
    }

    fn pointwise(&mut self) -> Pointwise {
        Pointwise {
            weight: self.next(),
            bias: self.next(),
        }
    }
}

impl Constants {
    fn new(cfg: &FnoConfig, norm: &Normalization, device: &Device) -> Self {
        let (n, m) = (cfg.n, cfg.modes);
        let b = DftBases::new(n, m);
        let neg = |v: &[f32]| v.iter().map(|x| -x).collect::<Vec<f32>>();
        let coord = |j: usize| (j as f32 + 0.5) / n as f32;
        let mut grid = Vec::with_capacity(2 * n * n);
        grid.extend((0..n * n).map(|p| coord(p % n)));
        grid.extend((0..n * n).map(|p| coord(p / n)));
        let tiled = |f: &dyn Fn(usize) -> f32| -> Vec<f32> {
            (0..cfg.t_in * cfg.channels)
                .map(|ch| f(ch % cfg.channels))
                .collect()
        };
        let k = cfg.t_in * cfg.channels;
        Constants {
            fwd_w_re: tensor(b.fwd_w_cos, [n, m], device),
            fwd_w_im: tensor(neg(&b.fwd_w_sin), [n, m], device),
            fwd_h_cos: tensor(b.fwd_h_cos, [1, 2 * m, n], device),
            fwd_h_sin: tensor(b.fwd_h_sin, [1, 2 * m, n], device),
            inv_h_cos: tensor(b.inv_h_cos, [1, n, 2 * m], device),
            inv_h_sin: tensor(b.inv_h_sin, [1, n, 2 * m], device),
            inv_w_re: tensor(b.inv_w_cos, [m, n], device),
            inv_w_im: tensor(neg(&b.inv_w_sin), [m, n], device),
            grid: tensor(grid, [1, 2, n, n], device),
            mean_in: tensor(tiled(&|c| norm.mean[c]), [1, k, 1, 1], device),
            inv_std_in: tensor(tiled(&|c| 1.0 / norm.std[c]), [1, k, 1, 1], device),
            std_out: tensor(norm.std.clone(), [1, cfg.channels, 1, 1], device),
        }
    }
}

impl SpectralConv {
    /// `[B, Ci, n, n] → [B, Co, n, n]`, the truncated spectral convolution of the spec.
    fn forward(&self, v: Tensor<4>, k: &Constants) -> Tensor<4> {
        let [b, ci, n, _] = v.dims();
        let [_, co, r, m] = self.weight_re.dims();
        // forward along w: rows (b, i, h), columns kw
        let rows = v.reshape([b * ci * n, n]);
        let xr = rows
            .clone()
            .matmul(k.fwd_w_re.clone())
            .reshape([b * ci, n, m]);
        let xi = rows.matmul(k.fwd_w_im.clone()).reshape([b * ci, n, m]);
        // forward along h on the kept rows: (cos − i sin)(xr + i xi)
        let yr = k.fwd_h_cos.clone().matmul(xr.clone()) + k.fwd_h_sin.clone().matmul(xi.clone());
        let yi = k.fwd_h_cos.clone().matmul(xi) - k.fwd_h_sin.clone().matmul(xr);
        // channel mixing per mode: [modes, B, Ci] @ [modes, Ci, Co]
        let modes = r * m;
        let per_mode = |y: Tensor<3>| y.reshape([b, ci, modes]).permute([2, 0, 1]);
        let (yr, yi) = (per_mode(yr), per_mode(yi));
        let weight = |w: &Param<Tensor<4>>| w.val().reshape([ci, co, modes]).permute([2, 0, 1]);
        let (wr, wi) = (weight(&self.weight_re), weight(&self.weight_im));
        let zr = yr.clone().matmul(wr.clone()) - yi.clone().matmul(wi.clone());
        let zi = yr.matmul(wi) + yi.matmul(wr);
        let per_channel = |z: Tensor<3>| z.permute([1, 2, 0]).reshape([b * co, r, m]);
        let (zr, zi) = (per_channel(zr), per_channel(zi));
        // inverse along h: (cos + i sin)/n · (zr + i zi)
        let ur = k.inv_h_cos.clone().matmul(zr.clone()) - k.inv_h_sin.clone().matmul(zi.clone());
        let ui = k.inv_h_cos.clone().matmul(zi) + k.inv_h_sin.clone().matmul(zr);
        // real inverse along w: Re[(ur + i ui)(cos + i sin)] c_k / n
        let out = ur.reshape([b * co * n, m]).matmul(k.inv_w_re.clone())
            + ui.reshape([b * co * n, m]).matmul(k.inv_w_im.clone());
        out.reshape([b, co, n, n])
    }
}

impl Fno {
    /// Builds the module on `device` from weights in the canonical layout of `cfg`.
    ///
    /// On an autodiff device (`Device::flex().autodiff()`) every weight requires a gradient;
    /// on a plain device the module is for inference.
    pub fn from_weights(
        cfg: &FnoConfig,
        norm: &Normalization,
        weights: &WeightSet,
        device: &Device,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        check_normalization(cfg, norm)?;
        let layout = WeightSet::zeros(&cfg.param_shapes())?;
        layout.same_layout(weights).map_err(ModelError::Layout)?;
        let mut cur = Cursor {
            weights,
            index: 0,
            device,
        };
        let lift = cur.pointwise();
        let layers = (0..cfg.layers)
            .map(|_| FnoLayer {
                spectral: SpectralConv {
                    weight_re: cur.next(),
                    weight_im: cur.next(),
                },
                bypass: cur.pointwise(),
            })
            .collect();
        let proj1 = cur.pointwise();
        let proj2 = cur.pointwise();
        Ok(Fno {
            lift,
            layers,
            proj1,
            proj2,
            constants: Constants::new(cfg, norm, device),
            config: *cfg,
            norm: norm.clone(),
        })
    }

    /// The trained tensors in the canonical names, shapes and order of
    /// [`FnoConfig::param_shapes`].
    pub fn to_weights(&self) -> WeightSet {
        fn values<const D: usize>(p: &Param<Tensor<D>>) -> Vec<f32> {
            p.val()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 parameter")
        }
        let mut all = vec![values(&self.lift.weight), values(&self.lift.bias)];
        for l in &self.layers {
            all.push(values(&l.spectral.weight_re));
            all.push(values(&l.spectral.weight_im));
            all.push(values(&l.bypass.weight));
            all.push(values(&l.bypass.bias));
        }
        for p in [&self.proj1, &self.proj2] {
            all.push(values(&p.weight));
            all.push(values(&p.bias));
        }
        WeightSet::from_tensors(
            self.config
                .param_shapes()
                .into_iter()
                .zip(all)
                .map(|((name, shape), v)| (name, shape, v)),
        )
        .expect("the module has the canonical layout")
    }

    /// Its configuration.
    pub fn config(&self) -> &FnoConfig {
        &self.config
    }

    /// Its normalisation constants.
    pub fn normalization(&self) -> &Normalization {
        &self.norm
    }

    /// One step: `[B, T_in·C, n, n]` (physical units, most recent frame last) → the next frame
    /// `[B, C, n, n]`. For a model without conditioning channels.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_conditioned(x, None)
    }

    /// One step of a parameter-conditioned model: `cond` holds each sample's regime
    /// coordinates, `[B, conditioning]`, appended to the input as constant planes. `None` for
    /// a model without conditioning channels.
    ///
    /// # Panics
    /// If `cond` does not match the model's conditioning channels.
    pub fn forward_conditioned(&self, x: Tensor<4>, cond: Option<Tensor<2>>) -> Tensor<4> {
        let k = &self.constants;
        let cfg = &self.config;
        let [b, _, n, _] = x.dims();
        let c = cfg.channels;
        let last = x.clone().narrow(1, (cfg.t_in - 1) * c, c);
        let z = (x - k.mean_in.clone()) * k.inv_std_in.clone();
        let grid = k.grid.clone().expand([b, 2, n, n]);
        let mut parts = vec![z, grid];
        match cond {
            Some(cond) => {
                assert_eq!(cond.dims(), [b, cfg.conditioning], "conditioning input");
                let planes = cond.reshape([b, cfg.conditioning, 1, 1]);
                parts.push(planes.expand([b, cfg.conditioning, n, n]));
            }
            None => assert_eq!(
                cfg.conditioning, 0,
                "the model needs its conditioning input"
            ),
        }
        let z = Tensor::cat(parts, 1);
        let mut v = self.lift.forward(z);
        for (l, layer) in self.layers.iter().enumerate() {
            let s = layer.spectral.forward(v.clone(), k) + layer.bypass.forward(v);
            v = if l + 1 < self.layers.len() {
                gelu(s)
            } else {
                s
            };
        }
        let q = self.proj2.forward(gelu(self.proj1.forward(v)));
        last + q * k.std_out.clone()
    }
}

fn check_normalization(cfg: &FnoConfig, norm: &Normalization) -> Result<(), ModelError> {
    if norm.mean.len() != cfg.channels || norm.std.len() != cfg.channels {
        return Err(ModelError::Normalization(format!(
            "{} means and {} standard deviations for {} channels",
            norm.mean.len(),
            norm.std.len(),
            cfg.channels
        )));
    }
    if let Some(s) = norm.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(ModelError::Normalization(format!(
            "standard deviation {s} is not a positive number"
        )));
    }
    if let Some(m) = norm.mean.iter().find(|m| !m.is_finite()) {
        return Err(ModelError::Normalization(format!("mean {m} is not finite")));
    }
    Ok(())
}

/// Seeded initial weights in the canonical layout (drawn with ChaCha, so the same seed gives
/// the same weights on every machine and backend).
///
/// * pointwise layers (`lift`, `bypass`, `proj1`): weight and bias uniform in `±1/√fan_in`
///   (the Kaiming-uniform-like default of common frameworks);
/// * spectral weights: real and imaginary parts uniform in `[0, 1/(width·width))`, the scale of
///   the FNO paper's reference code;
/// * `proj2`: weight uniform in `±0.1/√hidden`, bias zero, so the untrained expert stays close
///   to persistence (`y ≈ x_last`) and the first steps do not have to undo a random residual.
pub fn init_weights(cfg: &FnoConfig, seed: u64) -> WeightSet {
    let mut rng = crate::pde::random_field::rng(seed ^ 0x464e_4f5f_494e_4954); // "FNO_INIT"
    let shapes = cfg.param_shapes();
    let spectral_scale = 1.0 / (cfg.width * cfg.width) as f32;
    WeightSet::from_tensors(shapes.into_iter().map(|(name, shape)| {
        let len: usize = shape.iter().product();
        let mut uniform =
            |lo: f32, hi: f32| -> Vec<f32> { (0..len).map(|_| rng.random_range(lo..hi)).collect() };
        let values = if name.contains(".spectral.") {
            uniform(0.0, spectral_scale)
        } else if name.starts_with("proj2.") {
            if name.ends_with(".bias") {
                vec![0.0; len]
            } else {
                let bound = 0.1 / (cfg.hidden as f32).sqrt();
                uniform(-bound, bound)
            }
        } else {
            let fan_in = match name.as_str() {
                "lift.weight" | "lift.bias" => cfg.in_channels(),
                "proj1.weight" | "proj1.bias" => cfg.width,
                _ => cfg.width, // bypass
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            uniform(-bound, bound)
        };
        (name, shape, values)
    }))
    .expect("canonical layout")
}

/// Rolls `model` forward autoregressively: `init` holds `B` samples of `T_in·C` frames
/// (`[B, T_in·C, n, n]` row-major), and `steps` frames are predicted for each; the result is
/// `[B, steps, C, n, n]` row-major. Runs without gradients.
pub fn rollout(model: &Fno, init: &[f32], batch: usize, steps: usize) -> Vec<f32> {
    rollout_conditioned(model, init, None, batch, steps)
}

/// [`rollout`] for a parameter-conditioned model: `cond` holds each sample's regime
/// coordinates (`[B, conditioning]` row-major), held fixed over the rollout.
pub fn rollout_conditioned(
    model: &Fno,
    init: &[f32],
    cond: Option<&[f32]>,
    batch: usize,
    steps: usize,
) -> Vec<f32> {
    let cfg = *model.config();
    let (c, n) = (cfg.channels, cfg.n);
    let frame = c * n * n;
    assert_eq!(init.len(), batch * cfg.t_in * frame, "rollout input size");
    let model = model.valid();
    let device = model.constants.grid.device();
    let cond = cond.map(|v| tensor(v.to_vec(), [batch, cfg.conditioning], &device));
    let mut x = tensor(init.to_vec(), [batch, cfg.t_in * c, n, n], &device);
    let mut out = vec![0.0f32; batch * steps * frame];
    for s in 0..steps {
        let y = model.forward_conditioned(x.clone(), cond.clone());
        let values = y
            .clone()
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 output");
        for b in 0..batch {
            out[(b * steps + s) * frame..(b * steps + s + 1) * frame]
                .copy_from_slice(&values[b * frame..(b + 1) * frame]);
        }
        x = if cfg.t_in == 1 {
            y
        } else {
            Tensor::cat(vec![x.narrow(1, c, (cfg.t_in - 1) * c), y], 1)
        };
    }
    out
}
