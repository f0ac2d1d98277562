//! A station's frames on the model's terms: [`StationMap`].
//!
//! A station rarely speaks the model's language. Its grid may be finer or coarser than the
//! model's `n × n`, its channels may carry other names, other units and come in another order,
//! it may measure only some of the model's channels (a river gauge reads depth, not discharge),
//! and it may sample faster than the model steps. The station config's `[mapping]` says how its
//! frames map onto the model, and [`StationMap`] does it, frame by frame:
//!
//! * **Grid.** The station's `rows × cols` grid covers the model's domain. Each axis is mapped
//!   on its own: onto a coarser model axis by the average over each model cell of the station
//!   cells it overlaps (area-weighted, so means and totals are kept: water volume is not made or
//!   lost by resampling); onto a finer one by linear interpolation between cell centres
//!   (wrapping around when the family's domain is periodic, held constant past the walls when
//!   not). A sensor point goes to the model cell that contains it; several sensors in one model
//!   cell are averaged.
//! * **Channels and units.** Each model channel is read from a station channel (`from`, by
//!   default the same name) as `model = scale · station + offset` (`scale > 0`, so thresholds
//!   keep their direction). A model channel the station does not measure is listed in
//!   `unobserved`; its values then come from the background (the forecast for that frame, or a
//!   model step), as for the cells between sparse sensors. Station channels the model does not
//!   take are ignored.
//! * **Time.** The model steps `frame_dt` seconds. A station that samples `r` times as often
//!   (`frame_seconds = frame_dt / r`, `r` a whole number) has every `r`-th frame kept (those whose
//!   sequence number is a multiple of `r`, renumbered `seq / r`); the others are skipped and
//!   counted. A station slower than the model, or at a rate that does not divide the model's
//!   step, is refused at start-up: the model was trained on one step and cannot be driven by
//!   another.
//!
//! Alert rules are written in the station's terms (its channel name, cell and units) and mapped
//! the same way ([`StationMap::probe`]).

use std::collections::BTreeMap;

use firmware_bridge::{Sampling, SensorFrame};

/// The `[mapping]` section of a station config. Everything is optional: without it the station
/// must send the model's grid, channel names and units at the model's time step.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// The station grid's rows (default: the model's `n`).
    pub rows: Option<u16>,
    /// The station grid's columns (default: the model's `n`).
    pub cols: Option<u16>,
    /// Seconds between the station's frames (default: the model's time step).
    pub frame_seconds: Option<f64>,
    /// How each model channel is read from the station's channels (by model channel name).
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelMapping>,
    /// Model channels the station does not measure (filled from the background).
    #[serde(default)]
    pub unobserved: Vec<String>,
}

/// How one model channel is read from the station's frames.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelMapping {
    /// The station's name for it (default: the model's).
    pub from: Option<String>,
    /// `model = scale · station + offset`; positive.
    #[serde(default = "one")]
    pub scale: f64,
    /// See `scale`.
    #[serde(default)]
    pub offset: f64,
}

fn one() -> f64 {
    1.0
}

/// What the model is: the target of the mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelGrid {
    /// Grid size (`n × n`).
    pub n: usize,
    /// Channel names, in the model's order.
    pub channels: Vec<String>,
    /// Seconds per model step.
    pub frame_dt: f64,
    /// Whether the domain wraps around.
    pub periodic: bool,
}

/// One axis of the resampling: for each model index, the station indices and their weights
/// (summing to 1).
#[derive(Debug, Clone, PartialEq)]
struct AxisMap {
    src: usize,
    taps: Vec<Vec<(usize, f32)>>,
}

