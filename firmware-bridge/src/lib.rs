//! Sensor frame protocol shared by station firmware and the ccm-twin runtime.
#![cfg_attr(not(feature = "std"), no_std)]
