//! Reproducible trajectory datasets.
//!
//! A dataset directory holds one split of one family:
//!
//! | file | content |
//! |---|---|
//! | `trajectories.npy` | `f32`, shape `[N, frames, channels, n, n]` |
//! | `params.npy` | `f64`, shape `[N]`: the regime parameter of each trajectory |
//! | `seeds.npy` | `u64`, shape `[N]`: the initial-condition seed of each trajectory |
//! | `manifest.json` | family, split, shapes, the whole config, sha256 of the arrays, timings |
//!
//! numpy reads the arrays as they are (`np.load`). A directory is written under a temporary
//! name beside its destination and renamed into place only when complete, so a failed or
//! interrupted run leaves no partial dataset behind.
//!
//! Seeds: trajectory `i` of split `s` gets `splitmix64(seed ⊕ splitmix64(s·2⁴⁰ + i))`, a bijection
//! of `(s, i)`, so initial conditions are disjoint across splits and indices for a given master
//! seed, and the same config always gives the same bytes whatever the thread count.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use ndarray::{Array1, Array5};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, FamilyConfig};
use crate::pde::{self, SolveError};

/// Version of the on-disk layout.
pub const FORMAT_VERSION: u32 = 1;

/// The dataset splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The anchor's training set, over the whole in-distribution range.
    Anchor,
    /// The low endpoint band.
    Low,
    /// The high endpoint band.
    High,
    /// Tunes the readouts (CCM-Scale's γ).
    Val,
    /// Fits the calibrated map `p → α`.
    Calib,
    /// Trains the per-target oracle experts (evaluation only).
    Oracle,
    /// Held out for evaluation.
    Test,
}

impl Split {
    /// All splits.
    pub const ALL: [Split; 7] = [
        Split::Anchor,
        Split::Low,
        Split::High,
        Split::Val,
        Split::Calib,
        Split::Oracle,
        Split::Test,
    ];

    /// Name on disk and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Split::Anchor => "anchor",
            Split::Low => "low",
            Split::High => "high",
            Split::Val => "val",
            Split::Calib => "calib",
            Split::Oracle => "oracle",
            Split::Test => "test",
        }
    }

    fn id(self) -> u64 {
        Split::ALL.iter().position(|&s| s == self).unwrap() as u64 + 1
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Split::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                format!("unknown split '{s}': expected one of anchor, low, high, val, calib, oracle, test")
            })
    }
}

/// What could go wrong making or reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A trajectory failed.
    #[error("trajectory {index} ({name} = {p}, seed {seed}) failed: {source}")]
    Solve {
        /// Index in the split.
        index: usize,
        /// Parameter name.
        name: String,
        /// Parameter value.
        p: f64,
        /// Seed.
        seed: u64,
        /// The solver's error.
        source: SolveError,
    },
    /// The destination exists.
    #[error("{0} already exists; pass --force to replace it")]
    Exists(PathBuf),
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
    /// An array file is unreadable or has the wrong shape.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file does not match the checksum in the manifest.
    #[error(
        "{path}: sha256 {found} does not match the manifest's {expected}; the dataset is corrupt"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Computed.
        found: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError {
    let path = path.to_path_buf();
    move |source| DatasetError::Io {
        action,
        path,
        source,
    }
}

/// One planned trajectory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrajectorySpec {
    /// Regime parameter.
    pub p: f64,
    /// Initial-condition seed.
    pub seed: u64,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of trajectory `index` of `split` under master seed `master`.
pub fn trajectory_seed(master: u64, split: Split, index: usize) -> u64 {
    splitmix64(master ^ splitmix64((split.id() << 40) + index as u64))
}

/// The trajectories of a split: parameters and seeds. `count` overrides the config's size
/// (trajectories for anchor/low/high, trajectories per regime value for the others).
pub fn plan(cfg: &FamilyConfig, split: Split, count: Option<usize>) -> Vec<TrajectorySpec> {
    let par = &cfg.parameter;
    let sizes = &cfg.splits;
    let sc = par.scale;
    let stratified = |lo: f64, hi: f64, n: usize| -> Vec<TrajectorySpec> {
        (0..n)
            .map(|i| {
                let seed = trajectory_seed(cfg.seed, split, i);
                // the parameter's jitter comes from its own stream, not the initial condition's
                let u: f64 = crate::pde::random_field::rng(splitmix64(seed)).random();
                let q = (i as f64 + u) / n as f64;
                let x = sc.forward(lo) + q * (sc.forward(hi) - sc.forward(lo));
                TrajectorySpec {
                    p: sc.inverse(x),
                    seed,
                }
            })
            .collect()
    };
    let per_value = |values: &[f64], n: usize| -> Vec<TrajectorySpec> {
        values
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p, n))
            .enumerate()
            .map(|(i, p)| TrajectorySpec {
                p,
                seed: trajectory_seed(cfg.seed, split, i),
            })
            .collect()
    };
    match split {
        Split::Anchor => stratified(par.lo, par.hi, count.unwrap_or(sizes.anchor)),
        Split::Low => stratified(par.low_band[0], par.low_band[1], count.unwrap_or(sizes.low)),
        Split::High => stratified(
            par.high_band[0],
            par.high_band[1],
            count.unwrap_or(sizes.high),
        ),
        Split::Val => per_value(&par.val, count.unwrap_or(sizes.val)),
        Split::Calib => per_value(&par.calib, count.unwrap_or(sizes.calib)),
        Split::Oracle => per_value(&par.test_values(), count.unwrap_or(sizes.oracle)),
        Split::Test => per_value(&par.test_values(), count.unwrap_or(sizes.test)),
    }
}

