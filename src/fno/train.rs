//! Training and scoring FNO experts (feature `train`).
//!
//! Training is library code: it reports through a [`Progress`] callback and never prints. The
//! pieces, from the bottom up:
//!
//! * [`Samples`] — the one-step training pairs of a set of trajectories (input: `T_in` frames,
//!   target: the next one), and the two-step windows of the unrolled phase;
//! * [`Trainer`] — a model, its Adam state and the schedule: one-step relative-L2 loss
//!   (`‖pred − target‖ / ‖target‖` per sample, mean over the batch), linear warm-up then cosine
//!   decay, and optionally a last phase with a two-step unrolled loss (the model fed its own
//!   first prediction), which trains it on the inputs it sees in a rollout;
//! * [`train`] — a whole run from a dataset directory into an expert directory, with per-epoch
//!   checkpoints that `resume` continues bit for bit;
//! * [`score`] — rollout, one-step and persistence errors of an expert on a dataset.
//!
//! **Reproducibility:** weights are initialised from a ChaCha stream ([`init_weights`]), each
//! epoch's order is a ChaCha shuffle seeded by `(seed, epoch)`, and the burn device is seeded
//! too; the same request gives the same weights, and a resumed run gives the weights of an
//! uninterrupted one (the checkpoint stores exact weights and Adam moments at an epoch boundary).
//!
//! **Normalisation:** an anchor computes per-channel mean and standard deviation over every
//! frame of its training data; fine-tuned experts inherit the anchor's unchanged, so every expert
//! of a family normalises identically and merging never touches them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use ndarray::{ArrayView5, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::expert::{
    self, DataProvenance, Expert, ExpertError, ExpertMeta, FromExpert, Role, TrainingRecord,
};
use super::model::{Fno, ModelError, init_weights, rollout};
use super::spec::{FnoConfig, Normalization};
use crate::ccm::WeightSet;
use crate::config::Family;
use crate::dataset::{Dataset, DatasetError, Split};

/// Why training or scoring failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The dataset could not be read.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// An expert could not be read or written.
    #[error(transparent)]
    Expert(#[from] ExpertError),
    /// The model could not be built.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The request does not fit together (family, role, split, architecture, data).
    #[error("{0}")]
    Request(String),
    /// The optimiser state could not be saved or restored.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "training diverged at epoch {epoch}, step {step}: loss = {loss}; lower the learning rate"
    )]
    Diverged {
        /// Epoch (1-based).
        epoch: usize,
        /// Global step.
        step: usize,
        /// The loss value.
        loss: f64,
    },
}

/// What the trainer reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Before the first step: the whole plan.
    Start {
        /// Epochs in the run.
        epochs: usize,
        /// Optimiser steps in the run.
        total_steps: usize,
        /// Steps already done (a resumed run).
        done_steps: usize,
    },
    /// After each optimiser step.
    Step {
        /// Epoch (1-based).
        epoch: usize,
        /// Global step (1-based).
        step: usize,
        /// The batch loss.
        loss: f64,
        /// The learning rate used.
        lr: f64,
    },
    /// After each epoch.
    Epoch {
        /// Epoch (1-based).
        epoch: usize,
        /// Mean batch loss over the epoch.
        loss: f64,
        /// Whether it used the unrolled two-step loss.
        unrolled: bool,
    },
}

/// Hyper-parameters of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Epochs in all (the unrolled ones included).
    pub epochs: usize,
    /// Of those, the last ones that use the two-step unrolled loss.
    pub unroll_epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Batch size.
    pub batch: usize,
    /// Linear warm-up steps; `None`: 5 % of the run, at most 200.
    pub warmup_steps: Option<usize>,
    /// The cosine decays to `lr · min_lr_factor`.
    pub min_lr_factor: f64,
    /// Seed of the initialisation (anchors) and of the shuffling.
    pub seed: u64,
}

impl TrainOptions {
    /// The defaults of a role: anchors start from scratch at `1e-3` for 40 epochs; fine-tunes
    /// start from the anchor at `3e-4` for 15 epochs.
    pub fn for_role(role: Role) -> Self {
        let (epochs, lr) = if role.is_fine_tune() {
            (15, 3e-4)
        } else {
            (40, 1e-3)
        };
        TrainOptions {
            epochs,
            unroll_epochs: 0,
            lr,
            batch: 8,
            warmup_steps: None,
            min_lr_factor: 0.01,
            seed: 0,
        }
    }

