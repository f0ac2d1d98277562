//! The expert directory: what a trained FNO is on disk.
//!
//! | file | content |
//! |---|---|
//! | `weights.safetensors` | the [`WeightSet`], `F32` tensors under their canonical names |
//! | `expert.json` | [`ExpertMeta`]: architecture, normalisation, role, regime range, the data it was trained on (seeds and sha256 from the dataset manifest), how it was trained |
//! | `checkpoint/` | only while training or after an interrupted run: the state `--resume` needs |
//!
//! safetensors is a plain, documented format (a JSON header and raw little-endian arrays) that
//! numpy and PyTorch read directly, so an expert can be inspected without ccm-twin. The file
//! order of tensors is the format's own (sorted by name); reading restores the canonical order of
//! [`FnoConfig::param_shapes`] and refuses any missing, extra or misshapen tensor.
//!
//! This module needs no trainer: exporters, the merge and the evaluation read experts in every
//! build.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::spec::{FnoConfig, Normalization};
use crate::ccm::WeightSet;
use crate::config::Family;
use crate::dataset::Split;

/// Version of the expert directory layout.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the weights file in an expert directory.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// Name of the metadata file in an expert directory.
pub const META_FILE: &str = "expert.json";

/// What an expert is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The family anchor `θ_A`, trained on the whole in-distribution range.
    Anchor,
    /// The low endpoint expert `θ_L`, fine-tuned from the anchor on the low band.
    Low,
    /// The high endpoint expert `θ_H`, fine-tuned from the anchor on the high band.
    High,
    /// An oracle expert fine-tuned from the anchor on one target regime (evaluation only).
    Oracle,
    /// The parameter-conditioned baseline (evaluation only): the anchor's architecture with the
    /// regime coordinate `s(p)` as one more input channel, trained on the anchor data, started
    /// from the anchor's weights (the new channel's lifting column at zero).
    Conditioned,
}

impl Role {
    /// All roles.
    pub const ALL: [Role; 5] = [
        Role::Anchor,
        Role::Low,
        Role::High,
        Role::Oracle,
        Role::Conditioned,
    ];

    /// Name on disk and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Anchor => "anchor",
            Role::Low => "low",
            Role::High => "high",
            Role::Oracle => "oracle",
            Role::Conditioned => "conditioned",
        }
    }

    /// Whether this role is fine-tuned from an anchor.
    pub fn is_fine_tune(self) -> bool {
        self != Role::Anchor
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!("unknown role '{s}': expected anchor, low, high, oracle or conditioned")
            })
    }
}

/// The data an expert was trained on, as the dataset manifest describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataProvenance {
    /// The dataset directory, as given.
    pub dir: String,
    /// Its split.
    pub split: Split,
    /// Trajectories used (after any `--p` filter).
    pub trajectories: usize,
    /// The initial-condition seeds of the trajectories used.
    pub seeds: Vec<u64>,
    /// sha256 of the dataset's arrays, from its manifest.
    pub sha256: BTreeMap<String, String>,
    /// The `--p` filter of an oracle expert.
    pub p_filter: Option<f64>,
}

/// How an expert was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// Epochs run (all phases).
    pub epochs: usize,
    /// Of those, epochs with the unrolled two-step loss at the end.
    pub unroll_epochs: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Batch size.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps before the cosine decay.
    pub warmup_steps: usize,
    /// Seed of the initialisation and the shuffling.
    pub seed: u64,
    /// Mean one-step relative L2 loss of the last epoch.
    pub final_train_loss: f64,
    /// Mean loss of each epoch.
    pub epoch_losses: Vec<f64>,
    /// Wall time of training (resumed runs add up), seconds.
    pub seconds: f64,
    /// The anchor a fine-tuned expert started from: its directory and weights sha256.
    pub from: Option<FromExpert>,
}

