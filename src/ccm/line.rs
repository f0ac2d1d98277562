//! The merge line `θ(α)` and the in-place merge.
//!
//! Between two endpoint experts the line is `θ(α) = θ_A + s + α·d`, which equals
//! `((1−α)/2)·θ_L + ((1+α)/2)·θ_H`: deployment needs only the two endpoints, and the affine form
//! makes the endpoint identities exact in floating point (`θ(−1)` *is* `θ_L`, bit for bit). Other
//! lines (a random direction of the same norm, for the control experiment) are `base + α·dir`.
//! Either way a merge is one pass over two input slices into one output buffer: no whole-model
//! allocation per `α`.

use super::weights::{LayoutMismatch, WeightSet};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    /// `((1−α)/2)·u + ((1+α)/2)·v`, with `u = θ_L`, `v = θ_H`.
    Endpoints,
    /// `u + α·v`, with `u` the base and `v` the direction.
    BaseDirection,
}

/// A line through weight space, parameterised by the coordinate `α`.
#[derive(Debug, Clone)]
pub struct Line {
    form: Form,
    u: WeightSet,
    v: WeightSet,
}

impl Line {
    /// The CCM line through the two endpoint experts (`α = −1` → `low`, `α = +1` → `high`).
    pub fn through_endpoints(low: WeightSet, high: WeightSet) -> Result<Self, LayoutMismatch> {
        low.same_layout(&high)?;
        Ok(Line {
            form: Form::Endpoints,
            u: low,
            v: high,
        })
    }

    /// The line `base + α·direction`.
    pub fn from_base_direction(
        base: WeightSet,
        direction: WeightSet,
    ) -> Result<Self, LayoutMismatch> {
        base.same_layout(&direction)?;
        Ok(Line {
            form: Form::BaseDirection,
            u: base,
            v: direction,
        })
    }

    /// The coefficients `(a, b)` with `θ(α) = a·u + b·v`.
    fn coefficients(&self, alpha: f32) -> (f32, f32) {
        match self.form {
            Form::Endpoints => (0.5 * (1.0 - alpha), 0.5 * (1.0 + alpha)),
            Form::BaseDirection => (1.0, alpha),
        }
    }

    /// A weight set with the line's layout (values of `θ(0)`), to merge into.
    pub fn buffer(&self) -> WeightSet {
        let mut w = self.u.clone();
        self.merge_into(0.0, &mut w)
            .expect("same layout by construction");
        w
    }

    /// Writes `θ(α)` into `out`, in place. `out` must have the line's layout.
    pub fn merge_into(&self, alpha: f32, out: &mut WeightSet) -> Result<(), LayoutMismatch> {
        if out.tensors() != self.u.tensors() {
            self.u.same_layout(out)?;
        }
        let (a, b) = self.coefficients(alpha);
        merge_slices(a, self.u.data(), b, self.v.data(), out.data_mut());
        Ok(())
    }
}

/// `out = a·u + b·v`, elementwise. Exact when a coefficient is 0 and the other 1.
pub fn merge_slices(a: f32, u: &[f32], b: f32, v: &[f32], out: &mut [f32]) {
    assert!(
        u.len() == out.len() && v.len() == out.len(),
        "slice lengths"
    );
    if b == 0.0 {
        out.iter_mut().zip(u).for_each(|(o, x)| *o = a * x);
    } else if a == 0.0 {
        out.iter_mut().zip(v).for_each(|(o, y)| *o = b * y);
    } else {
        for ((o, x), y) in out.iter_mut().zip(u).zip(v) {
            *o = a * x + b * y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(values: &[f32]) -> WeightSet {
        WeightSet::from_tensors([
            ("a".to_string(), vec![2], values[..2].to_vec()),
            (
                "b".to_string(),
                vec![values.len() - 2],
                values[2..].to_vec(),
            ),
        ])
        .unwrap()
    }

    #[test]
    fn endpoint_identities_are_exact() {
        let low = ws(&[0.1, -0.37, 1e-7, 3.3]);
        let high = ws(&[0.7, 0.2, -2e-7, 3.1]);
        let line = Line::through_endpoints(low.clone(), high.clone()).unwrap();
        let mut out = line.buffer();
        line.merge_into(-1.0, &mut out).unwrap();
        assert_eq!(out, low);
        line.merge_into(1.0, &mut out).unwrap();
        assert_eq!(out, high);
        line.merge_into(0.0, &mut out).unwrap();
        let avg: Vec<f32> = low
            .data()
            .iter()
            .zip(high.data())
            .map(|(x, y)| 0.5 * x + 0.5 * y)
            .collect();
        assert_eq!(out.data(), avg.as_slice());
        // extrapolation: one weight turns negative
        line.merge_into(2.0, &mut out).unwrap();
        assert!((out.data()[0] - (-0.5 * 0.1 + 1.5 * 0.7)).abs() < 1e-7);
    }

    #[test]
    fn base_direction_line() {
        let base = ws(&[1.0, 2.0, 3.0, 4.0]);
        let dir = ws(&[0.5, 0.0, -1.0, 2.0]);
        let line = Line::from_base_direction(base, dir).unwrap();
        let mut out = line.buffer();
        line.merge_into(2.0, &mut out).unwrap();
        assert_eq!(out.data(), &[2.0, 2.0, 1.0, 8.0]);
    }

    #[test]
    fn a_buffer_of_another_layout_is_refused() {
        let line = Line::through_endpoints(ws(&[0.0; 4]), ws(&[1.0; 4])).unwrap();
        let mut other = ws(&[0.0; 5]);
        assert!(line.merge_into(0.5, &mut other).is_err());
    }
}