    fn check(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Request(m));
        if self.epochs == 0 || self.batch == 0 {
            return bad("epochs and batch must be positive".into());
        }
        if self.unroll_epochs > self.epochs {
            return bad(format!(
                "{} unrolled epochs out of {} epochs",
                self.unroll_epochs, self.epochs
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate {} must be positive", self.lr));
        }
        if !(0.0..=1.0).contains(&self.min_lr_factor) {
            return bad(format!(
                "min_lr_factor {} must be in [0, 1]",
                self.min_lr_factor
            ));
        }
        Ok(())
    }
}

/// The learning rate at (0-based) `step` of `total`: linear warm-up over `warmup` steps, then a
/// cosine from `lr` down to `lr · min_factor`.
pub fn learning_rate(step: usize, total: usize, warmup: usize, lr: f64, min_factor: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = (total - warmup.min(total)).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    let floor = lr * min_factor;
    floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Per-channel mean and standard deviation over every frame of `traj` (`[N, frames, C, n, n]`),
/// accumulated in `f64`. A constant channel gets `std = 1`.
pub fn compute_normalization(traj: ArrayView5<f32>) -> Normalization {
    let c = traj.shape()[2];
    let mut mean = Vec::with_capacity(c);
    let mut std = Vec::with_capacity(c);
    for ch in 0..c {
        let view = traj.index_axis(Axis(2), ch);
        let count = view.len() as f64;
        let m = view.iter().map(|&x| x as f64).sum::<f64>() / count;
        let var = view.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / count;
        let s = var.sqrt();
        mean.push(m as f32);
        std.push(if s > 1e-12 * m.abs().max(1.0) {
            s as f32
        } else {
            1.0
        });
    }
    Normalization { mean, std }
}

/// The training pairs of a set of trajectories, held as one contiguous copy.
#[derive(Debug, Clone)]
pub struct Samples {
    data: Vec<f32>,
    /// Per trajectory, the conditioning values of a parameter-conditioned model (empty: none).
    cond: Vec<f32>,
    cond_len: usize,
    trajectories: usize,
    frames: usize,
    frame_len: usize,
    t_in: usize,
}

impl Samples {
    /// Takes `traj` (`[N, frames, C, n, n]`) for a model with `t_in` input frames.
    pub fn new(traj: ArrayView5<f32>, t_in: usize) -> Result<Self, TrainError> {
        let [count, frames, c, n, n2] = traj.shape().try_into().expect("rank 5");
        if n != n2 {
            return Err(TrainError::Request(format!(
                "frames are {n}×{n2}; the FNO needs square grids"
            )));
        }
        if frames <= t_in {
            return Err(TrainError::Request(format!(
                "{frames} frames per trajectory leave no target after {t_in} input frames"
            )));
        }
        if count == 0 {
            return Err(TrainError::Request("no trajectories to train on".into()));
        }
        Ok(Samples {
            data: traj.iter().copied().collect(),
            cond: Vec::new(),
            cond_len: 0,
            trajectories: count,
            frames,
            frame_len: c * n * n,
            t_in,
        })
    }

    /// Attaches `per_trajectory` conditioning values to each trajectory (for a
    /// parameter-conditioned model: its regime coordinate).
    pub fn with_conditions(mut self, values: Vec<f32>, per_trajectory: usize) -> Self {
        assert_eq!(
            values.len(),
            self.trajectories * per_trajectory,
            "conditions"
        );
        self.cond = values;
        self.cond_len = per_trajectory;
        self
    }

    /// Number of one-step pairs (`steps = 1`) or `steps`-step windows.
    pub fn len(&self, steps: usize) -> usize {
        self.trajectories * (self.frames + 1).saturating_sub(self.t_in + steps)
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.len(1) == 0
    }

    /// `(trajectory, first frame)` of window `index` of length `t_in + steps`.
    fn window(&self, index: usize, steps: usize) -> (usize, usize) {
        let per = self.frames + 1 - self.t_in - steps;
        (index / per, index % per)
    }

    /// Gathers a batch: the `T_in` input frames, the `steps` following target frames, and the
    /// conditioning values (`[B, cond_len]`, empty without).
    fn batch(&self, indices: &[usize], steps: usize) -> (Vec<f32>, Vec<Vec<f32>>, Vec<f32>) {
        let f = self.frame_len;
        let mut input = Vec::with_capacity(indices.len() * self.t_in * f);
        let mut targets = vec![Vec::with_capacity(indices.len() * f); steps];
        let mut cond = Vec::with_capacity(indices.len() * self.cond_len);
        for &i in indices {
            let (tr, t) = self.window(i, steps);
            cond.extend_from_slice(&self.cond[tr * self.cond_len..(tr + 1) * self.cond_len]);
            let base = (tr * self.frames + t) * f;
            input.extend_from_slice(&self.data[base..base + self.t_in * f]);
            for (s, target) in targets.iter_mut().enumerate() {
                let at = base + (self.t_in + s) * f;
                target.extend_from_slice(&self.data[at..at + f]);
            }
        }
        (input, targets, cond)
    }
}

fn tensor4(values: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Mean over the batch of `‖pred − target‖ / ‖target‖`. `inv_norm` is `[B, 1]` with the
/// reciprocal target norms (a constant); the `1e-12` under the root keeps the gradient finite
/// at a perfect prediction.
fn relative_l2(pred: Tensor<4>, target: Tensor<4>, inv_norm: Tensor<2>) -> Tensor<1> {
    let [b, c, h, w] = pred.dims();
    let diff = (pred - target).reshape([b, c * h * w]) * inv_norm;
    (diff.square().sum_dim(1) + 1e-12).sqrt().mean()
}

fn inverse_norms(target: &[f32], batch: usize) -> Vec<f32> {
    let len = target.len() / batch;
    target
        .chunks(len)
        .map(|t| {
            let norm = t.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            (1.0 / norm.max(1e-30)) as f32
        })
        .collect()
}

/// State saved at the end of each epoch beside the weights and the Adam moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CheckpointState {
    epochs_done: usize,
    steps_done: usize,
    epoch_losses: Vec<f64>,
    seconds: f64,
    options: TrainOptions,
    config: FnoConfig,
    normalization: Normalization,
}

/// A model being trained: the burn module on an autodiff device, its Adam state and the
/// position in the schedule.
pub struct Trainer {
    model: Fno,
    optim: ModuleOptimizer,
    options: TrainOptions,
    device: Device,
    epochs_done: usize,
    steps_done: usize,
    epoch_losses: Vec<f64>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", self.model.config())
            .field("options", &self.options)
            .field("epochs_done", &self.epochs_done)
            .field("steps_done", &self.steps_done)
            .finish()
    }
}

const CHECKPOINT_DIR: &str = "checkpoint";
const CHECKPOINT_STATE: &str = "state.json";
const CHECKPOINT_OPTIM: &str = "optimizer.bpk";

impl Trainer {
    /// Starts from `weights` (the initialisation or the anchor) with a fresh Adam state.
    pub fn new(
        cfg: &FnoConfig,
        norm: &Normalization,
        weights: &WeightSet,
        options: TrainOptions,
    ) -> Result<Self, TrainError> {
        options.check()?;
        let device = Device::flex().autodiff();
        device.seed(options.seed);
        let model = Fno::from_weights(cfg, norm, weights, &device)?;
        Ok(Trainer {
            model,
            optim: Self::adam(),
            options,
            device,
            epochs_done: 0,
            steps_done: 0,
            epoch_losses: Vec::new(),
        })
    }

