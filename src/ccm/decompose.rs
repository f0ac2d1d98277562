//! The decomposition of the endpoint updates and its diagnostics.
//!
//! With `Δ_L = θ_L − θ_A` and `Δ_H = θ_H − θ_A`: the family-shared adaptation
//! `s = (Δ_L + Δ_H)/2` and the physical direction `d = (Δ_H − Δ_L)/2`. Diagnostics are computed
//! per tensor and in total, in `f64`.

use super::weights::{LayoutMismatch, WeightSet};

/// A family's three experts, checked to share one layout.
#[derive(Debug, Clone)]
pub struct Experts {
    /// The family anchor `θ_A`.
    pub anchor: WeightSet,
    /// The low endpoint expert `θ_L`.
    pub low: WeightSet,
    /// The high endpoint expert `θ_H`.
    pub high: WeightSet,
}

/// Which pair of experts disagrees, and how.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the {left} and {right} experts do not share one graph: {mismatch}")]
pub struct ExpertsMismatch {
    /// Role of the first expert.
    pub left: &'static str,
    /// Role of the second expert.
    pub right: &'static str,
    /// The difference.
    pub mismatch: LayoutMismatch,
}

impl Experts {
    /// Checks the layouts and bundles the experts.
    pub fn new(
        anchor: WeightSet,
        low: WeightSet,
        high: WeightSet,
    ) -> Result<Self, ExpertsMismatch> {
        let err = |left, right| {
            move |mismatch| ExpertsMismatch {
                left,
                right,
                mismatch,
            }
        };
        anchor.same_layout(&low).map_err(err("anchor", "low"))?;
        anchor.same_layout(&high).map_err(err("anchor", "high"))?;
        Ok(Experts { anchor, low, high })
    }

    /// Names of the tensors in which the three experts are not all equal: the only ones a
    /// merge `θ_A + s + α·d` changes (the others, such as fixed DFT bases, are the same in
    /// every merge). In layout order.
    pub fn varying(&self) -> Vec<String> {
        self.anchor
            .tensors()
            .iter()
            .filter(|t| {
                let r = t.offset..t.offset + t.len();
                let a = &self.anchor.data()[r.clone()];
                a != &self.low.data()[r.clone()] || a != &self.high.data()[r]
            })
            .map(|t| t.name.clone())
            .collect()
    }

    /// The shared adaptation `s` and the direction `d`.
    pub fn shared_and_direction(&self) -> (WeightSet, WeightSet) {
        let mut s = self.anchor.clone();
        let mut d = self.anchor.clone();
        let (a, l, h) = (self.anchor.data(), self.low.data(), self.high.data());
        for i in 0..a.len() {
            let (dl, dh) = (l[i] as f64 - a[i] as f64, h[i] as f64 - a[i] as f64);
            s.data_mut()[i] = (0.5 * (dl + dh)) as f32;
            d.data_mut()[i] = (0.5 * (dh - dl)) as f32;
        }
        (s, d)
    }

    /// Norms, cosines and shares per tensor and in total.
    pub fn diagnostics(&self) -> Diagnostics {
        let mut rows = Vec::new();
        let mut total = Accumulator::default();
        for t in self.anchor.tensors() {
            let range = t.offset..t.offset + t.len();
            let mut acc = Accumulator::default();
            acc.add(
                &self.anchor.data()[range.clone()],
                &self.low.data()[range.clone()],
                &self.high.data()[range],
            );
            total.merge(&acc);
            rows.push(acc.finish(&t.name, t.len()));
        }
        Diagnostics {
            tensors: rows,
            total: total.finish("total", self.anchor.len()),
        }
    }
}

/// A random direction for the control experiment: each tensor of `d` replaced by an i.i.d.
/// Gaussian tensor (seeded by `seed`, ChaCha8) scaled to that tensor's norm. So `‖r‖ = ‖d‖`,
/// and also per tensor: the perturbation is spread over the layers as the physical direction's
/// is, and the tensors `d` leaves alone (constants such as the DFT bases, equal in every
/// expert) stay untouched. A line along it, `θ(0) + α·r`, differs from the CCM line only in
/// where it points.
pub fn random_direction(d: &WeightSet, seed: u64) -> WeightSet {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut r = d.clone();
    for t in d.tensors() {
        let range = t.offset..t.offset + t.len();
        let norm = |x: &[f32]| x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let target = norm(&d.data()[range.clone()]);
        let out = &mut r.data_mut()[range];
        if target == 0.0 {
            out.fill(0.0);
            continue;
        }
        let draw: Vec<f64> = (0..out.len())
            .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal))
            .collect();
        let scale = target / draw.iter().map(|v| v * v).sum::<f64>().sqrt();
        for (o, v) in out.iter_mut().zip(draw) {
            *o = (v * scale) as f32;
        }
    }
    r
}

#[derive(Default, Clone, Copy)]
struct Accumulator {
    ll: f64,
    hh: f64,
    lh: f64,
}