impl AxisMap {
    fn new(src: usize, dst: usize, periodic: bool) -> Self {
        let taps = if src == dst {
            (0..dst).map(|i| vec![(i, 1.0)]).collect()
        } else if src > dst {
            // model cell i spans [i, i+1)·src/dst station cells: the overlap of each
            let ratio = src as f64 / dst as f64;
            (0..dst)
                .map(|i| {
                    let (a, b) = (i as f64 * ratio, (i + 1) as f64 * ratio);
                    let mut t = Vec::new();
                    let mut j = a.floor() as usize;
                    while (j as f64) < b && j < src {
                        let w = (b.min(j as f64 + 1.0) - a.max(j as f64)) / ratio;
                        if w > 1e-12 {
                            t.push((j, w as f32));
                        }
                        j += 1;
                    }
                    t
                })
                .collect()
        } else {
            // linear between station cell centres, at the model cell's centre
            let ratio = src as f64 / dst as f64;
            (0..dst)
                .map(|i| {
                    let x = (i as f64 + 0.5) * ratio - 0.5;
                    let j0 = x.floor();
                    let f = x - j0;
                    let at = |j: f64| -> usize {
                        let j = j as i64;
                        if periodic {
                            j.rem_euclid(src as i64) as usize
                        } else {
                            j.clamp(0, src as i64 - 1) as usize
                        }
                    };
                    let (a, b) = (at(j0), at(j0 + 1.0));
                    if a == b || f == 0.0 {
                        vec![(a, 1.0)]
                    } else {
                        vec![(a, (1.0 - f) as f32), (b, f as f32)]
                    }
                })
                .collect()
        };
        AxisMap { src, taps }
    }

    /// The model index that contains station index `j`.
    fn cell(&self, j: usize) -> usize {
        let dst = self.taps.len();
        ((2 * j + 1) * dst / (2 * self.src)).min(dst - 1)
    }
}

/// How one model channel is filled.
#[derive(Debug, Clone, PartialEq)]
struct Channel {
    /// The station's name; `None` for an unobserved channel.
    from: Option<String>,
    scale: f64,
    offset: f64,
}

/// A station's frame on the model's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// Every cell: `values[k * n * n + cell]` is observed channel `observed[k]` (so the whole
    /// `channels × n × n` field when every channel is observed).
    Dense {
        /// The values.
        values: Vec<f32>,
        /// The model channels observed (all, when the station measures every channel).
        observed: Vec<usize>,
    },
    /// Some cells: `values[k * points.len() + j]` is observed channel `observed[k]` at model
    /// cell `points[j]`.
    Points {
        /// Model cells `(row, col)`, distinct.
        points: Vec<(usize, usize)>,
        /// The values.
        values: Vec<f32>,
        /// The model channels observed.
        observed: Vec<usize>,
    },
}

/// An alert rule's point on the model: which value of a forecast frame to watch, and the
/// thresholds in the model's units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// Index into a `channels × n × n` frame.
    pub index: usize,
    /// Raise at or above this (model units).
    pub above: f64,
    /// Clear below this (model units).
    pub clear_below: f64,
}

/// The mapping of one station's frames onto the model (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct StationMap {
    model: ModelGrid,
    rows: usize,
    cols: usize,
    row_map: AxisMap,
    col_map: AxisMap,
    channels: Vec<Channel>,
    every: u32,
}