    fn adam() -> ModuleOptimizer {
        AdamConfig::new().with_epsilon(1e-8).init()
    }

    /// The current weights.
    pub fn weights(&self) -> WeightSet {
        self.model.to_weights()
    }

    /// The model.
    pub fn model(&self) -> &Fno {
        &self.model
    }

    /// Epochs done so far.
    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// Mean loss of each epoch done.
    pub fn epoch_losses(&self) -> &[f64] {
        &self.epoch_losses
    }

    /// Optimiser steps of the whole run on `samples`.
    pub fn total_steps(&self, samples: &Samples) -> usize {
        let b = self.options.batch;
        let one = samples.len(1).div_ceil(b);
        let two = samples.len(2).div_ceil(b);
        let o = &self.options;
        (o.epochs - o.unroll_epochs) * one + o.unroll_epochs * two
    }

    fn warmup(&self, total: usize) -> usize {
        self.options
            .warmup_steps
            .unwrap_or((total / 20).min(200))
            .min(total)
    }

    /// One optimiser step on the given windows; returns the batch loss.
    pub fn step(&mut self, samples: &Samples, indices: &[usize], unroll: bool, lr: f64) -> f64 {
        let cfg = *self.model.config();
        let (c, n, b) = (cfg.channels, cfg.n, indices.len());
        let steps = if unroll { 2 } else { 1 };
        let (input, targets, cond) = samples.batch(indices, steps);
        if cond.len() != b * cfg.conditioning {
            panic!(
                "the model takes {} conditioning value(s) per sample, the samples carry {}",
                cfg.conditioning, samples.cond_len
            );
        }
        let cond = (cfg.conditioning > 0).then(|| {
            Tensor::<2>::from_data(TensorData::new(cond, [b, cfg.conditioning]), &self.device)
        });
        let x = tensor4(input, [b, cfg.t_in * c, n, n], &self.device);
        let mut state = x;
        let mut loss: Option<Tensor<1>> = None;
        for target in targets {
            let inv = Tensor::<2>::from_data(
                TensorData::new(inverse_norms(&target, b), [b, 1]),
                &self.device,
            );
            let y = tensor4(target, [b, c, n, n], &self.device);
            let pred = self.model.forward_conditioned(state.clone(), cond.clone());
            let l = relative_l2(pred.clone(), y, inv);
            loss = Some(match loss {
                None => l,
                Some(acc) => acc + l,
            });
            state = if cfg.t_in == 1 {
                pred
            } else {
                Tensor::cat(vec![state.narrow(1, c, (cfg.t_in - 1) * c), pred], 1)
            };
        }
        let loss = loss.expect("at least one step") / steps as f32;
        let value = loss.clone().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        self.model = self.optim.step(lr, self.model.clone(), grads);
        self.steps_done += 1;
        value
    }

