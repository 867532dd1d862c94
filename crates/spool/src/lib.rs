//! spool as a library: the pieces of the `spool` command that are worth testing on their own.
//! The binary (`src/main.rs`) is a thin shell over these modules.

pub mod agent;
pub mod bench;
pub mod cli;
pub mod config;
pub mod ops;