impl StationMap {
    /// The mapping `cfg` describes onto `model`, or every problem with it (one per line, each
    /// naming the key to change).
    pub fn new(cfg: &MappingConfig, model: &ModelGrid) -> Result<Self, String> {
        let mut problems = Vec::new();
        let n = model.n;
        let rows = cfg.rows.map_or(n, usize::from);
        let cols = cfg.cols.map_or(n, usize::from);
        if rows == 0 || cols == 0 {
            problems.push(format!(
                "mapping: a {rows} × {cols} station grid has no cells"
            ));
        }
        let every = match cfg.frame_seconds {
            None => 1,
            Some(s) if !(s.is_finite() && s > 0.0) => {
                problems.push(format!("mapping.frame_seconds: must be positive (got {s})"));
                1
            }
            Some(s) => {
                let r = model.frame_dt / s;
                let whole = r.round();
                if r < 1.0 - 1e-6 {
                    problems.push(format!(
                        "mapping.frame_seconds = {s}: the station sends a frame every {s} s but \
                         the model steps {} s; it cannot be driven by frames further apart than \
                         its step. Have the station send one every {} s (or a whole fraction \
                         of it)",
                        model.frame_dt, model.frame_dt
                    ));
                    1
                } else if (r - whole).abs() > 1e-6 * r || whole > f64::from(u16::MAX) {
                    problems.push(format!(
                        "mapping.frame_seconds = {s}: the model steps {} s, which is not a whole \
                         number of station frames ({r:.4}); have the station send one every \
                         {} s, {} s, {} s, …",
                        model.frame_dt,
                        model.frame_dt,
                        model.frame_dt / 2.0,
                        model.frame_dt / 4.0
                    ));
                    1
                } else {
                    whole as u32
                }
            }
        };
        for name in cfg.channels.keys().chain(&cfg.unobserved) {
            if !model.channels.contains(name) {
                problems.push(format!(
                    "mapping: `{name}` is not a channel of the model ({}); [mapping.channels] \
                     and `unobserved` name the model's channels",
                    model.channels.join(", ")
                ));
            }
        }
        let mut channels = Vec::new();
        for name in &model.channels {
            let given = cfg.channels.get(name);
            let unobserved = cfg.unobserved.contains(name);
            if unobserved && given.is_some() {
                problems.push(format!(
                    "mapping: `{name}` is both mapped in [mapping.channels] and listed as \
                     unobserved; keep one"
                ));
            }
            let (scale, offset) = given.map_or((1.0, 0.0), |c| (c.scale, c.offset));
            if !(scale.is_finite() && scale > 0.0 && offset.is_finite()) {
                problems.push(format!(
                    "mapping.channels.{name}: scale must be positive and offset finite (got \
                     scale {scale}, offset {offset})"
                ));
            }
            channels.push(Channel {
                from: (!unobserved).then(|| {
                    given
                        .and_then(|c| c.from.clone())
                        .unwrap_or_else(|| name.clone())
                }),
                scale,
                offset,
            });
        }
        if channels.iter().all(|c| c.from.is_none()) {
            problems.push(
                "mapping.unobserved: lists every channel of the model; the station must measure \
                 at least one"
                    .to_string(),
            );
        }
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        Ok(StationMap {
            row_map: AxisMap::new(rows, n, model.periodic),
            col_map: AxisMap::new(cols, n, model.periodic),
            model: model.clone(),
            rows,
            cols,
            channels,
            every,
        })
    }

    /// Whether frames pass unchanged (the station speaks the model's terms).
    pub fn is_identity(&self) -> bool {
        self.rows == self.model.n
            && self.cols == self.model.n
            && self.every == 1
            && self
                .channels
                .iter()
                .zip(&self.model.channels)
                .all(|(c, m)| c.from.as_ref() == Some(m) && c.scale == 1.0 && c.offset == 0.0)
    }

    /// Station frames per model step.
    pub fn frames_per_step(&self) -> u32 {
        self.every
    }

    /// The model's sequence number for station frame `seq`, or `None` when the frame falls
    /// between model steps (skipped). When the station's numbering wraps (after 2³² frames) the
    /// model's jumps, which the runtime treats as a gap: the prefix starts again once.
    pub fn model_seq(&self, seq: u32) -> Option<u32> {
        seq.is_multiple_of(self.every).then_some(seq / self.every)
    }

    /// The model cell that contains station cell `(row, col)`.
    pub fn cell(&self, row: usize, col: usize) -> (usize, usize) {
        (self.row_map.cell(row), self.col_map.cell(col))
    }

