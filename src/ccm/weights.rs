//! Named weight sets in one contiguous buffer.
//!
//! A [`WeightSet`] is the currency between the trainer, the ONNX files, the merge and the
//! runtimes: an ordered list of named `f32` tensors whose values live back to back in one
//! `Vec<f32>`. Two experts of a family have the same *layout* (names, shapes, order), so a merge
//! is one pass over three equally long slices, and "do these experts share a graph" is a layout
//! comparison that can say exactly which tensor differs.

use std::fmt;

/// One tensor of a weight set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Canonical name, e.g. `layers.0.spectral.weight_re`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Offset of its first value in the buffer.
    pub offset: usize,
}

impl TensorInfo {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How two layouts differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutMismatch {
    /// A tensor is in one set only.
    Missing {
        /// Its name.
        name: String,
        /// Which side has it (`"left"` or `"right"`).
        present_in: &'static str,
    },
    /// Same name, different shapes.
    Shape {
        /// The tensor.
        name: String,
        /// Shape on the left.
        left: Vec<usize>,
        /// Shape on the right.
        right: Vec<usize>,
    },
    /// Same tensors in a different order.
    Order {
        /// Position where they first differ.
        index: usize,
    },
}

impl fmt::Display for LayoutMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutMismatch::Missing { name, present_in } => {
                write!(f, "tensor '{name}' exists only in the {present_in} model")
            }
            LayoutMismatch::Shape { name, left, right } => {
                write!(
                    f,
                    "tensor '{name}' has shape {left:?} in one model and {right:?} in the other"
                )
            }
            LayoutMismatch::Order { index } => {
                write!(
                    f,
                    "the tensors are ordered differently from position {index} on"
                )
            }
        }
    }
}

impl std::error::Error for LayoutMismatch {}

/// Why a weight set could not be built or used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightError {
    /// A tensor name is used twice.
    #[error("tensor '{0}' appears twice")]
    Duplicate(String),
    /// A tensor's data does not fit its shape.
    #[error("tensor '{name}': shape {shape:?} needs {expected} values, got {found}")]
    Size {
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Values the shape needs.
        expected: usize,
        /// Values given.
        found: usize,
    },
    /// No tensor of that name.
    #[error("no tensor named '{0}'")]
    Unknown(String),
}

/// An ordered set of named `f32` tensors in one buffer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WeightSet {
    tensors: Vec<TensorInfo>,
    data: Vec<f32>,
}

impl WeightSet {
    /// Builds a set from `(name, shape, values)` triples, keeping their order.
    pub fn from_tensors<I>(tensors: I) -> Result<Self, WeightError>
    where
        I: IntoIterator<Item = (String, Vec<usize>, Vec<f32>)>,
    {
        let mut set = WeightSet::default();
        for (name, shape, values) in tensors {
            set.push(name, shape, &values)?;
        }
        Ok(set)
    }

    /// A set of zeros with the given layout.
    pub fn zeros(layout: &[(String, Vec<usize>)]) -> Result<Self, WeightError> {
        Self::from_tensors(
            layout
                .iter()
                .map(|(n, s)| (n.clone(), s.clone(), vec![0.0; s.iter().product()])),
        )
    }

    /// Appends a tensor.
    pub fn push(
        &mut self,
        name: String,
        shape: Vec<usize>,
        values: &[f32],
    ) -> Result<(), WeightError> {
        let expected: usize = shape.iter().product();
        if expected != values.len() {
            return Err(WeightError::Size {
                name,
                shape,
                expected,
                found: values.len(),
            });
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(WeightError::Duplicate(name));
        }
        self.tensors.push(TensorInfo {
            name,
            shape,
            offset: self.data.len(),
        });
        self.data.extend_from_slice(values);
        Ok(())
    }