    /// Runs the next epoch (one-step or unrolled, as the schedule says); returns its mean loss.
    pub fn run_epoch(
        &mut self,
        samples: &Samples,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<f64, TrainError> {
        let o = self.options.clone();
        let epoch = self.epochs_done + 1;
        let unroll = epoch > o.epochs - o.unroll_epochs;
        let steps = if unroll { 2 } else { 1 };
        let mut order: Vec<usize> = (0..samples.len(steps)).collect();
        if order.is_empty() {
            return Err(TrainError::Request(format!(
                "no {steps}-step training windows in {} frames",
                samples.frames
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        order.shuffle(&mut rng);
        let total = self.total_steps(samples);
        let warmup = self.warmup(total);
        let mut sum = 0.0;
        let mut count = 0usize;
        for chunk in order.chunks(o.batch) {
            let lr = learning_rate(self.steps_done, total, warmup, o.lr, o.min_lr_factor);
            let loss = self.step(samples, chunk, unroll, lr);
            if !loss.is_finite() {
                return Err(TrainError::Diverged {
                    epoch,
                    step: self.steps_done,
                    loss,
                });
            }
            sum += loss;
            count += 1;
            progress(Progress::Step {
                epoch,
                step: self.steps_done,
                loss,
                lr,
            });
        }
        let mean = sum / count as f64;
        self.epochs_done = epoch;
        self.epoch_losses.push(mean);
        progress(Progress::Epoch {
            epoch,
            loss: mean,
            unrolled: unroll,
        });
        Ok(mean)
    }

    /// Writes weights, Adam moments and schedule position into `<dir>/checkpoint/`.
    pub fn save_checkpoint(&self, dir: &Path, seconds: f64) -> Result<(), TrainError> {
        let ck = dir.join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&ck).map_err(|source| ExpertError::Io {
            action: "cannot create",
            path: ck.clone(),
            source,
        })?;
        let weights = expert::weights_to_safetensors(&self.model.to_weights(), None);
        expert::write_atomic(&ck.join(expert::WEIGHTS_FILE), &weights)?;
        let optim_path = ck.join(CHECKPOINT_OPTIM);
        let bytes = self
            .optim
            .into_bytes()
            .map_err(|e| TrainError::Checkpoint {
                path: optim_path.clone(),
                reason: e.to_string(),
            })?;
        expert::write_atomic(&optim_path, &bytes)?;
        let state = CheckpointState {
            epochs_done: self.epochs_done,
            steps_done: self.steps_done,
            epoch_losses: self.epoch_losses.clone(),
            seconds,
            options: self.options.clone(),
            config: *self.model.config(),
            normalization: self.model.normalization().clone(),
        };
        let text = serde_json::to_string_pretty(&state).expect("state serialises") + "\n";
        expert::write_atomic(&ck.join(CHECKPOINT_STATE), text.as_bytes())?;
        Ok(())
    }

    /// Restores a trainer from `<dir>/checkpoint/`, continuing with `options` (whose epochs
    /// may differ from the saved run's; everything else must match). Returns it with the
    /// seconds already spent.
    pub fn resume(dir: &Path, options: TrainOptions) -> Result<(Self, f64), TrainError> {
        options.check()?;
        let ck = dir.join(CHECKPOINT_DIR);
        let state_path = ck.join(CHECKPOINT_STATE);
        let text = std::fs::read_to_string(&state_path).map_err(|source| ExpertError::Io {
            action: "cannot read (nothing to resume?)",
            path: state_path.clone(),
            source,
        })?;
        let state: CheckpointState =
            serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
                path: state_path.clone(),
                reason: e.to_string(),
            })?;
        let comparable = |o: &TrainOptions| TrainOptions {
            epochs: 0,
            unroll_epochs: 0,
            ..o.clone()
        };
        if comparable(&state.options) != comparable(&options) {
            return Err(TrainError::Request(format!(
                "--resume with different options: the checkpoint was made with {:?}, now {:?}",
                state.options, options
            )));
        }
        if state.epochs_done > options.epochs {
            return Err(TrainError::Request(format!(
                "the checkpoint is already at epoch {}, past the {} epochs asked for",
                state.epochs_done, options.epochs
            )));
        }
        let wpath = ck.join(expert::WEIGHTS_FILE);
        let bytes = std::fs::read(&wpath).map_err(|source| ExpertError::Io {
            action: "cannot read",
            path: wpath.clone(),
            source,
        })?;
        let weights =
            expert::weights_from_safetensors(&bytes, &state.config.param_shapes(), &wpath)?;
        let mut trainer = Trainer::new(&state.config, &state.normalization, &weights, options)?;
        let optim_path = ck.join(CHECKPOINT_OPTIM);
        let bytes = std::fs::read(&optim_path).map_err(|source| ExpertError::Io {
            action: "cannot read",
            path: optim_path.clone(),
            source,
        })?;
        trainer.optim = Self::adam()
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| TrainError::Checkpoint {
                path: optim_path,
                reason: e.to_string(),
            })?;
        trainer.epochs_done = state.epochs_done;
        trainer.steps_done = state.steps_done;
        trainer.epoch_losses = state.epoch_losses;
        Ok((trainer, state.seconds))
    }
}

/// Architecture sizes a user may choose (the rest follows from the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Architecture {
    /// Channel width of the Fourier layers.
    pub width: usize,
    /// Kept modes per axis.
    pub modes: usize,
    /// Fourier layers.
    pub layers: usize,
    /// Hidden width of the projection.
    pub hidden: usize,
}

impl Default for Architecture {
    fn default() -> Self {
        Architecture {
            width: 20,
            modes: 12,
            layers: 4,
            hidden: 64,
        }
    }
}

/// A training run from a dataset into an expert directory.
#[derive(Debug)]
pub struct TrainRequest<'a> {
    /// The family (must match the dataset).
    pub family: Family,
    /// The role (must match the dataset's split).
    pub role: Role,
    /// The dataset directory (recorded in `expert.json`).
    pub data_dir: &'a Path,
    /// The dataset.
    pub data: &'a Dataset,
    /// Oracle: keep only trajectories at this parameter value (relative tolerance `1e-9`).
    pub p_filter: Option<f64>,
    /// Fine-tunes: the anchor's directory and the anchor.
    pub from: Option<(&'a Path, &'a Expert)>,
    /// Anchors: the architecture (`None`: [`Architecture::default`]); fine-tunes take the
    /// anchor's and refuse a different one.
    pub architecture: Option<Architecture>,
    /// Hyper-parameters.
    pub options: TrainOptions,
    /// The expert directory to write.
    pub out: &'a Path,
    /// Continue from `<out>/checkpoint/`.
    pub resume: bool,
    /// Replace an expert or checkpoint already in `out` (otherwise refused).
    pub force: bool,
}