/// The manifest written beside the arrays.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// On-disk layout version.
    pub format_version: u32,
    /// Version of ccm-twin that wrote it.
    pub generator: String,
    /// Family name.
    pub family: String,
    /// Split.
    pub split: Split,
    /// Channel names.
    pub channels: Vec<String>,
    /// Shape of `trajectories.npy`.
    pub shape: [usize; 5],
    /// Time between frames.
    pub frame_dt: f64,
    /// Name of the regime parameter.
    pub parameter: String,
    /// The distinct parameter values (for fixed-regime splits) or `[min, max]` of the draws.
    pub parameter_values: Vec<f64>,
    /// sha256 (hex) of each array file.
    pub sha256: std::collections::BTreeMap<String, String>,
    /// Wall time of the generation in seconds.
    pub seconds: f64,
    /// The full config the data was generated with.
    pub config: FamilyConfig,
}

/// Options of [`generate`].
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    /// Override the split size (see [`plan`]).
    pub count: Option<usize>,
    /// Replace an existing dataset directory.
    pub force: bool,
}

/// Removes a temporary directory unless it was committed.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn sha256_file(path: &Path) -> Result<String, DatasetError> {
    let mut file = fs::File::open(path).map_err(io("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = file.read(&mut buf).map_err(io("cannot read", path))?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn write_array<A, D>(
    dir: &Path,
    name: &str,
    array: &ndarray::ArrayBase<A, D>,
) -> Result<(), DatasetError>
where
    A: ndarray::Data,
    A::Elem: ndarray_npy::WritableElement,
    D: ndarray::Dimension,
{
    let path = dir.join(name);
    ndarray_npy::write_npy(&path, array).map_err(|e| DatasetError::Format {
        path: path.clone(),
        reason: format!("cannot write: {e}"),
    })
}

/// Generates one split of `cfg`'s family into `out`. `progress` is called once per finished
/// trajectory (from worker threads). Nothing is left at `out` unless the whole split succeeded.
pub fn generate(
    cfg: &FamilyConfig,
    split: Split,
    out: &Path,
    opts: &GenerateOptions,
    progress: &(dyn Fn() + Sync),
) -> Result<Manifest, DatasetError> {
    cfg.validate()?;
    if out.exists() && !opts.force {
        return Err(DatasetError::Exists(out.to_path_buf()));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io("cannot create output directory", &parent))?;
    let name = out
        .file_name()
        .ok_or_else(|| DatasetError::Format {
            path: out.to_path_buf(),
            reason: "the output path needs a final directory name".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let tmp = TempDir {
        path: parent.join(format!(".{name}.partial-{}", std::process::id())),
        keep: false,
    };
    if tmp.path.exists() {
        fs::remove_dir_all(&tmp.path).map_err(io("cannot clear", &tmp.path))?;
    }
    fs::create_dir(&tmp.path).map_err(io("cannot create output directory", &tmp.path))?;

    let specs = plan(cfg, split, opts.count);
    let frames = cfg.time.frames;
    let frame_len = cfg.frame_len();
    let started = Instant::now();
    let data: Vec<Vec<f32>> = specs
        .par_iter()
        .enumerate()
        .map(|(index, s)| {
            let mut buf = vec![0.0f32; frames * frame_len];
            pde::simulate(cfg, s.p, s.seed, &mut buf).map_err(|source| DatasetError::Solve {
                index,
                name: cfg.parameter.name.clone(),
                p: s.p,
                seed: s.seed,
                source,
            })?;
            progress();
            Ok(buf)
        })
        .collect::<Result<_, DatasetError>>()?;
    let seconds = started.elapsed().as_secs_f64();

    let n = cfg.grid.n;
    let shape = [specs.len(), frames, cfg.channels().len(), n, n];
    let flat: Vec<f32> = data.into_iter().flatten().collect();
    let traj = Array5::from_shape_vec(shape, flat).expect("trajectory buffer matches its shape");
    write_array(&tmp.path, "trajectories.npy", &traj)?;
    write_array(
        &tmp.path,
        "params.npy",
        &Array1::from_iter(specs.iter().map(|s| s.p)),
    )?;
    write_array(
        &tmp.path,
        "seeds.npy",
        &Array1::from_iter(specs.iter().map(|s| s.seed)),
    )?;

    let mut sha256 = std::collections::BTreeMap::new();
    for f in ["trajectories.npy", "params.npy", "seeds.npy"] {
        sha256.insert(f.to_string(), sha256_file(&tmp.path.join(f))?);
    }
    let parameter_values = match split {
        Split::Anchor | Split::Low | Split::High => {
            let lo = specs.iter().map(|s| s.p).fold(f64::INFINITY, f64::min);
            let hi = specs.iter().map(|s| s.p).fold(f64::NEG_INFINITY, f64::max);
            vec![lo, hi]
        }
        _ => {
            let mut v: Vec<f64> = specs.iter().map(|s| s.p).collect();
            v.dedup();
            v
        }
    };
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        generator: format!("ccm-twin {}", env!("CARGO_PKG_VERSION")),
        family: cfg.family.name().to_string(),
        split,
        channels: cfg.channels().iter().map(|s| s.to_string()).collect(),
        shape,
        frame_dt: cfg.time.frame_dt,
        parameter: cfg.parameter.name.clone(),
        parameter_values,
        sha256,
        seconds,
        config: cfg.clone(),
    };
    let manifest_path = tmp.path.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    fs::write(&manifest_path, text + "\n").map_err(io("cannot write", &manifest_path))?;

    if out.exists() {
        fs::remove_dir_all(out).map_err(io("cannot replace", out))?;
    }
    fs::rename(&tmp.path, out).map_err(io("cannot move the finished dataset to", out))?;
    let mut tmp = tmp;
    tmp.keep = true;
    Ok(manifest)
}

/// A dataset read back from disk.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Its manifest.
    pub manifest: Manifest,
    /// `[N, frames, channels, n, n]`.
    pub trajectories: Array5<f32>,
    /// `[N]`.
    pub params: Array1<f64>,
    /// `[N]`.
    pub seeds: Array1<u64>,
}

/// Reads the manifest of a dataset directory.
pub fn read_manifest(dir: &Path) -> Result<Manifest, DatasetError> {
    let path = dir.join("manifest.json");
    let text = fs::read_to_string(&path).map_err(io("cannot read", &path))?;
    serde_json::from_str(&text).map_err(|e| DatasetError::Format {
        path,
        reason: format!("not a dataset manifest: {e}"),
    })
}

/// Reads a dataset directory, checking every array against the manifest's sha256 and shape.
pub fn load(dir: &Path) -> Result<Dataset, DatasetError> {
    let manifest = read_manifest(dir)?;
    for (file, expected) in &manifest.sha256 {
        let path = dir.join(file);
        let found = sha256_file(&path)?;
        if &found != expected {
            return Err(DatasetError::Checksum {
                path,
                expected: expected.clone(),
                found,
            });
        }
    }
    let read = |name: &str| dir.join(name);
    let fmt_err = |path: PathBuf| {
        move |e: ndarray_npy::ReadNpyError| DatasetError::Format {
            path,
            reason: e.to_string(),
        }
    };
    let p = read("trajectories.npy");
    let trajectories: Array5<f32> = ndarray_npy::read_npy(&p).map_err(fmt_err(p.clone()))?;
    if trajectories.shape() != manifest.shape {
        return Err(DatasetError::Format {
            path: p,
            reason: format!(
                "shape {:?} differs from the manifest's {:?}",
                trajectories.shape(),
                manifest.shape
            ),
        });
    }
    let p = read("params.npy");
    let params: Array1<f64> = ndarray_npy::read_npy(&p).map_err(fmt_err(p.clone()))?;
    let p = read("seeds.npy");
    let seeds: Array1<u64> = ndarray_npy::read_npy(&p).map_err(fmt_err(p.clone()))?;
    Ok(Dataset {
        manifest,
        trajectories,
        params,
        seeds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;

    #[test]
    fn seeds_are_disjoint_across_splits() {
        let cfg = FamilyConfig::builtin(Family::NavierStokes);
        let mut all = std::collections::HashSet::new();
        for s in Split::ALL {
            for t in plan(&cfg, s, None) {
                assert!(all.insert(t.seed), "seed {} repeated", t.seed);
            }
        }
    }

    #[test]
    fn plans_cover_their_ranges() {
        let cfg = FamilyConfig::builtin(Family::DamBreak);
        let par = &cfg.parameter;
        let a = plan(&cfg, Split::Anchor, Some(40));
        assert_eq!(a.len(), 40);
        assert!(a.iter().all(|t| t.p >= par.lo && t.p <= par.hi));
        // stratified: one draw per stratum, so both ends are reached
        let min = a.iter().map(|t| t.p).fold(f64::INFINITY, f64::min);
        let max = a.iter().map(|t| t.p).fold(0.0, f64::max);
        assert!(min < par.lo * 1.05 && max > par.hi / 1.05, "{min} {max}");
        let low = plan(&cfg, Split::Low, None);
        assert!(
            low.iter()
                .all(|t| t.p >= par.low_band[0] && t.p <= par.low_band[1])
        );
        let test = plan(&cfg, Split::Test, Some(3));
        assert_eq!(test.len(), 3 * par.test_values().len());
    }

    #[test]
    fn split_names_parse() {
        for s in Split::ALL {
            assert_eq!(s.name().parse::<Split>().unwrap(), s);
        }
        assert!(
            "train"
                .parse::<Split>()
                .unwrap_err()
                .contains("unknown split 'train'")
        );
    }
}