/// The expert a fine-tune started from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FromExpert {
    /// Its directory, as given.
    pub dir: String,
    /// sha256 of its weights file.
    pub weights_sha256: String,
}

/// `expert.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertMeta {
    /// Layout version.
    pub format_version: u32,
    /// Version of ccm-twin that wrote it.
    pub generator: String,
    /// Family.
    pub family: Family,
    /// Role.
    pub role: Role,
    /// Name of the regime parameter.
    pub parameter: String,
    /// `[min, max]` of the regime parameter over the training trajectories.
    pub p_range: [f64; 2],
    /// Architecture.
    pub config: FnoConfig,
    /// Normalisation constants (the anchor's, inherited by every expert of the family).
    pub normalization: Normalization,
    /// Training data.
    pub data: DataProvenance,
    /// Training run.
    pub training: TrainingRecord,
    /// sha256 of `weights.safetensors`.
    pub weights_sha256: String,
}

/// A trained expert: its metadata and weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Expert {
    /// `expert.json`.
    pub meta: ExpertMeta,
    /// The weights, canonical order.
    pub weights: WeightSet,
}

/// Why an expert could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ExpertError {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The weights file does not match `expert.json`.
    #[error(
        "{path}: sha256 {found} does not match expert.json's {expected}; the expert is corrupt or its files come from different runs"
    )]
    Checksum {
        /// The weights file.
        path: PathBuf,
        /// From expert.json.
        expected: String,
        /// Computed.
        found: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ExpertError {
    let path = path.to_path_buf();
    move |source| ExpertError::Io {
        action,
        path,
        source,
    }
}

/// sha256 (hex) of a byte buffer.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Writes `bytes` to `path` through a temporary sibling and a rename, so a reader never sees a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExpertError> {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(io("cannot write", &tmp))?;
    fs::rename(&tmp, path).map_err(io("cannot move into place", path))
}

struct F32View<'a> {
    shape: Vec<usize>,
    values: &'a [f32],
}

impl safetensors::View for F32View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        self.values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
            .into()
    }
    fn data_len(&self) -> usize {
        self.values.len() * 4
    }
}

/// Serialises a weight set as safetensors bytes (with optional string metadata).
pub fn weights_to_safetensors(
    weights: &WeightSet,
    metadata: Option<HashMap<String, String>>,
) -> Vec<u8> {
    let views = weights.tensors().iter().map(|t| {
        (
            t.name.clone(),
            F32View {
                shape: t.shape.clone(),
                values: weights.get(&t.name).expect("listed tensor"),
            },
        )
    });
    safetensors::serialize(views, metadata).expect("f32 tensors with consistent shapes serialise")
}