fn expected_split(role: Role) -> Split {
    match role {
        Role::Anchor => Split::Anchor,
        Role::Low => Split::Low,
        Role::High => Split::High,
        Role::Oracle => Split::Oracle,
        Role::Conditioned => Split::Anchor,
    }
}

/// Trains an expert as `req` asks and writes it to `req.out` (`weights.safetensors`,
/// `expert.json`, and the checkpoint). Returns the expert.
pub fn train(req: &TrainRequest, progress: &mut dyn FnMut(Progress)) -> Result<Expert, TrainError> {
    let started = Instant::now();
    let m = &req.data.manifest;
    let bad = |msg: String| Err(TrainError::Request(msg));
    if m.family != req.family.name() {
        return bad(format!(
            "the dataset is of family {}, not {}",
            m.family, req.family
        ));
    }
    if m.split != expected_split(req.role) {
        return bad(format!(
            "a {} expert trains on the '{}' split, but {} is the '{}' split",
            req.role,
            expected_split(req.role),
            req.data_dir.display(),
            m.split
        ));
    }
    match (req.role, req.p_filter) {
        (Role::Oracle, None) => return bad("an oracle expert needs --p".into()),
        (r, Some(_)) if r != Role::Oracle => {
            return bad("--p selects an oracle's regime; only --role oracle takes it".into());
        }
        _ => {}
    }
    let occupied =
        req.out.join(expert::META_FILE).exists() || req.out.join(CHECKPOINT_DIR).exists();
    if occupied && !req.resume && !req.force {
        return bad(format!(
            "{} already holds an expert or a checkpoint; pass --resume to continue it, --force to replace it",
            req.out.display()
        ));
    }
    if req.force && !req.resume {
        let ck = req.out.join(CHECKPOINT_DIR);
        if ck.exists() {
            std::fs::remove_dir_all(&ck).map_err(|source| ExpertError::Io {
                action: "cannot remove the old checkpoint",
                path: ck,
                source,
            })?;
        }
    }
    // the trajectories used
    let keep: Vec<usize> = (0..req.data.params.len())
        .filter(|&i| match req.p_filter {
            Some(p) => (req.data.params[i] - p).abs() <= 1e-9 * p.abs().max(1e-300),
            None => true,
        })
        .collect();
    if keep.is_empty() {
        let mut values: Vec<f64> = req.data.params.to_vec();
        values.dedup();
        return bad(format!(
            "no trajectory at {} = {:?}; the dataset holds {values:?}",
            m.parameter,
            req.p_filter.unwrap_or_default()
        ));
    }
    let traj = req.data.trajectories.select(Axis(0), &keep);
    let t_in = m.config.time.t_in;
    let [_, _, channels, n, _] = m.shape;

    // architecture, normalisation and starting weights
    let (cfg, norm, start, from) = match (req.role.is_fine_tune(), req.from) {
        (false, Some(_)) => return bad("an anchor is trained from scratch; drop --from".into()),
        (true, None) => {
            return bad(format!(
                "a {} expert is fine-tuned: pass --from <anchor expert dir>",
                req.role
            ));
        }
        (false, None) => {
            let a = req.architecture.unwrap_or_default();
            let cfg = FnoConfig {
                channels,
                t_in,
                n,
                width: a.width,
                modes: a.modes,
                layers: a.layers,
                hidden: a.hidden,
                conditioning: 0,
            };
            cfg.validate().map_err(ModelError::from)?;
            let norm = compute_normalization(traj.view());
            let w = init_weights(&cfg, req.options.seed);
            (cfg, norm, w, None)
        }
        (true, Some((dir, anchor))) => {
            let am = &anchor.meta;
            if am.role != Role::Anchor {
                return bad(format!(
                    "--from {} is a {} expert, not an anchor",
                    dir.display(),
                    am.role
                ));
            }
            if am.family != req.family {
                return bad(format!(
                    "--from {} is an anchor of {}, not {}",
                    dir.display(),
                    am.family,
                    req.family
                ));
            }
            let cfg = am.config;
            if (cfg.channels, cfg.t_in, cfg.n) != (channels, t_in, n) {
                return bad(format!(
                    "the anchor takes {} frame(s) of {}×{}×{}, the data has {t_in} of {channels}×{n}×{n}",
                    cfg.t_in, cfg.channels, cfg.n, cfg.n
                ));
            }
            if let Some(a) = req.architecture {
                let mine = Architecture {
                    width: cfg.width,
                    modes: cfg.modes,
                    layers: cfg.layers,
                    hidden: cfg.hidden,
                };
                if a != mine {
                    return bad(format!(
                        "a fine-tune keeps the anchor's architecture {mine:?}; drop the size options (asked for {a:?})"
                    ));
                }
            }
            let from = FromExpert {
                dir: dir.display().to_string(),
                weights_sha256: am.weights_sha256.clone(),
            };
            let (cfg, start) = if req.role == Role::Conditioned {
                conditioned_start(&cfg, &anchor.weights)?
            } else {
                (cfg, anchor.weights.clone())
            };
            (cfg, am.normalization.clone(), start, Some(from))
        }
    };

    let mut samples = Samples::new(traj.view(), t_in)?;
    if cfg.conditioning > 0 {
        let coords = keep
            .iter()
            .map(|&i| m.config.coordinate(req.data.params[i]) as f32)
            .collect();
        samples = samples.with_conditions(coords, 1);
    }
    let (mut trainer, seconds_before) = if req.resume {
        let (t, s) = Trainer::resume(req.out, req.options.clone())?;
        if *t.model().config() != cfg || *t.model().normalization() != norm {
            return bad(format!(
                "the checkpoint in {} is of a different model or normalisation",
                req.out.display()
            ));
        }
        (t, s)
    } else {
        (Trainer::new(&cfg, &norm, &start, req.options.clone())?, 0.0)
    };
    let total_steps = trainer.total_steps(&samples);
    progress(Progress::Start {
        epochs: req.options.epochs,
        total_steps,
        done_steps: trainer.steps_done,
    });
    while trainer.epochs_done() < req.options.epochs {
        trainer.run_epoch(&samples, progress)?;
        let seconds = seconds_before + started.elapsed().as_secs_f64();
        trainer.save_checkpoint(req.out, seconds)?;
    }

    let seconds = seconds_before + started.elapsed().as_secs_f64();
    let params: Vec<f64> = keep.iter().map(|&i| req.data.params[i]).collect();
    let lo = params.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = params.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let losses = trainer.epoch_losses().to_vec();
    let mut out = Expert {
        meta: ExpertMeta {
            format_version: expert::FORMAT_VERSION,
            generator: format!("ccm-twin {}", env!("CARGO_PKG_VERSION")),
            family: req.family,
            role: req.role,
            parameter: m.parameter.clone(),
            p_range: [lo, hi],
            config: cfg,
            normalization: norm,
            data: DataProvenance {
                dir: req.data_dir.display().to_string(),
                split: m.split,
                trajectories: keep.len(),
                seeds: keep.iter().map(|&i| req.data.seeds[i]).collect(),
                sha256: m.sha256.clone(),
                p_filter: req.p_filter,
            },
            training: TrainingRecord {
                epochs: req.options.epochs,
                unroll_epochs: req.options.unroll_epochs,
                steps: trainer.steps_done,
                batch: req.options.batch,
                lr: req.options.lr,
                warmup_steps: trainer.warmup(total_steps),
                seed: req.options.seed,
                final_train_loss: losses.last().copied().unwrap_or(f64::NAN),
                epoch_losses: losses,
                seconds,
                from,
            },
            weights_sha256: String::new(),
        },
        weights: trainer.weights(),
    };
    out.save(req.out)?;
    Ok(out)
}