impl Accumulator {
    fn add(&mut self, a: &[f32], l: &[f32], h: &[f32]) {
        for i in 0..a.len() {
            let dl = l[i] as f64 - a[i] as f64;
            let dh = h[i] as f64 - a[i] as f64;
            self.ll += dl * dl;
            self.hh += dh * dh;
            self.lh += dl * dh;
        }
    }
    fn merge(&mut self, o: &Accumulator) {
        self.ll += o.ll;
        self.hh += o.hh;
        self.lh += o.lh;
    }
    fn finish(&self, name: &str, params: usize) -> TensorDiagnostics {
        // ‖s‖² = (‖Δ_L‖² + ‖Δ_H‖² + 2⟨Δ_L,Δ_H⟩)/4, ‖d‖² = (‖Δ_L‖² + ‖Δ_H‖² − 2⟨Δ_L,Δ_H⟩)/4
        let s2 = ((self.ll + self.hh + 2.0 * self.lh) / 4.0).max(0.0);
        let d2 = ((self.ll + self.hh - 2.0 * self.lh) / 4.0).max(0.0);
        let denom = (self.ll * self.hh).sqrt();
        TensorDiagnostics {
            name: name.to_string(),
            params,
            delta_low: self.ll.sqrt(),
            delta_high: self.hh.sqrt(),
            shared: s2.sqrt(),
            direction: d2.sqrt(),
            cosine: if denom > 0.0 {
                self.lh / denom
            } else {
                f64::NAN
            },
            direction_share: if s2 + d2 > 0.0 {
                d2 / (s2 + d2)
            } else {
                f64::NAN
            },
        }
    }
}

/// Diagnostics of one tensor (or of the whole model).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorDiagnostics {
    /// Tensor name (`total` for the whole model).
    pub name: String,
    /// Number of values.
    pub params: usize,
    /// `‖Δ_L‖`.
    pub delta_low: f64,
    /// `‖Δ_H‖`.
    pub delta_high: f64,
    /// `‖s‖`.
    pub shared: f64,
    /// `‖d‖`.
    pub direction: f64,
    /// `cos(Δ_L, Δ_H)` (NaN when an update is zero).
    pub cosine: f64,
    /// `‖d‖² / (‖s‖² + ‖d‖²)`: the share of the update that is direction (NaN when frozen).
    pub direction_share: f64,
}

/// Per-tensor and total diagnostics of a decomposition.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Diagnostics {
    /// One row per tensor, in layout order.
    pub tensors: Vec<TensorDiagnostics>,
    /// The whole model.
    pub total: TensorDiagnostics,
}

impl Diagnostics {
    /// A plain-text table (tensors that never moved are summarised in one line).
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<34} {:>9} {:>10} {:>10} {:>10} {:>10} {:>7} {:>7}",
            "tensor", "params", "|dL|", "|dH|", "|s|", "|d|", "cos", "d share"
        );
        let mut frozen = 0;
        for r in self.tensors.iter().chain(std::iter::once(&self.total)) {
            if r.name != "total" && r.delta_low == 0.0 && r.delta_high == 0.0 {
                frozen += 1;
                continue;
            }
            let _ = writeln!(
                out,
                "{:<34} {:>9} {:>10.3e} {:>10.3e} {:>10.3e} {:>10.3e} {:>7.3} {:>7.3}",
                r.name,
                r.params,
                r.delta_low,
                r.delta_high,
                r.shared,
                r.direction,
                r.cosine,
                r.direction_share
            );
        }
        if frozen > 0 {
            let _ = writeln!(
                out,
                "({frozen} tensors identical in all three experts: fixed constants)"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_direction_keeps_the_norm_of_each_tensor() {
        let d = ws(&[3.0, -4.0, 0.0, 1e-3], &[0.0, 0.0]);
        let r = random_direction(&d, 7);
        let norm = |x: &[f32]| x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm(r.get("w").unwrap()) - norm(d.get("w").unwrap())).abs() < 1e-6);
        assert_eq!(
            r.get("fixed").unwrap(),
            &[0.0, 0.0],
            "a constant stays constant"
        );
        assert_ne!(r, d);
        assert_eq!(r, random_direction(&d, 7), "seeded");
        assert_ne!(r, random_direction(&d, 8));
        r.same_layout(&d).unwrap();
    }

    fn ws(a: &[f32], b: &[f32]) -> WeightSet {
        WeightSet::from_tensors([
            ("w".to_string(), vec![a.len()], a.to_vec()),
            ("fixed".to_string(), vec![b.len()], b.to_vec()),
        ])
        .unwrap()
    }

    #[test]
    fn decomposition_and_diagnostics() {
        let anchor = ws(&[1.0, 1.0, 1.0], &[5.0]);
        let low = ws(&[0.0, 1.0, 2.0], &[5.0]);
        let high = ws(&[2.0, 1.0, 2.0], &[5.0]);
        let e = Experts::new(anchor, low, high).unwrap();
        let (s, d) = e.shared_and_direction();
        assert_eq!(s.get("w").unwrap(), &[0.0, 0.0, 1.0]);
        assert_eq!(d.get("w").unwrap(), &[1.0, 0.0, 0.0]);
        let diag = e.diagnostics();
        let t = &diag.total;
        assert!((t.delta_low - 2f64.sqrt()).abs() < 1e-12);
        assert!((t.shared - 1.0).abs() < 1e-12 && (t.direction - 1.0).abs() < 1e-12);
        assert!((t.cosine - 0.0).abs() < 1e-12);
        assert!((t.direction_share - 0.5).abs() < 1e-12);
        assert!(diag.tensors[1].cosine.is_nan());
        let table = diag.table();
        assert!(table.contains("1 tensors identical"), "{table}");
    }

    #[test]
    fn mismatching_experts_are_named() {
        let a = ws(&[1.0, 1.0, 1.0], &[5.0]);
        let bad = WeightSet::from_tensors([("w".to_string(), vec![3], vec![0.0; 3])]).unwrap();
        let err = Experts::new(a.clone(), a.clone(), bad)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the anchor and high experts do not share one graph: tensor 'fixed' exists only in the left model"
        );
    }
}