/// Reads safetensors bytes into a weight set with exactly the given layout (canonical order).
/// `path` only names the source in errors.
pub fn weights_from_safetensors(
    bytes: &[u8],
    layout: &[(String, Vec<usize>)],
    path: &Path,
) -> Result<WeightSet, ExpertError> {
    let bad = |reason: String| ExpertError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut expected: Vec<String> = layout.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    if let Some(extra) = names.iter().find(|n| !expected.contains(n)) {
        return Err(bad(format!(
            "unexpected tensor '{extra}' (not part of this architecture)"
        )));
    }
    let mut set = WeightSet::default();
    for (name, shape) in layout {
        let view = st
            .tensor(name)
            .map_err(|_| bad(format!("tensor '{name}' is missing")))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!(
                "tensor '{name}' is {:?}, expected F32",
                view.dtype()
            )));
        }
        if view.shape() != shape.as_slice() {
            return Err(bad(format!(
                "tensor '{name}' has shape {:?}, the architecture needs {shape:?}",
                view.shape()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        set.push(name.clone(), shape.clone(), &values)
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(set)
}

/// Reads `expert.json` of an expert directory.
pub fn read_meta(dir: &Path) -> Result<ExpertMeta, ExpertError> {
    let path = dir.join(META_FILE);
    let text = fs::read_to_string(&path).map_err(io("cannot read", &path))?;
    let meta: ExpertMeta = serde_json::from_str(&text).map_err(|e| ExpertError::Format {
        path: path.clone(),
        reason: format!("not an expert description: {e}"),
    })?;
    if meta.format_version != FORMAT_VERSION {
        return Err(ExpertError::Format {
            path,
            reason: format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                meta.format_version
            ),
        });
    }
    meta.config.validate().map_err(|e| ExpertError::Format {
        path,
        reason: e.to_string(),
    })?;
    Ok(meta)
}

impl Expert {
    /// Reads an expert directory, checking the weights against `expert.json` (sha256, names,
    /// shapes).
    pub fn load(dir: &Path) -> Result<Expert, ExpertError> {
        let meta = read_meta(dir)?;
        let path = dir.join(WEIGHTS_FILE);
        let bytes = fs::read(&path).map_err(io("cannot read", &path))?;
        let found = sha256_hex(&bytes);
        if found != meta.weights_sha256 {
            return Err(ExpertError::Checksum {
                path,
                expected: meta.weights_sha256.clone(),
                found,
            });
        }
        let weights = weights_from_safetensors(&bytes, &meta.config.param_shapes(), &path)?;
        Ok(Expert { meta, weights })
    }

    /// Writes the expert into `dir` (created if needed): the weights first, then `expert.json`
    /// with their sha256, each through a rename. Fills in `meta.weights_sha256`.
    pub fn save(&mut self, dir: &Path) -> Result<(), ExpertError> {
        fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        let mut info = HashMap::new();
        info.insert("format".to_string(), "ccm-twin fno expert".to_string());
        info.insert("family".to_string(), self.meta.family.name().to_string());
        info.insert("role".to_string(), self.meta.role.name().to_string());
        let bytes = weights_to_safetensors(&self.weights, Some(info));
        self.meta.weights_sha256 = sha256_hex(&bytes);
        write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
        let text = serde_json::to_string_pretty(&self.meta).expect("metadata serialises") + "\n";
        write_atomic(&dir.join(META_FILE), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Vec<(String, Vec<usize>)> {
        vec![
            ("b.weight".to_string(), vec![2, 3]),
            ("a.bias".to_string(), vec![2]),
        ]
    }

    #[test]
    fn safetensors_round_trip_keeps_canonical_order_and_values() {
        let mut w = WeightSet::zeros(&layout()).unwrap();
        for (i, v) in w.data_mut().iter_mut().enumerate() {
            *v = i as f32 * 0.37 - 1.0;
        }
        let bytes = weights_to_safetensors(&w, None);
        let back = weights_from_safetensors(&bytes, &layout(), Path::new("x")).unwrap();
        assert_eq!(back, w);
        assert_eq!(back.tensors()[0].name, "b.weight");
    }

    #[test]
    fn safetensors_with_wrong_shapes_or_names_are_refused() {
        let w = WeightSet::zeros(&layout()).unwrap();
        let bytes = weights_to_safetensors(&w, None);
        let other = vec![
            ("b.weight".to_string(), vec![3, 2]),
            ("a.bias".to_string(), vec![2]),
        ];
        let err = weights_from_safetensors(&bytes, &other, Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("has shape [2, 3]"), "{err}");
        let fewer = vec![("b.weight".to_string(), vec![2, 3])];
        let err = weights_from_safetensors(&bytes, &fewer, Path::new("x")).unwrap_err();
        assert!(
            err.to_string().contains("unexpected tensor 'a.bias'"),
            "{err}"
        );
        let err = weights_from_safetensors(b"garbage", &layout(), Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("not a safetensors file"), "{err}");
    }

    #[test]
    fn role_names_parse() {
        for r in Role::ALL {
            assert_eq!(r.name().parse::<Role>().unwrap(), r);
        }
        assert!("mid".parse::<Role>().is_err());
    }
}