/// The starting point of the parameter-conditioned baseline: the anchor's architecture with one
/// conditioning channel, and the anchor's weights with a zero lifting column for it (so it starts
/// as the anchor and learns what the coordinate adds).
fn conditioned_start(
    anchor: &FnoConfig,
    weights: &WeightSet,
) -> Result<(FnoConfig, WeightSet), TrainError> {
    if anchor.conditioning != 0 {
        return Err(TrainError::Request(
            "--from must be a plain anchor, not a conditioned model".into(),
        ));
    }
    let cfg = FnoConfig {
        conditioning: 1,
        ..*anchor
    };
    let (old_in, new_in) = (anchor.in_channels(), cfg.in_channels());
    let tensors = cfg.param_shapes().into_iter().map(|(name, shape)| {
        let old = weights
            .get(&name)
            .expect("the anchor holds every canonical tensor");
        let values = if name == "lift.weight" {
            old.chunks(old_in)
                .flat_map(|row| {
                    row.iter()
                        .copied()
                        .chain(std::iter::repeat_n(0.0, new_in - old_in))
                })
                .collect()
        } else {
            old.to_vec()
        };
        (name, shape, values)
    });
    let start = WeightSet::from_tensors(tensors).map_err(ModelError::from)?;
    Ok((cfg, start))
}