    /// One line on the mapping for the log, e.g. "128×128 station grid averaged onto 64×64; h
    /// from depth_cm ×0.01; hu, hv unobserved; every 2nd frame".
    pub fn describe(&self) -> String {
        if self.is_identity() {
            return "the station sends the model's grid, channels and time step".to_string();
        }
        let n = self.model.n;
        let mut parts = Vec::new();
        if (self.rows, self.cols) != (n, n) {
            parts.push(format!(
                "{}×{} station grid onto the model's {n}×{n}",
                self.rows, self.cols
            ));
        }
        for (c, name) in self.channels.iter().zip(&self.model.channels) {
            match &c.from {
                None => parts.push(format!("{name} unobserved (from the background)")),
                Some(f) if f != name || c.scale != 1.0 || c.offset != 0.0 => {
                    parts.push(format!("{name} = {} × {f} + {}", c.scale, c.offset))
                }
                Some(_) => {}
            }
        }
        if self.every > 1 {
            parts.push(format!(
                "every {} station frames make one model step",
                self.every
            ));
        }
        parts.join("; ")
    }

    /// The frame on the model's terms, or (the counter to count it under, what to fix).
    pub fn map(&self, frame: &SensorFrame<'_>) -> Result<Mapped, (&'static str, String)> {
        let shape = |m: String| ("shape_mismatch", m);
        let seq = frame.seq;
        let (rows, cols) = (usize::from(frame.shape.rows), usize::from(frame.shape.cols));
        if (rows, cols) != (self.rows, self.cols) {
            let n = self.model.n;
            return Err(shape(if (self.rows, self.cols) == (n, n) {
                format!(
                    "frame {seq}: a {rows}×{cols} grid, the model's is {n}×{n}; set \
                     mapping.rows = {rows} and mapping.cols = {cols} in the station config to \
                     resample it onto the model's"
                )
            } else {
                format!(
                    "frame {seq}: a {rows}×{cols} grid, but the config's [mapping] says the \
                     station's is {}×{}",
                    self.rows, self.cols
                )
            }));
        }
        let names = frame.channels.as_slice();
        let mut sources = Vec::new(); // (model channel, station channel index)
        for (m, c) in self.channels.iter().enumerate() {
            let Some(from) = &c.from else { continue };
            match names.iter().position(|x| x == from) {
                Some(i) => sources.push((m, i)),
                None => {
                    let model = &self.model.channels[m];
                    return Err(shape(format!(
                        "frame {seq}: no channel `{from}` (it carries [{}]) for the model's \
                         `{model}`; map it with [mapping.channels] {model} = {{ from = \"…\" }}, \
                         or list `{model}` in mapping.unobserved if the station does not \
                         measure it",
                        names.join(", ")
                    )));
                }
            }
        }
        let observed: Vec<usize> = sources.iter().map(|s| s.0).collect();
        let n = self.model.n;
        match frame.sampling {
            Sampling::Dense => {
                let mut values = vec![0.0f32; sources.len() * n * n];
                let mut plane = vec![0.0f32; rows * cols];
                let mut tmp = vec![0.0f32; n * cols];
                for (o, &(m, i)) in sources.iter().enumerate() {
                    for (k, v) in plane.iter_mut().enumerate() {
                        *v = frame.get(i, k).unwrap_or(f32::NAN);
                    }
                    let out = &mut values[o * n * n..(o + 1) * n * n];
                    self.resample(&plane, &mut tmp, out);
                    let c = &self.channels[m];
                    if (c.scale, c.offset) != (1.0, 0.0) {
                        out.iter_mut()
                            .for_each(|v| *v = (c.scale * f64::from(*v) + c.offset) as f32);
                    }
                }
                Ok(Mapped::Dense { values, observed })
            }
            Sampling::Points(p) => {
                let mut cells: Vec<(usize, usize)> = Vec::new();
                let mut of_point = Vec::with_capacity(p.len());
                let mut seen = std::collections::HashSet::new();
                for g in p.iter() {
                    let (r, c) = (usize::from(g.row), usize::from(g.col));
                    if !seen.insert((r, c)) {
                        return Err(shape(format!(
                            "frame {seq}: sensor point ({r}, {c}) is listed twice; each cell once"
                        )));
                    }
                    let cell = self.cell(r, c);
                    let k = cells.iter().position(|x| *x == cell).unwrap_or_else(|| {
                        cells.push(cell);
                        cells.len() - 1
                    });
                    of_point.push(k);
                }
                let m = cells.len();
                let mut values = vec![0.0f64; observed.len() * m];
                let mut count = vec![0u32; m];
                of_point.iter().for_each(|&k| count[k] += 1);
                for (o, &(mc, i)) in sources.iter().enumerate() {
                    let c = &self.channels[mc];
                    for (j, &k) in of_point.iter().enumerate() {
                        let v = f64::from(frame.get(i, j).unwrap_or(f32::NAN));
                        values[o * m + k] += (c.scale * v + c.offset) / f64::from(count[k]);
                    }
                }
                Ok(Mapped::Points {
                    points: cells,
                    values: values.into_iter().map(|v| v as f32).collect(),
                    observed,
                })
            }
        }
    }

