//! The physical direction from more than two experts: the principal axis of their updates.
//!
//! With experts `θ_1 … θ_N` fine-tuned from one anchor at several regimes along the same
//! parameter, the updates `Δ_i = θ_i − θ_A` are centred (`R_i = Δ_i − mean Δ`) and the direction
//! is the leading principal axis of the `R_i`. With millions of weights and a handful of experts,
//! the axis comes from the `N × N` Gram matrix `R Rᵀ` (its eigenvectors give the axis as a
//! combination of the residuals), which is exact and costs `N²` dot products. The share of the
//! spread the axis explains says whether one scalar direction describes the experts at all.

use nalgebra::{DMatrix, SymmetricEigen};

use super::weights::{LayoutMismatch, WeightSet};

/// The leading axis of a set of experts.
#[derive(Debug, Clone)]
pub struct PrincipalAxis {
    /// `θ_A + mean Δ`: the centre of the experts.
    pub centre: WeightSet,
    /// Unit-norm direction, oriented so that projections grow with the experts' coordinates.
    pub direction: WeightSet,
    /// Projection of each expert's residual on the direction (same order as the input).
    pub projections: Vec<f64>,
    /// Fraction of the residuals' total variance along the direction (1 for two experts).
    pub explained: f64,
}

/// Why the axis could not be found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AxisError {
    /// Fewer than two experts.
    #[error("a principal axis needs at least two experts, got {0}")]
    TooFew(usize),
    /// Experts do not share the anchor's layout.
    #[error("expert {index} does not share the anchor's graph: {mismatch}")]
    Layout {
        /// Which expert.
        index: usize,
        /// How.
        mismatch: LayoutMismatch,
    },
    /// All experts are identical.
    #[error("the experts do not differ from each other")]
    Degenerate,
}

/// The principal axis of `experts` around `anchor`; `coordinates[i]` (e.g. `s(p_i)`) orients it.
pub fn principal_axis(
    anchor: &WeightSet,
    experts: &[WeightSet],
    coordinates: &[f64],
) -> Result<PrincipalAxis, AxisError> {
    let n = experts.len();
    if n < 2 {
        return Err(AxisError::TooFew(n));
    }
    assert_eq!(coordinates.len(), n, "one coordinate per expert");
    for (index, e) in experts.iter().enumerate() {
        anchor
            .same_layout(e)
            .map_err(|mismatch| AxisError::Layout { index, mismatch })?;
    }
    let len = anchor.len();
    let mut mean = vec![0.0f64; len];
    for e in experts {
        for ((m, x), a) in mean.iter_mut().zip(e.data()).zip(anchor.data()) {
            *m += (*x as f64 - *a as f64) / n as f64;
        }
    }
    let residual =
        |i: usize, k: usize| experts[i].data()[k] as f64 - anchor.data()[k] as f64 - mean[k];
    let mut gram = DMatrix::<f64>::zeros(n, n);
    for i in 0..n {
        for j in i..n {
            let dot: f64 = (0..len).map(|k| residual(i, k) * residual(j, k)).sum();
            gram[(i, j)] = dot;
            gram[(j, i)] = dot;
        }
    }
    let eig = SymmetricEigen::new(gram);
    let total: f64 = eig.eigenvalues.iter().map(|v| v.max(0.0)).sum();
    if total <= 0.0 {
        return Err(AxisError::Degenerate);
    }
    let top = eig.eigenvalues.iamax();
    let lambda = eig.eigenvalues[top];
    let v = eig.eigenvectors.column(top);
    // axis = Σ v_i R_i / sqrt(λ) has unit norm
    let mut dir = vec![0.0f64; len];
    for (i, vi) in v.iter().enumerate() {
        for (k, d) in dir.iter_mut().enumerate() {
            *d += vi * residual(i, k);
        }
    }
    let scale = 1.0 / lambda.sqrt();
    dir.iter_mut().for_each(|d| *d *= scale);
    // projections: ⟨R_i, axis⟩ = sqrt(λ)·v_i
    let mut projections: Vec<f64> = v.iter().map(|vi| vi * lambda.sqrt()).collect();
    // orient with the coordinates
    let corr: f64 = projections
        .iter()
        .zip(coordinates)
        .map(|(p, c)| p * c)
        .sum();
    if corr < 0.0 {
        dir.iter_mut().for_each(|d| *d = -*d);
        projections.iter_mut().for_each(|p| *p = -*p);
    }
    let mut centre = anchor.clone();
    for (c, m) in centre.data_mut().iter_mut().zip(&mean) {
        *c = (*c as f64 + m) as f32;
    }
    let mut direction = anchor.clone();
    for (d, v) in direction.data_mut().iter_mut().zip(&dir) {
        *d = *v as f32;
    }
    Ok(PrincipalAxis {
        centre,
        direction,
        projections,
        explained: lambda / total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(v: &[f32]) -> WeightSet {
        WeightSet::from_tensors([("w".to_string(), vec![v.len()], v.to_vec())]).unwrap()
    }

    #[test]
    fn two_experts_give_the_ccm_direction() {
        let a = ws(&[0.0, 0.0, 0.0]);
        let low = ws(&[1.0, -1.0, 2.0]);
        let high = ws(&[1.0, 3.0, 2.0]);
        let ax = principal_axis(&a, &[low, high], &[-1.0, 1.0]).unwrap();
        assert!((ax.explained - 1.0).abs() < 1e-12);
        let d = ax.direction.data();
        assert!(
            d[0].abs() < 1e-7 && (d[1] - 1.0).abs() < 1e-7 && d[2].abs() < 1e-7,
            "{d:?}"
        );
        assert!((ax.projections[0] + 2.0).abs() < 1e-9 && (ax.projections[1] - 2.0).abs() < 1e-9);
        assert_eq!(ax.centre.data(), &[1.0, 1.0, 2.0]);
    }

    #[test]
    fn experts_along_a_noisy_line_are_explained_by_one_axis() {
        let a = ws(&[0.0; 4]);
        let axis = [0.6f32, -0.8, 0.0, 0.0];
        let noise = [
            [0.01f32, 0.0, -0.02, 0.01],
            [0.0, 0.02, 0.01, -0.01],
            [-0.01, 0.0, 0.0, 0.02],
            [0.02, -0.01, 0.01, 0.0],
        ];
        let ts = [-1.5f32, -0.5, 0.5, 1.5];
        let experts: Vec<WeightSet> = ts
            .iter()
            .zip(&noise)
            .map(|(t, nz)| {
                ws(&std::array::from_fn::<f32, 4, _>(|k| {
                    0.3 + t * axis[k] + nz[k]
                }))
            })
            .collect();
        let coords: Vec<f64> = ts.iter().map(|&t| t as f64).collect();
        let ax = principal_axis(&a, &experts, &coords).unwrap();
        assert!(ax.explained > 0.99, "{}", ax.explained);
        let cos: f32 = ax
            .direction
            .data()
            .iter()
            .zip(&axis)
            .map(|(d, a)| d * a)
            .sum();
        assert!(cos > 0.999, "{cos}");
        assert!(ax.projections.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn degenerate_inputs_are_refused() {
        let a = ws(&[0.0; 2]);
        assert_eq!(
            principal_axis(&a, &[ws(&[1.0, 1.0])], &[0.0]).unwrap_err(),
            AxisError::TooFew(1)
        );
        let same = ws(&[1.0, 1.0]);
        assert_eq!(
            principal_axis(&a, &[same.clone(), same], &[0.0, 1.0]).unwrap_err(),
            AxisError::Degenerate
        );
    }
}