/// Options of [`score`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreOptions {
    /// Frames rolled out from the first `T_in`; `None`: the dataset's horizon (at most what the
    /// trajectories hold).
    pub horizon: Option<usize>,
    /// Predicted frames left out of the scores at the start (e.g. a prefix `K`).
    pub skip: usize,
    /// Trajectories rolled out together.
    pub batch: usize,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        ScoreOptions {
            horizon: None,
            skip: 0,
            batch: 16,
        }
    }
}

/// Errors of one trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryScore {
    /// Regime parameter.
    pub p: f64,
    /// Initial-condition seed.
    pub seed: u64,
    /// Autoregressive rollout: `‖pred − truth‖ / ‖truth‖` over all scored frames.
    pub rollout: f64,
    /// Teacher-forced one-step error, the mean over scored frames of the per-frame relative L2.
    pub one_step: f64,
    /// Persistence (the last input frame repeated), as `rollout`.
    pub persistence: f64,
}

/// Mean errors of the trajectories at one parameter value (or of all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupScore {
    /// The parameter value (`None`: all trajectories).
    pub p: Option<f64>,
    /// Trajectories.
    pub count: usize,
    /// Mean rollout nRMSE.
    pub rollout: f64,
    /// Mean one-step error.
    pub one_step: f64,
    /// Mean persistence nRMSE.
    pub persistence: f64,
}

/// The result of [`score`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreReport {
    /// Frames rolled out.
    pub horizon: usize,
    /// Frames left out at the start.
    pub skip: usize,
    /// Per trajectory, in dataset order.
    pub trajectories: Vec<TrajectoryScore>,
    /// Per distinct parameter value (fixed-regime splits), in order of appearance.
    pub groups: Vec<GroupScore>,
    /// Over all trajectories.
    pub all: GroupScore,
}

fn rel(a: &[f32], b: &[f32]) -> (f64, f64) {
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>();
    let den = b.iter().map(|&y| (y as f64).powi(2)).sum::<f64>();
    (num, den)
}