    /// `plane` (`rows × cols`) resampled into `out` (`n × n`); `tmp` holds `n × cols`.
    fn resample(&self, plane: &[f32], tmp: &mut [f32], out: &mut [f32]) {
        let (n, cols) = (self.model.n, self.cols);
        if self.rows == n && cols == n {
            out.copy_from_slice(plane);
            return;
        }
        for (i, taps) in self.row_map.taps.iter().enumerate() {
            let row = &mut tmp[i * cols..(i + 1) * cols];
            row.iter_mut().for_each(|x| *x = 0.0);
            for &(j, w) in taps {
                for (x, v) in row.iter_mut().zip(&plane[j * cols..(j + 1) * cols]) {
                    *x += w * v;
                }
            }
        }
        for i in 0..n {
            let row = &tmp[i * cols..(i + 1) * cols];
            for (c, taps) in self.col_map.taps.iter().enumerate() {
                out[i * n + c] = taps.iter().map(|&(j, w)| w * row[j]).sum();
            }
        }
    }

    /// An alert rule's channel (the station's name, or the model's), cell (on the station's
    /// grid) and thresholds (station units) on the model's terms, or what is wrong with it.
    pub fn probe(
        &self,
        channel: &str,
        row: usize,
        col: usize,
        above: f64,
        clear_below: f64,
    ) -> Result<Probe, String> {
        let found = self
            .channels
            .iter()
            .position(|c| c.from.as_deref() == Some(channel))
            .or_else(|| self.model.channels.iter().position(|m| m == channel));
        let Some(m) = found else {
            let station: Vec<&str> = self
                .channels
                .iter()
                .filter_map(|c| c.from.as_deref())
                .collect();
            let model = self.model.channels.join(", ");
            let station = station.join(", ");
            return Err(if station == model {
                format!("`{channel}` is not a channel of this station ({station})")
            } else {
                format!(
                    "`{channel}` is neither a channel of the station ({station}) nor one of the \
                     model's ({model})"
                )
            });
        };
        if row >= self.rows || col >= self.cols {
            return Err(format!(
                "cell ({row}, {col}) lies outside the station's {}×{} grid",
                self.rows, self.cols
            ));
        }
        // a rule on a model channel name is in model units; on a station name, in the station's
        let c = &self.channels[m];
        let (scale, offset) = if c.from.as_deref() == Some(channel) {
            (c.scale, c.offset)
        } else {
            (1.0, 0.0)
        };
        let (r, cc) = self.cell(row, col);
        let n = self.model.n;
        Ok(Probe {
            index: (m * n + r) * n + cc,
            above: scale * above + offset,
            clear_below: scale * clear_below + offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_bridge::{Channels, GridPoint, GridShape, PackedSlice, Values};

    fn model() -> ModelGrid {
        ModelGrid {
            n: 4,
            channels: vec!["h".into(), "hu".into(), "hv".into()],
            frame_dt: 0.5,
            periodic: false,
        }
    }

    fn frame<'a>(
        names: &'a [&'a str],
        rows: u16,
        cols: u16,
        sampling: Sampling<'a>,
        values: &'a [f32],
    ) -> SensorFrame<'a> {
        SensorFrame {
            station: "st",
            seq: 6,
            timestamp_us: 0,
            channels: Channels::new(names).unwrap(),
            shape: GridShape {
                rows,
                cols,
                channels: names.len() as u8,
            },
            sampling,
            values: Values::F32(PackedSlice::new(values)),
        }
    }

