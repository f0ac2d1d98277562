//! The forecast the runtime publishes on `ccm/<station>/forecast`.

use serde::ser::SerializeTuple;

use crate::error::{DecodeError, Field, Limit, ShapeProblem};
use crate::frame::{Channels, GridShape, Values, too_large, validate_station};
use crate::limits::{MAX_FORECAST_VALUES, MAX_HORIZON};
use crate::packed::PackedSlice;
use crate::wire::{MessageKind, ReadBody, Reader, WireMessage, sealed};

/// A rollout of the merged model from one observed frame: `horizon` future fields.
///
/// Values are ordered `[step][channel][row][col]`: step `s`, channel `c`, cell (`r`, `col`) is at
/// index `((s * channels + c) * rows + r) * cols + col`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast<'a> {
    /// The station whose field is forecast.
    pub station: &'a str,
    /// Sequence number of the last frame the forecast starts from.
    pub based_on_seq: u32,
    /// When the runtime issued the forecast, microseconds since the Unix epoch (UTC).
    pub issued_at_us: u64,
    /// The CCM coordinate of the merged model (`-1` low endpoint, `+1` high endpoint; beyond
    /// ±1 extrapolates).
    pub alpha: f32,
    /// The channel names.
    pub channels: Channels<'a>,
    /// The grid of every step.
    pub shape: GridShape,
    /// The time each step forecasts, microseconds since the Unix epoch, strictly increasing;
    /// its length is the horizon.
    pub timestamps_us: PackedSlice<'a, u64>,
    /// `horizon × channels × rows × cols` values.
    pub values: Values<'a>,
}

impl Forecast<'_> {
    /// Number of forecast steps.
    pub const fn horizon(&self) -> usize {
        self.timestamps_us.len()
    }

    /// The value of `channel` at cell (`row`, `col`) of step `step`, dequantised.
    pub fn get(&self, step: usize, channel: usize, row: u16, col: u16) -> Option<f32> {
        let (rows, cols) = (usize::from(self.shape.rows), usize::from(self.shape.cols));
        let channels = usize::from(self.shape.channels);
        if step >= self.horizon()
            || channel >= channels
            || row >= self.shape.rows
            || col >= self.shape.cols
        {
            return None;
        }
        let index = step
            .checked_mul(channels)?
            .checked_add(channel)?
            .checked_mul(rows)?
            .checked_add(usize::from(row))?
            .checked_mul(cols)?
            .checked_add(usize::from(col))?;
        self.values.get(index)
    }
}

impl WireMessage for Forecast<'_> {
    const KIND: MessageKind = MessageKind::Forecast;

    fn validate(&self) -> Result<(), DecodeError> {
        validate_station(self.station)?;
        self.channels.validate()?;
        self.shape.validate(&self.channels)?;
        let horizon = self.horizon();
        if horizon == 0 {
            return Err(DecodeError::ShapeMismatch {
                problem: ShapeProblem::ZeroDimension,
            });
        }
        if horizon > MAX_HORIZON {
            return Err(too_large(
                Limit::Horizon,
                horizon as u64,
                MAX_HORIZON as u64,
            ));
        }
        let mut previous = None;
        for (index, t) in self.timestamps_us.iter().enumerate() {
            if previous.is_some_and(|p| t <= p) {
                return Err(DecodeError::TimestampsNotIncreasing { index });
            }
            previous = Some(t);
        }
        if !self.alpha.is_finite() {
            return Err(DecodeError::NonFinite {
                field: Field::Alpha,
                index: 0,
            });
        }
        let expected = horizon as u64 * self.shape.len();
        if expected > MAX_FORECAST_VALUES {
            return Err(too_large(
                Limit::ForecastValues,
                expected,
                MAX_FORECAST_VALUES,
            ));
        }
        self.values.validate(expected)
    }
}

impl sealed::Body for Forecast<'_> {
    fn write_body<S: SerializeTuple>(&self, t: &mut S) -> Result<(), S::Error> {
        t.serialize_element(self.station)?;
        t.serialize_element(&self.based_on_seq)?;
        t.serialize_element(&self.issued_at_us)?;
        t.serialize_element(&self.alpha)?;
        self.channels.write(t)?;
        self.shape.write(t)?;
        self.timestamps_us.serialize_into(t)?;
        self.values.write(t)
    }
}

impl<'a> ReadBody<'a> for Forecast<'a> {
    const LAST_FIELD: Field = Field::Values;

    fn read_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Self {
            station: r.take(Field::Station)?,
            based_on_seq: r.take(Field::BasedOnSeq)?,
            issued_at_us: r.take(Field::IssuedAt)?,
            alpha: r.take(Field::Alpha)?,
            channels: Channels::read(r)?,
            shape: GridShape::read(r)?,
            timestamps_us: PackedSlice::read(r, Field::Timestamps)?,
            values: Values::read(r)?,
        })
    }
}