    /// The tensors, in order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// All values, back to back.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// All values, mutable (the layout cannot change through this).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Total number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The tensor called `name`.
    pub fn info(&self, name: &str) -> Result<&TensorInfo, WeightError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| WeightError::Unknown(name.to_string()))
    }

    /// The values of the tensor called `name`.
    pub fn get(&self, name: &str) -> Result<&[f32], WeightError> {
        let t = self.info(name)?;
        Ok(&self.data[t.offset..t.offset + t.len()])
    }

    /// The values of the tensor called `name`, mutable.
    pub fn get_mut(&mut self, name: &str) -> Result<&mut [f32], WeightError> {
        let t = self.info(name)?.clone();
        Ok(&mut self.data[t.offset..t.offset + t.len()])
    }

    /// A new set holding the named tensors, in the order given.
    pub fn select<'n>(
        &self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Result<WeightSet, WeightError> {
        let mut out = WeightSet::default();
        for name in names {
            let t = self.info(name)?;
            out.push(t.name.clone(), t.shape.clone(), self.get(name)?)?;
        }
        Ok(out)
    }

    /// Checks that `other` has the same names, shapes and order; reports the first difference.
    pub fn same_layout(&self, other: &WeightSet) -> Result<(), LayoutMismatch> {
        for t in &self.tensors {
            match other.tensors.iter().find(|o| o.name == t.name) {
                None => {
                    return Err(LayoutMismatch::Missing {
                        name: t.name.clone(),
                        present_in: "left",
                    });
                }
                Some(o) if o.shape != t.shape => {
                    return Err(LayoutMismatch::Shape {
                        name: t.name.clone(),
                        left: t.shape.clone(),
                        right: o.shape.clone(),
                    });
                }
                _ => {}
            }
        }
        if let Some(o) = other.tensors.iter().find(|o| self.info(&o.name).is_err()) {
            return Err(LayoutMismatch::Missing {
                name: o.name.clone(),
                present_in: "right",
            });
        }
        if let Some(index) = self
            .tensors
            .iter()
            .zip(&other.tensors)
            .position(|(a, b)| a.name != b.name)
        {
            return Err(LayoutMismatch::Order { index });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[(&str, &[usize])]) -> WeightSet {
        WeightSet::zeros(
            &entries
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_vec()))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn tensors_are_laid_out_back_to_back() {
        let mut w = set(&[("a", &[2, 3]), ("b", &[4])]);
        assert_eq!(w.len(), 10);
        w.get_mut("b")
            .unwrap()
            .copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(&w.data()[6..], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(w.info("b").unwrap().offset, 6);
        assert!(matches!(w.get("c"), Err(WeightError::Unknown(_))));
    }

    #[test]
    fn layout_differences_are_named() {
        let a = set(&[("a", &[2, 3]), ("b", &[4])]);
        assert_eq!(a.same_layout(&a.clone()), Ok(()));
        let shape = set(&[("a", &[3, 2]), ("b", &[4])]);
        assert_eq!(
            a.same_layout(&shape).unwrap_err().to_string(),
            "tensor 'a' has shape [2, 3] in one model and [3, 2] in the other"
        );
        let missing = set(&[("a", &[2, 3])]);
        assert!(
            a.same_layout(&missing)
                .unwrap_err()
                .to_string()
                .contains("'b' exists only in the left")
        );
        let extra = set(&[("a", &[2, 3]), ("b", &[4]), ("c", &[1])]);
        assert!(
            a.same_layout(&extra)
                .unwrap_err()
                .to_string()
                .contains("'c' exists only in the right")
        );
        let order = set(&[("b", &[4]), ("a", &[2, 3])]);
        assert_eq!(
            a.same_layout(&order),
            Err(LayoutMismatch::Order { index: 0 })
        );
    }

    #[test]
    fn bad_sizes_and_duplicates_are_refused() {
        let err =
            WeightSet::from_tensors([("a".to_string(), vec![2, 2], vec![0.0; 3])]).unwrap_err();
        assert!(err.to_string().contains("needs 4 values, got 3"));
        let err = WeightSet::from_tensors([
            ("a".to_string(), vec![1], vec![0.0]),
            ("a".to_string(), vec![1], vec![0.0]),
        ])
        .unwrap_err();
        assert_eq!(err, WeightError::Duplicate("a".into()));
    }
}