    #[test]
    fn axis_maps_keep_means_and_interpolate_linear_fields() {
        for (src, dst) in [(8, 4), (12, 4), (6, 4), (5, 3), (4, 4)] {
            let a = AxisMap::new(src, dst, false);
            for t in &a.taps {
                let s: f32 = t.iter().map(|x| x.1).sum();
                assert!((s - 1.0).abs() < 1e-6, "{src}→{dst}: weights sum to {s}");
            }
            // area weights: every station cell counts src/dst·(1/dst)... the total is kept
            let field: Vec<f32> = (0..src).map(|i| (i * i) as f32).collect();
            let mapped: Vec<f32> = a
                .taps
                .iter()
                .map(|t| t.iter().map(|&(j, w)| w * field[j]).sum())
                .collect();
            let mean_src = field.iter().sum::<f32>() / src as f32;
            let mean_dst = mapped.iter().sum::<f32>() / dst as f32;
            assert!((mean_src - mean_dst).abs() < 1e-4, "{src}→{dst}");
        }
        // upsampling: a linear field is reproduced between the outermost centres
        let a = AxisMap::new(4, 8, false);
        let field = [1.0f32, 3.0, 5.0, 7.0];
        let at = |i: usize| -> f32 { a.taps[i].iter().map(|&(j, w)| w * field[j]).sum() };
        for i in 1..7 {
            let x = (i as f32 + 0.5) * 0.5 - 0.5;
            assert!((at(i) - (1.0 + 2.0 * x)).abs() < 1e-6, "cell {i}");
        }
        assert_eq!(at(0), 1.0); // held past the wall
        let p = AxisMap::new(4, 8, true);
        assert_eq!(p.taps[0], vec![(3, 0.25), (0, 0.75)]); // wraps
        // cells
        let d = AxisMap::new(128, 64, false);
        assert_eq!(
            (d.cell(0), d.cell(1), d.cell(2), d.cell(127)),
            (0, 0, 1, 63)
        );
        let u = AxisMap::new(32, 64, false);
        assert_eq!((u.cell(0), u.cell(31)), (1, 63));
    }

