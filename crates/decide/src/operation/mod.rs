//! Decisions of the Operation controller.

pub mod gates;
