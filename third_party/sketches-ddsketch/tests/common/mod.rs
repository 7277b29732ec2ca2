pub mod dataset;
pub mod generator;