    #[test]
    fn refuses_what_cannot_be_mapped_and_says_which_key() {
        let bad = |cfg: MappingConfig, needle: &str| {
            let e = StationMap::new(&cfg, &model()).unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        let slow = MappingConfig {
            frame_seconds: Some(1.0),
            ..Default::default()
        };
        bad(slow, "further apart than its step");
        let odd = MappingConfig {
            frame_seconds: Some(0.3),
            ..Default::default()
        };
        bad(odd, "not a whole number");
        let mut unknown = MappingConfig::default();
        unknown.unobserved.push("depth".into());
        bad(unknown, "`depth` is not a channel of the model");
        let all = MappingConfig {
            unobserved: vec!["h".into(), "hu".into(), "hv".into()],
            ..Default::default()
        };
        bad(all, "at least one");
        let mut neg = MappingConfig::default();
        neg.channels.insert(
            "h".into(),
            ChannelMapping {
                from: None,
                scale: -1.0,
                offset: 0.0,
            },
        );
        bad(neg, "mapping.channels.h: scale must be positive");
        let fast = MappingConfig {
            frame_seconds: Some(0.125),
            ..Default::default()
        };
        let m = StationMap::new(&fast, &model()).unwrap();
        assert_eq!(m.frames_per_step(), 4);
        assert_eq!((m.model_seq(8), m.model_seq(9)), (Some(2), None));
        assert!(
            StationMap::new(&MappingConfig::default(), &model())
                .unwrap()
                .is_identity()
        );
    }

    #[test]
    fn maps_a_finer_grid_with_other_names_units_and_a_missing_channel() {
        let mut cfg = MappingConfig {
            rows: Some(8),
            cols: Some(8),
            unobserved: vec!["hv".into()],
            ..Default::default()
        };
        cfg.channels.insert(
            "h".into(),
            ChannelMapping {
                from: Some("depth_cm".into()),
                scale: 0.01,
                offset: 0.0,
            },
        );
        let m = StationMap::new(&cfg, &model()).unwrap();
        assert!(!m.is_identity());
        // the station sends hu first, depth second, and an extra channel
        let mut vals = Vec::new();
        vals.extend((0..64).map(|i| i as f32)); // hu
        vals.extend((0..64).map(|i| 100.0 + (i / 8) as f32 * 10.0)); // depth in cm, by row
        vals.extend(std::iter::repeat_n(7.0, 64)); // temperature, ignored
        let names = ["hu", "depth_cm", "temp"];
        let Mapped::Dense { values, observed } =
            m.map(&frame(&names, 8, 8, Sampling::Dense, &vals)).unwrap()
        else {
            panic!("dense in, dense out")
        };
        assert_eq!(observed, vec![0, 1]);
        // h: the mean of rows 2r and 2r+1, in metres
        for r in 0..4 {
            let want = (100.0 + (2 * r) as f32 * 10.0 + 5.0) * 0.01;
            assert!((values[r * 4 + 1] - want).abs() < 1e-5);
        }
        // hu: 2×2 block means; the mean of the field is kept
        assert!((values[16] - (0.0 + 1.0 + 8.0 + 9.0) / 4.0).abs() < 1e-5);
        let mean: f32 = values[16..32].iter().sum::<f32>() / 16.0;
        assert!((mean - 31.5).abs() < 1e-4);
        // a frame without depth names the key to set
        let e = m
            .map(&frame(&["hu"], 8, 8, Sampling::Dense, &vals[..64]))
            .unwrap_err();
        assert!(e.1.contains("no channel `depth_cm`") && e.1.contains("mapping.unobserved"));
        // the wrong grid
        let e = m
            .map(&frame(&names, 4, 4, Sampling::Dense, &vals[..48]))
            .unwrap_err();
        assert!(e.1.contains("says the station's is 8×8"), "{}", e.1);
        // sensor points: two in one model cell are averaged
        let pts = [
            GridPoint { row: 0, col: 0 },
            GridPoint { row: 1, col: 1 },
            GridPoint { row: 7, col: 2 },
        ];
        let pv = [1.0, 3.0, 5.0, 100.0, 200.0, 300.0, 0.0, 0.0, 0.0];
        let Mapped::Points {
            points,
            values,
            observed,
        } = m
            .map(&frame(
                &names,
                8,
                8,
                Sampling::Points(PackedSlice::new(&pts)),
                &pv,
            ))
            .unwrap()
        else {
            panic!("points in, points out")
        };
        assert_eq!(points, vec![(0, 0), (3, 1)]);
        assert_eq!(observed, vec![0, 1]);
        assert_eq!(values, vec![1.5, 3.0, 2.0, 5.0]);
        // an alert on depth at station cell (7, 2), in cm
        let p = m.probe("depth_cm", 7, 2, 25.0, 20.0).unwrap();
        assert_eq!(p.index, 3 * 4 + 1);
        assert!((p.above - 0.25).abs() < 1e-12 && (p.clear_below - 0.2).abs() < 1e-12);
        assert!(m.probe("flow", 0, 0, 1.0, 0.5).is_err());
        assert!(m.probe("h", 8, 0, 1.0, 0.5).is_err());
    }
}