/// Scores an expert on a dataset: for each trajectory, the autoregressive rollout from its first
/// `T_in` frames for `horizon` frames, the teacher-forced one-step error on the same frames, and
/// persistence. Frames `T_in + skip .. T_in + horizon` are scored.
pub fn score(
    expert: &Expert,
    data: &Dataset,
    opts: &ScoreOptions,
) -> Result<ScoreReport, TrainError> {
    let cfg = expert.meta.config;
    if cfg.conditioning != 0 {
        return Err(TrainError::Request(
            "a parameter-conditioned expert needs its regime as an input; score it with \
             `ccm-twin evaluate --conditioned` instead"
                .into(),
        ));
    }
    let [count, frames, c, n, _] = data.manifest.shape;
    if (c, n) != (cfg.channels, cfg.n) {
        return Err(TrainError::Request(format!(
            "the expert takes {}×{}×{} frames, the dataset has {c}×{n}×{n}",
            cfg.channels, cfg.n, cfg.n
        )));
    }
    if frames <= cfg.t_in {
        return Err(TrainError::Request(format!(
            "{frames} frames leave nothing to score after {} input frames",
            cfg.t_in
        )));
    }
    let available = frames - cfg.t_in;
    let horizon = opts
        .horizon
        .unwrap_or(data.manifest.config.time.horizon)
        .min(available);
    if opts.skip >= horizon {
        return Err(TrainError::Request(format!(
            "skipping {} of {horizon} frames leaves nothing to score",
            opts.skip
        )));
    }
    let device = Device::flex();
    let model = Fno::from_weights(&cfg, &expert.meta.normalization, &expert.weights, &device)?;
    let f = c * n * n;
    let traj = data.trajectories.as_standard_layout();
    let all = traj.as_slice().expect("standard layout");
    let tf = frames * f;
    let batch = opts.batch.max(1);
    let mut out = Vec::with_capacity(count);
    for start in (0..count).step_by(batch) {
        let ids: Vec<usize> = (start..(start + batch).min(count)).collect();
        let b = ids.len();
        // rollout
        let mut init = Vec::with_capacity(b * cfg.t_in * f);
        for &i in &ids {
            init.extend_from_slice(&all[i * tf..i * tf + cfg.t_in * f]);
        }
        let pred = rollout(&model, &init, b, horizon);
        // one-step, teacher forced: every window whose target is scored, all trajectories of
        // the batch at once
        let mut one_step = vec![0.0f64; b];
        for s in opts.skip..horizon {
            let mut x = Vec::with_capacity(b * cfg.t_in * f);
            for &i in &ids {
                let at = i * tf + s * f;
                x.extend_from_slice(&all[at..at + cfg.t_in * f]);
            }
            let y = rollout(&model, &x, b, 1);
            for (k, &i) in ids.iter().enumerate() {
                let truth = &all[i * tf + (cfg.t_in + s) * f..][..f];
                let (num, den) = rel(&y[k * f..(k + 1) * f], truth);
                one_step[k] += (num / den.max(1e-300)).sqrt();
            }
        }
        for (k, &i) in ids.iter().enumerate() {
            let (mut rn, mut pn, mut den) = (0.0, 0.0, 0.0);
            let last = &all[i * tf + (cfg.t_in - 1) * f..][..f];
            for s in opts.skip..horizon {
                let truth = &all[i * tf + (cfg.t_in + s) * f..][..f];
                let p = &pred[(k * horizon + s) * f..][..f];
                let (a, d) = rel(p, truth);
                let (pp, _) = rel(last, truth);
                rn += a;
                pn += pp;
                den += d;
            }
            let den = den.max(1e-300);
            out.push(TrajectoryScore {
                p: data.params[i],
                seed: data.seeds[i],
                rollout: (rn / den).sqrt(),
                one_step: one_step[k] / (horizon - opts.skip) as f64,
                persistence: (pn / den).sqrt(),
            });
        }
    }
    let group = |p: Option<f64>, items: Vec<&TrajectoryScore>| {
        let k = items.len().max(1) as f64;
        GroupScore {
            p,
            count: items.len(),
            rollout: items.iter().map(|t| t.rollout).sum::<f64>() / k,
            one_step: items.iter().map(|t| t.one_step).sum::<f64>() / k,
            persistence: items.iter().map(|t| t.persistence).sum::<f64>() / k,
        }
    };
    let mut values: Vec<f64> = Vec::new();
    for t in &out {
        if !values.contains(&t.p) {
            values.push(t.p);
        }
    }
    let fixed = matches!(
        data.manifest.split,
        Split::Val | Split::Calib | Split::Oracle | Split::Test
    );
    let groups = if fixed {
        values
            .iter()
            .map(|&p| group(Some(p), out.iter().filter(|t| t.p == p).collect()))
            .collect()
    } else {
        Vec::new()
    };
    let all_group = group(None, out.iter().collect());
    Ok(ScoreReport {
        horizon,
        skip: opts.skip,
        trajectories: out,
        groups,
        all: all_group,
    })
}
